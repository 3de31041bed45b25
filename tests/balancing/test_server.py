"""
Tests for L{lbproxy.balancing.server} and the pool's bookkeeping of its
servers: admin states, attempts, statistics.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lbproxy.balancing.pool import Pool, status_class
from lbproxy.balancing.server import BOUNDS, AdminState, LatencyWindow
from lbproxy.balancing.strategies import RoundRobin
from lbproxy.config.model import PoolConfig, ServerConfig


def _pool(clock: Clock) -> Pool:
    servers = (ServerConfig("10.0.0.1", 80), ServerConfig("10.0.0.2", 80))
    return Pool(PoolConfig("web", servers), RoundRobin(), clock)


class LatencyWindowTests(SynchronousTestCase):
    """
    L{LatencyWindow} gives p50 and p99 over the last minute, in buckets.
    """

    def test_percentiles(self) -> None:
        """
        With 99 fast answers and one slow, p50 is in the fast bucket and
        p99 too; with two slow in 100, p99 is the slow one's bucket.
        """
        window = LatencyWindow()
        for _ in range(98):
            window.record(100.0, 0.001)
        window.record(100.5, 0.5)
        window.record(100.5, 0.5)
        p50, p99 = window.percentiles(101.0, (0.5, 0.99))
        assert p50 is not None and p99 is not None
        self.assertTrue(0.001 <= p50 < 0.002, p50)
        self.assertTrue(0.5 <= p99 < 1.0, p99)

    def test_old_samples_forgotten(self) -> None:
        """
        Samples older than the window do not count.
        """
        window = LatencyWindow(span=60)
        window.record(10.0, 2.0)
        self.assertEqual(window.percentiles(71.0, (0.5,)), [None])
        window.record(71.0, 0.001)
        [p50] = window.percentiles(71.0, (0.5,))
        assert p50 is not None
        self.assertLess(p50, 0.002)

    def test_since_start(self) -> None:
        """
        Every response is also counted since start, in its bucket (the
        first bound at or above its time, or past the last), with the sum
        of the times: forgetting the last minute forgets none of these.
        """
        window = LatencyWindow(span=60)
        window.record(10.0, 0.001)
        window.record(10.0, 0.0011)
        window.record(500.0, 100.0)
        expected = [0] * (len(BOUNDS) + 1)
        expected[BOUNDS.index(0.001)] = 1
        expected[BOUNDS.index(0.002)] = 1
        expected[-1] = 1
        self.assertEqual(window.counts_since_start, expected)
        self.assertAlmostEqual(window.sum_since_start, 100.0021)
        self.assertEqual(sum(window.last_minute(500.0)), 1)


class AdminStateTests(SynchronousTestCase):
    """
    The operator's states take a server out of rotation whatever its
    health, and put it back.
    """

    def test_drain_and_enable(self) -> None:
        """
        A draining server takes no new requests; enabled, it does again.
        """
        pool = _pool(Clock())
        a, b = pool.servers
        pool.set_admin(a, AdminState.DRAINING)
        self.assertEqual((a.up, a.healthy, a.state), (False, True, "draining"))
        self.assertEqual({pool.pick() for _ in range(4)}, {b})
        pool.set_admin(a, AdminState.NORMAL)
        self.assertEqual((a.up, a.state), (True, "up"))
        self.assertEqual({pool.pick() for _ in range(4)}, {a, b})

    def test_maintenance_of_a_down_server(self) -> None:
        """
        A down server put in maintenance and back stays down, with its
        reason, until its checks pass.
        """
        pool = _pool(Clock())
        a, _ = pool.servers
        for _ in range(3):
            pool.check_failed(a, "connection refused")
        self.assertEqual(a.down_reason, "3 checks failed: connection refused")
        pool.set_admin(a, AdminState.MAINT)
        self.assertEqual(a.state, "maintenance")
        pool.set_admin(a, AdminState.NORMAL)
        self.assertEqual((a.up, a.state), (False, "down"))
        pool.check_passed(a)
        pool.check_passed(a)
        self.assertEqual((a.up, a.down_reason), (True, ""))


class AttemptTests(SynchronousTestCase):
    """
    Exchanges tell the pool when attempts start and end; it counts.
    """

    def test_counts(self) -> None:
        """
        Active requests go up and down; answers count by status class,
        failures and retries separately, and response times are kept.
        """
        clock = Clock()
        pool = _pool(clock)
        a, _ = pool.servers
        pool.attempt_started(a, retry=False)
        pool.attempt_started(a, retry=True)
        self.assertEqual(a.active, 2)
        pool.attempt_ended(a, 503, 0.01)
        pool.attempt_ended(a, 0, None)
        stats = a.stats
        self.assertEqual(a.active, 0)
        self.assertEqual((stats.requests, stats.retries, stats.failures), (2, 1, 1))
        self.assertEqual(stats.by_class["5xx"], 1)
        [p50] = stats.latency.percentiles(clock.seconds(), (0.5,))
        self.assertIsNotNone(p50)

    def test_status_class(self) -> None:
        """
        Statuses fall in their class; anything odd counts as 5xx.
        """
        self.assertEqual(
            [status_class(s) for s in (101, 200, 302, 404, 599, 999)],
            ["1xx", "2xx", "3xx", "4xx", "5xx", "5xx"],
        )

    def test_last_check(self) -> None:
        """
        The last check's time, outcome and reason are kept.
        """
        clock = Clock()
        clock.advance(5)
        pool = _pool(clock)
        a, _ = pool.servers
        pool.check_failed(a, "timed out")
        self.assertEqual(a.stats.last_check, (5.0, False, "timed out"))

    def test_check_counts(self) -> None:
        """
        Passed and failed checks are counted since start.
        """
        pool = _pool(Clock())
        a, _ = pool.servers
        pool.check_failed(a, "timed out")
        pool.check_passed(a)
        pool.check_passed(a)
        self.assertEqual((a.stats.checks_passed, a.stats.checks_failed), (2, 1))
        self.assertEqual(a.stats.last_check, (0.0, True, "passed"))
