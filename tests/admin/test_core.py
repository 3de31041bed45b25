"""
Tests for L{lbproxy.admin.core}: the snapshot of the running proxy, the
operator's actions, and readiness, on fakes and a L{Clock}.
"""

from __future__ import annotations

import json

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from lbproxy import __version__
from lbproxy.admin.core import AdminError
from lbproxy.balancing.server import BOUNDS, AdminState
from tests.admin.support import FakeProxy
from tests.http.fakes import connect


class SnapshotTests(SynchronousTestCase):
    """
    L{AdminCore.snapshot} gives the proxy's state as JSON-ready data.
    """

    def setUp(self) -> None:
        self.proxy = FakeProxy(backup=True)

    def test_json_ready(self) -> None:
        """
        The snapshot goes through JSON unchanged.
        """
        snapshot = self.proxy.core.snapshot()
        self.assertEqual(json.loads(json.dumps(snapshot, allow_nan=False)), snapshot)

    def test_process(self) -> None:
        """
        The process part: version, serving, connections, requests in
        flight, refusals by status, the latency buckets' bounds.
        """
        proxy = self.proxy
        connection, _ = connect(proxy.site)
        connection.dataReceived(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
        proxy.request()
        process = proxy.core.snapshot()["lbproxy"]
        self.assertEqual(
            (
                process["version"],
                process["serving"],
                process["client_connections"],
                process["requests_in_flight"],
                process["refused"],
                process["latency_bounds"],
                process["time"],
            ),
            (__version__, True, 1, 1, {"400": 1}, list(BOUNDS), 1_000_000.0),
        )

    def test_upstreams(self) -> None:
        """
        Each pool by name, with its strategy, checks and servers in order;
        each server with its state, counts and the last minute's p50/p99.
        """
        proxy = self.proxy
        client, sent = proxy.request()
        proxy.answer(sent, 200, 0.003)
        proxy.upstream.idle[sent.server] = 2
        pool = proxy.core.upstreams()["web"]
        self.assertEqual(
            (pool["balance"], pool["health_check"], pool["waiting"]), ("roundrobin", None, 0)
        )
        self.assertEqual(
            [s["address"] for s in pool["servers"]], ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
        )
        first = pool["servers"][0]
        counts = [0] * (len(BOUNDS) + 1)
        counts[BOUNDS.index(0.004)] = 1
        self.assertEqual(
            first,
            {
                "address": "10.0.0.1:80",
                "state": "up",
                "in_rotation": True,
                "healthy": True,
                "down_reason": None,
                "backup": False,
                "weight": 1,
                "active": 0,
                "idle_connections": 2,
                "requests": 1,
                "responses": {"1xx": 0, "2xx": 1, "3xx": 0, "4xx": 0, "5xx": 0},
                "failures": 0,
                "retries": 0,
                "checks": {"passed": 0, "failed": 0},
                "last_check": None,
                "p50": 0.004,
                "p99": 0.004,
                "response_times": {
                    "counts": counts,
                    "sum": first["response_times"]["sum"],
                    "last_minute": counts,
                },
            },
        )
        self.assertAlmostEqual(first["response_times"]["sum"], 0.003)
        self.assertTrue(pool["servers"][2]["backup"])

    def test_discovery(self) -> None:
        """
        A pool's DNS sources, in order, each with its last lookup and the
        servers it gives; none for a pool without.
        """
        self.assertEqual(self.proxy.core.upstreams()["web"]["discovery"], [])
        self.proxy.add_sources()
        ok, failing, fresh = self.proxy.core.upstreams()["web"]["discovery"]
        self.assertEqual(
            ok,
            {
                "url": "dns+a://app.internal:3000",
                "kind": "dns+a",
                "name": "app.internal",
                "resolver": "127.0.0.1:53",
                "last_lookup": 999_997.0,
                "last_outcome": "ok",
                "last_error": "",
                "records": 2,
                "ttl": 9.0,
                "next_lookup": 1_000_006.0,
                "failing_since": None,
                "servers": ["10.0.0.5:3000", "10.0.0.6:3000"],
            },
        )
        self.assertEqual(
            (failing["kind"], failing["last_outcome"], failing["last_error"]),
            ("dns+srv", "failed", "timed out"),
        )
        self.assertEqual(
            (failing["failing_since"], failing["servers"]), (999_880.0, ["10.0.0.9:8080"])
        )
        self.assertEqual(
            (fresh["last_lookup"], fresh["last_outcome"], fresh["ttl"], fresh["servers"]),
            (None, "", None, []),
        )
        snapshot = self.proxy.core.snapshot()
        self.assertEqual(json.loads(json.dumps(snapshot, allow_nan=False)), snapshot)

    def test_down_and_why(self) -> None:
        """
        A server taken out by health checks is C{down}, with why, and its
        last check's time, result and reason.
        """
        proxy = FakeProxy(health_check=True, health_path="/ping", fall=2)
        server = proxy.pool.servers[1]
        proxy.pool.check_failed(server, "connection refused")
        proxy.clock.advance(2)
        proxy.pool.check_failed(server, "connection refused")
        pool = proxy.core.upstreams()["web"]
        self.assertEqual(pool["health_check"], {"path": "/ping", "interval": 2.0})
        data = pool["servers"][1]
        self.assertEqual(
            (data["state"], data["in_rotation"], data["down_reason"], data["last_check"]),
            (
                "down",
                False,
                "2 checks failed: connection refused",
                {"time": 1_000_002.0, "passed": False, "detail": "connection refused"},
            ),
        )
        self.assertEqual(data["checks"], {"passed": 0, "failed": 2})

    def test_admin_states(self) -> None:
        """
        A drained server is C{draining}, one in maintenance C{maintenance};
        neither is in rotation, and neither has a down reason while healthy.
        """
        a, b, _ = self.proxy.pool.servers
        self.proxy.pool.set_admin(a, AdminState.DRAINING)
        self.proxy.pool.set_admin(b, AdminState.MAINT)
        servers = self.proxy.core.upstreams()["web"]["servers"]
        self.assertEqual(
            [(s["state"], s["in_rotation"], s["down_reason"]) for s in servers[:2]],
            [("draining", False, None), ("maintenance", False, None)],
        )

    def test_last_minute_only(self) -> None:
        """
        p50 and p99 cover the last minute: a minute later they are L{None},
        while the counts since start stay.
        """
        proxy = self.proxy
        _, sent = proxy.request()
        proxy.answer(sent, 200, 0.5)
        proxy.clock.advance(61)
        first = proxy.core.upstreams()["web"]["servers"][0]
        self.assertEqual((first["p50"], first["p99"]), (None, None))
        self.assertEqual(sum(first["response_times"]["counts"]), 1)
        self.assertEqual(sum(first["response_times"]["last_minute"]), 0)

    def test_beyond_the_last_bucket(self) -> None:
        """
        A percentile past the last bucket's bound is C{"+Inf"} (JSON has no
        infinity).
        """
        proxy = self.proxy
        _, sent = proxy.request()
        proxy.answer(sent, 200, 100.0)
        first = proxy.core.upstreams()["web"]["servers"][0]
        self.assertEqual(first["p99"], "+Inf")


class ActTests(SynchronousTestCase):
    """
    L{AdminCore.act} drains, puts in maintenance and enables servers, and
    names what exists when asked for what does not.
    """

    def setUp(self) -> None:
        self.proxy = FakeProxy()
        self.a, self.b = self.proxy.pool.servers

    def test_drain(self) -> None:
        """
        C{drain} puts the server in the draining state, out of rotation,
        logged by its pool; the answer says what was and is.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        done = self.proxy.core.act("web", "10.0.0.1:80", "drain")
        self.assertEqual(
            done,
            {
                "pool": "web",
                "address": "10.0.0.1:80",
                "action": "drain",
                "previous": "up",
                "state": "draining",
            },
        )
        self.assertIs(self.a.admin, AdminState.DRAINING)
        self.assertFalse(self.a.up)
        self.assertIn("upstream 10.0.0.1:80 DRAINING (operator)", [formatEvent(e) for e in events])

    def test_maint_and_enable(self) -> None:
        """
        C{maint} takes the server out (checks paused); C{enable} brings it
        back in rotation; the log says each.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        core = self.proxy.core
        self.assertEqual(core.act("web", "10.0.0.2:80", "maint")["state"], "maintenance")
        self.assertIs(self.b.admin, AdminState.MAINT)
        self.assertFalse(self.b.up)
        done = core.act("web", "10.0.0.2:80", "enable")
        self.assertEqual((done["previous"], done["state"]), ("maintenance", "up"))
        self.assertTrue(self.b.up)
        logged = [formatEvent(e) for e in events]
        self.assertIn("upstream 10.0.0.2:80 MAINTENANCE (operator)", logged)
        self.assertIn("upstream 10.0.0.2:80 ENABLED (operator)", logged)

    def test_unknown(self) -> None:
        """
        An unknown pool, server or action: 404, naming what there is.
        """
        core = self.proxy.core
        cases = [
            (("api", "10.0.0.1:80", "drain"), "no pool 'api' (pools: web)"),
            (
                ("web", "10.0.0.9:80", "drain"),
                "pool 'web' has no server '10.0.0.9:80' (10.0.0.1:80, 10.0.0.2:80)",
            ),
            (("web", "10.0.0.1:80", "stop"), "no action 'stop': drain, maint or enable"),
        ]
        for arguments, message in cases:
            error = self.assertRaises(AdminError, core.act, *arguments)
            self.assertEqual((error.status, error.message), (404, message))
        self.assertEqual([s.admin for s in self.proxy.pool.servers], [AdminState.NORMAL] * 2)


class ReadinessTests(SynchronousTestCase):
    """
    L{AdminCore.readiness}: ready while serving with a server in rotation.
    """

    def test_ready(self) -> None:
        """
        Serving, with servers in rotation: ready.
        """
        self.assertEqual(FakeProxy().core.readiness(), (True, "ok: 2 of 2 servers in rotation"))

    def test_none_in_rotation(self) -> None:
        """
        No server in rotation (down, drained): not ready.
        """
        proxy = FakeProxy()
        a, b = proxy.pool.servers
        proxy.pool.attempt_failed(a, "refused")
        proxy.pool.set_admin(b, AdminState.DRAINING)
        self.assertEqual(proxy.core.readiness(), (False, "no server in rotation (of 2)"))

    def test_stopping(self) -> None:
        """
        Stopping (draining requests on stop): not ready, whatever the servers.
        """
        proxy = FakeProxy()
        proxy.core.stopping = True
        self.assertEqual(
            proxy.core.readiness(), (False, "stopping: requests in flight are draining")
        )
