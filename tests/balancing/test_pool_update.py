"""
Tests for L{lbproxy.balancing.pool.Pool.update_servers}: servers that come
and go while the pool runs (fed by L{lbproxy.discovery}).
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from random import Random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from lbproxy.balancing.pool import Pool, Server, ServerChange
from lbproxy.balancing.strategies import ConsistentHash, LeastConn, PeakEwma, RoundRobin
from lbproxy.config.model import DnsSource, PoolConfig, ServerConfig
from lbproxy.interfaces import BalancedRequest, Candidate, IBalancer

_SOURCE = "dns+a://app.internal:80"


def _pool(*servers: ServerConfig, health_check: bool = False, rise: int = 2) -> Pool:
    """
    A pool C{web} of C{servers} and one DNS source, balanced round robin.
    """
    config = PoolConfig(
        "web", servers, (DnsSource("a", "app.internal", 80),), health_check=health_check, rise=rise
    )
    return Pool(config, RoundRobin(), Clock())


def _at(*hosts: str, backup: bool = False, weight: int = 1) -> list[ServerConfig]:
    return [ServerConfig(host, 80, weight=weight, backup=backup) for host in hosts]


def _addresses(servers: tuple[Server, ...]) -> list[str]:
    return [server.address for server in servers]


class UpdateServersTests(SynchronousTestCase):
    """
    L{Pool.update_servers} replaces the servers a source gives, keeping
    the state of those that stay.
    """

    def test_starts_empty(self) -> None:
        """
        A pool of only a DNS source has no server, and no pick, until the
        source gives some.
        """
        pool = _pool()
        self.assertEqual((pool.servers, pool.pick(), pool.max_tries), ((), None, 0))

    def test_join(self) -> None:
        """
        Servers a source gives join the pool and are picked (checks off:
        at once), and every server is tried before a request gives up.
        """
        pool = _pool()
        change = pool.update_servers(_at("10.0.0.1", "10.0.0.2"), _SOURCE)
        self.assertEqual(_addresses(change.added), ["10.0.0.1:80", "10.0.0.2:80"])
        self.assertEqual(change.removed, ())
        self.assertEqual([pool.pick().address for _ in range(2)], ["10.0.0.1:80", "10.0.0.2:80"])  # type: ignore[union-attr]
        self.assertEqual(pool.max_tries, 2)

    def test_stay_same_objects(self) -> None:
        """
        A server given again is the same L{Server}, with its state and
        statistics; only what changed is reported.
        """
        pool = _pool()
        pool.update_servers(_at("10.0.0.1", "10.0.0.2"), _SOURCE)
        first = pool.servers[0]
        pool.attempt_started(first, retry=False)
        first.checked_up = False
        change = pool.update_servers(_at("10.0.0.1", "10.0.0.3"), _SOURCE)
        self.assertIs(pool.servers[0], first)
        self.assertEqual((first.stats.requests, first.active, first.checked_up), (1, 1, False))
        self.assertEqual(
            (_addresses(change.added), _addresses(change.removed)),
            (["10.0.0.3:80"], ["10.0.0.2:80"]),
        )

    def test_removed_not_picked(self) -> None:
        """
        A removed server is never picked again; one in flight to it ends
        on it as usual.
        """
        pool = _pool()
        pool.update_servers(_at("10.0.0.1", "10.0.0.2"), _SOURCE)
        leaving = pool.servers[1]
        pool.attempt_started(leaving, retry=False)
        pool.update_servers(_at("10.0.0.1"), _SOURCE)
        self.assertEqual({pool.pick() for _ in range(4)}, {pool.servers[0]})
        pool.attempt_ended(leaving, 200, 0.01)
        self.assertEqual((leaving.active, leaving.stats.by_class["2xx"]), (0, 1))

    def test_joins_after_first_check(self) -> None:
        """
        With health checks on, a new server joins out of rotation and comes
        in with its first passed check, whatever C{rise} says.
        """
        pool = _pool(health_check=True, rise=3)
        pool.update_servers(_at("10.0.0.1"), _SOURCE)
        server = pool.servers[0]
        self.assertEqual((server.up, server.state), (False, "down"))
        self.assertIn("first health check", server.down_reason)
        self.assertIsNone(pool.pick())
        pool.check_passed(server)
        self.assertTrue(server.up)
        self.assertIs(pool.pick(), server)

    def test_failed_first_check_needs_rise(self) -> None:
        """
        A new server whose first check fails needs C{rise} passes, as any
        server that is down.
        """
        pool = _pool(health_check=True, rise=2)
        pool.update_servers(_at("10.0.0.1"), _SOURCE)
        server = pool.servers[0]
        pool.check_failed(server, "connection refused")
        pool.check_passed(server)
        self.assertFalse(server.up)
        pool.check_passed(server)
        self.assertTrue(server.up)

    def test_configured_servers_stay(self) -> None:
        """
        The configuration's own servers are never removed by a source, and
        a source giving the same address does not make it twice.
        """
        pool = _pool(ServerConfig("10.0.0.9", 80))
        configured = pool.servers[0]
        pool.update_servers(_at("10.0.0.9", "10.0.0.1"), _SOURCE)
        change = pool.update_servers([], _SOURCE)
        self.assertEqual(_addresses(pool.servers), ["10.0.0.9:80"])
        self.assertIs(pool.servers[0], configured)
        self.assertEqual(_addresses(change.removed), ["10.0.0.1:80"])

    def test_two_sources(self) -> None:
        """
        A server two sources give stays while either does.
        """
        pool = _pool()
        pool.update_servers(_at("10.0.0.1"), _SOURCE)
        pool.update_servers(_at("10.0.0.1", "10.0.0.2"), "dns+a://other:80")
        change = pool.update_servers([], _SOURCE)
        self.assertEqual(change, ServerChange((), ()))
        self.assertEqual(_addresses(pool.servers), ["10.0.0.1:80", "10.0.0.2:80"])
        self.assertEqual(pool.found_servers(_SOURCE), ())

    def test_weight_and_backup_follow(self) -> None:
        """
        A server given again with another weight or backup flag keeps its
        state and takes them (SRV records changed priority or weight).
        """
        pool = _pool()
        pool.update_servers(_at("10.0.0.1", "10.0.0.2"), _SOURCE)
        second = pool.servers[1]
        pool.update_servers(_at("10.0.0.1") + _at("10.0.0.2", backup=True, weight=5), _SOURCE)
        self.assertIs(pool.servers[1], second)
        self.assertEqual((second.weight, second.config.backup), (5, True))
        self.assertEqual({pool.pick() for _ in range(3)}, {pool.servers[0]})

    def test_known_taken_over(self) -> None:
        """
        A server of C{known} (the previous configuration's pool) is taken
        over with its state, in rotation at once.
        """
        old = _pool(health_check=True)
        old.update_servers(_at("10.0.0.1"), _SOURCE)
        server = old.servers[0]
        old.check_passed(server)
        new = _pool(health_check=True)
        change = new.update_servers(_at("10.0.0.1"), _SOURCE, {server.config.key: server})
        self.assertEqual(change.added, (server,))
        self.assertIs(new.pick(), server)

    def test_observers(self) -> None:
        """
        Observers hear of each change, not of updates that change nothing,
        and no more once removed.
        """
        pool = _pool()
        heard: list[ServerChange] = []
        pool.add_observer(heard.append)
        pool.update_servers(_at("10.0.0.1"), _SOURCE)
        pool.update_servers(_at("10.0.0.1"), _SOURCE)
        pool.remove_observer(heard.append)
        pool.remove_observer(heard.append)
        pool.update_servers([], _SOURCE)
        self.assertEqual([_addresses(change.added) for change in heard], [["10.0.0.1:80"]])


class StrategyStateTests(SynchronousTestCase):
    """
    A strategy's per-server state stays bounded while DNS servers come and
    go: the pool tells it (C{forget}) about servers that left.
    """

    def _churn(self, balancer: IBalancer, rounds: int = 200) -> Pool:
        """
        C{rounds} updates, each giving two new addresses; every server
        answers a request (so that each strategy learns about it).
        """
        config = PoolConfig("web", (), (DnsSource("a", "app.internal", 80),), health_check=False)
        clock = Clock()
        pool = Pool(config, balancer, clock)
        for n in range(rounds):
            pool.update_servers(
                _at(f"10.1.{n // 250}.{n % 250}", f"10.2.{n // 250}.{n % 250}"), _SOURCE
            )
            for _ in range(3):
                server = pool.pick()
                assert server is not None
                pool.attempt_started(server, retry=False)
                clock.advance(0.01)
                pool.attempt_ended(server, 200, 0.01)
        return pool

    def test_round_robin(self) -> None:
        """
        Round robin's rotation keeps no entry for servers that left.
        """
        balancer = RoundRobin()
        pool = self._churn(balancer)
        self.assertEqual(set(balancer._current), set(pool.servers))

    def test_least_conn(self) -> None:
        """
        Least connections' tie rotation keeps no entry for servers that
        left.
        """
        balancer = LeastConn()
        pool = self._churn(balancer)
        self.assertLessEqual(set(balancer._current), set(pool.servers))

    def test_peak_ewma(self) -> None:
        """
        Peak EWMA keeps no estimate for servers that left.
        """
        balancer = PeakEwma(Clock(), rng=Random(1))
        pool = self._churn(balancer)
        self.assertLessEqual(set(balancer._estimates), set(pool.servers))
        self.assertTrue(balancer._estimates)

    def test_hash_fallback(self) -> None:
        """
        Consistent hashing's round robin (requests without a key) keeps no
        entry for servers that left.
        """
        balancer = ConsistentHash("ip")
        pool = self._churn(balancer)
        self.assertLessEqual(set(balancer._fallback._current), set(pool.servers))

    def test_forgotten_when_last_request_ends(self) -> None:
        """
        A server that leaves with a request in flight is forgotten when
        that request ends, not before (its answer would teach the strategy
        about it again).
        """
        balancer = PeakEwma(Clock(), rng=Random(1))
        pool = Pool(
            PoolConfig("web", (), (DnsSource("a", "app.internal", 80),), health_check=False),
            balancer,
            Clock(),
        )
        pool.update_servers(_at("10.0.0.1"), _SOURCE)
        (server,) = pool.servers
        pool.attempt_started(server, retry=False)
        pool.update_servers(_at("10.0.0.2"), _SOURCE)
        pool.attempt_ended(server, 200, 0.5)
        self.assertNotIn(server, balancer._estimates)

    def test_strategy_without_forget(self) -> None:
        """
        A strategy without C{forget} (written before it) still works as
        servers come and go.
        """

        @implementer(IBalancer)
        class First:
            def pick(
                self,
                servers: Sequence[Candidate],
                exclude: Container[Candidate],
                request: BalancedRequest | None = None,
            ) -> Candidate | None:
                return next((s for s in servers if s.up and s not in exclude), None)

            def started(self, server: Candidate) -> None:
                pass

            def finished(self, server: Candidate, elapsed: float | None) -> None:
                pass

        pool = self._churn(First(), rounds=3)
        self.assertEqual(_addresses(pool.servers), ["10.1.0.2:80", "10.2.0.2:80"])
