"""
Tests for L{lbproxy.discovery.watcher}: one DNS source feeding one pool,
on a L{Clock}, with lookups the test answers.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from lbproxy.balancing.pool import Pool
from lbproxy.balancing.strategies import RoundRobin
from lbproxy.config.model import DnsSource, PoolConfig, ServerConfig
from lbproxy.discovery import watcher as watcher_module
from lbproxy.discovery.lookup import Answer, LookupFailed
from lbproxy.discovery.watcher import DnsWatcher

_SOURCE = DnsSource("a", "app.internal", 3000)


class FakeLookup:
    """
    Lookups that wait for the test: C{pending} holds each one's Deferred.
    """

    def __init__(self) -> None:
        self.pending: list[Deferred[Answer]] = []
        self.count = 0

    def __call__(self, source: DnsSource) -> Deferred[Answer]:
        self.count += 1
        d: Deferred[Answer] = Deferred()
        self.pending.append(d)
        return d

    def answer(
        self, *hosts: str, ttl: float = 60.0, unanswered: frozenset[int] = frozenset()
    ) -> None:
        """
        The lookup under way finds C{hosts} (and C{unanswered} families
        went unanswered).
        """
        servers = tuple(ServerConfig(host, 3000) for host in hosts)
        note = "AAAA: refused (REFUSED)" if unanswered else ""
        self.pending.pop(0).callback(Answer(servers, len(servers), ttl, unanswered, note))

    def fail(self, reason: str = "timed out", empty: bool = False) -> None:
        """
        The lookup under way fails.
        """
        self.pending.pop(0).errback(LookupFailed(reason, empty))


def _pool(clock: Clock, refresh: float = 30.0, name: str = "web") -> Pool:
    config = PoolConfig(name, (), (_SOURCE,), health_check=False, dns_refresh=refresh)
    return Pool(config, RoundRobin(), clock)


class WatcherTests(SynchronousTestCase):
    """
    L{DnsWatcher} looks its source up on the records' schedule and keeps
    the pool's servers in step.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000.0)
        self.lookups = FakeLookup()
        self.pool = _pool(self.clock)
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.watcher = DnsWatcher(self.pool, _SOURCE, self.lookups, self.clock, "127.0.0.1:53")
        self.addCleanup(self.watcher.stop)

    def _lines(self, level: LogLevel | None = None) -> list[str]:
        return [
            formatEvent(e)
            for e in self.events
            if e["log_namespace"].startswith("lbproxy.discovery")
            and (level is None or e["log_level"] is level)
        ]

    def _hosts(self) -> list[str]:
        return [server.config.host for server in self.pool.servers]

    def test_first_lookup_fills_pool(self) -> None:
        """
        Started, it looks up at once; the servers found join the pool, in
        one log line.
        """
        self.watcher.start()
        self.assertEqual(self.lookups.count, 1)
        self.lookups.answer("10.0.0.5", "10.0.0.6")
        self.assertEqual(self._hosts(), ["10.0.0.5", "10.0.0.6"])
        self.assertEqual(
            self._lines(), ["pool web: +10.0.0.5:3000 +10.0.0.6:3000 (dns+a app.internal)"]
        )

    def test_change_line(self) -> None:
        """
        A change is one line, added servers then removed ones; a lookup
        that changes nothing logs nothing.
        """
        self.watcher.start()
        self.lookups.answer("10.0.0.5", "10.0.0.6", ttl=5)
        self.clock.advance(5)
        self.lookups.answer("10.0.0.6", "10.0.0.7", ttl=5)
        self.clock.advance(5)
        self.lookups.answer("10.0.0.6", "10.0.0.7", ttl=5)
        self.assertEqual(
            self._lines()[1:],
            ["pool web: +10.0.0.7:3000 -10.0.0.5:3000 (dns+a app.internal)"],
        )

    def test_servers_that_stay_are_kept(self) -> None:
        """
        A server found again is the same L{Server}.
        """
        self.watcher.start()
        self.lookups.answer("10.0.0.5", ttl=5)
        kept = self.pool.servers[0]
        self.clock.advance(5)
        self.lookups.answer("10.0.0.5", "10.0.0.6")
        self.assertIs(self.pool.servers[0], kept)

    def test_next_lookup_at_ttl(self) -> None:
        """
        The next lookup is when the TTL runs out, not before.
        """
        self.watcher.start()
        self.lookups.answer("10.0.0.5", ttl=7)
        self.assertEqual(self.watcher.status.next_lookup, 1007.0)
        self.clock.advance(6.9)
        self.assertEqual(self.lookups.count, 1)
        self.clock.advance(0.1)
        self.assertEqual(self.lookups.count, 2)

    def test_refresh_bounds_ttl(self) -> None:
        """
        A TTL beyond C{dns-refresh} waits C{dns-refresh} only.
        """
        self.watcher.start()
        self.lookups.answer("10.0.0.5", ttl=3600)
        self.clock.advance(29.9)
        self.assertEqual(self.lookups.count, 1)
        self.clock.advance(0.1)
        self.assertEqual(self.lookups.count, 2)

    def test_floor(self) -> None:
        """
        A TTL of 0 waits 1 s: lookups are never a busy loop.
        """
        self.watcher.start()
        self.lookups.answer("10.0.0.5", ttl=0)
        self.clock.advance(0.9)
        self.assertEqual(self.lookups.count, 1)
        self.clock.advance(0.1)
        self.assertEqual(self.lookups.count, 2)

    def test_one_lookup_at_a_time(self) -> None:
        """
        No lookup starts while one is under way, however long it takes.
        """
        self.watcher.start()
        self.clock.advance(100)
        self.assertEqual(self.lookups.count, 1)

    def test_status(self) -> None:
        """
        The pool's C{discovery} shows the source and its last lookup.
        """
        status = self.pool.discovery["dns+a://app.internal:3000"]
        self.assertIs(status, self.watcher.status)
        self.assertEqual((status.last_lookup, status.last_outcome), (None, ""))
        self.watcher.start()
        self.clock.advance(0.25)
        self.lookups.answer("10.0.0.5", "10.0.0.6", ttl=9)
        self.assertEqual(
            (
                status.kind,
                status.name,
                status.resolver,
                status.last_lookup,
                status.last_outcome,
                status.last_error,
                status.last_records,
                status.ttl,
                status.next_lookup,
                status.failing_since,
                status.servers,
            ),
            (
                "dns+a",
                "app.internal",
                "127.0.0.1:53",
                1000.25,
                "ok",
                "",
                2,
                9.0,
                1009.25,
                None,
                ("10.0.0.5:3000", "10.0.0.6:3000"),
            ),
        )

    def test_not_resolving_at_start(self) -> None:
        """
        A name that does not resolve at start leaves the pool empty, logged
        once; lookups go on, and when it resolves the servers join.
        """
        self.watcher.start()
        for _ in range(3):
            self.lookups.fail("name not found", empty=True)
            self.clock.advance(30)
        self.assertEqual(self.pool.servers, ())
        self.assertEqual(self.pool.discovery[_SOURCE.url].last_outcome, "empty")
        self.assertEqual(
            self._lines(LogLevel.warn),
            [
                "pool web: dns+a app.internal has no records (name not found); "
                "no servers from it until it resolves"
            ],
        )
        self.lookups.answer("10.0.0.5")
        self.assertEqual(self._hosts(), ["10.0.0.5"])

    def test_outage_keeps_servers_logged_once(self) -> None:
        """
        Failed lookups after good ones keep the servers; the outage is
        logged once when it begins and once when it ends.
        """
        self.watcher.start()
        self.lookups.answer("10.0.0.5", "10.0.0.6", ttl=5)
        self.clock.advance(5)
        for _ in range(4):
            self.lookups.fail("timed out")
            self.clock.advance(30)
        self.assertEqual(self._hosts(), ["10.0.0.5", "10.0.0.6"])
        status = self.pool.discovery[_SOURCE.url]
        self.assertEqual(
            (status.last_outcome, status.last_error, status.failing_since),
            ("failed", "timed out", 1005.0),
        )
        self.lookups.answer("10.0.0.5", "10.0.0.6")
        self.assertIsNone(status.failing_since)
        self.assertEqual(
            self._lines()[1:],
            [
                "pool web: dns+a app.internal lookup failed (timed out); "
                "keeping its last 2 server(s) until it answers",
                "pool web: dns+a app.internal answers again after 120 s (4 failed lookup(s))",
            ],
        )

    def test_empty_keeps_servers(self) -> None:
        """
        A lookup that finds no records keeps the servers too.
        """
        self.watcher.start()
        self.lookups.answer("10.0.0.5", ttl=5)
        self.clock.advance(5)
        self.lookups.fail("no A or AAAA records", empty=True)
        self.assertEqual(self._hosts(), ["10.0.0.5"])
        self.assertEqual(
            self._lines(LogLevel.warn),
            [
                "pool web: dns+a app.internal has no records (no A or AAAA records); "
                "keeping its last 1 server(s) until it answers"
            ],
        )

    def test_unanswered_family_kept(self) -> None:
        """
        When only A was answered, the IPv6 servers found before stay; the
        status says which question went unanswered.
        """
        self.watcher.start()
        self.lookups.answer("10.0.0.5", "fd00::5", ttl=5)
        self.clock.advance(5)
        self.lookups.answer("10.0.0.6", unanswered=frozenset({6}))
        self.assertEqual(self._hosts(), ["10.0.0.6", "fd00::5"])
        self.assertEqual(self.watcher.status.servers, ("10.0.0.6:3000", "[fd00::5]:3000"))
        self.assertEqual(self.watcher.status.last_error, "AAAA: refused (REFUSED)")

    def test_retries_back_off(self) -> None:
        """
        After a failure the next lookup is 1 s later, then 2, 4 ... up to
        C{dns-refresh}.
        """
        self.pool = _pool(self.clock, refresh=5)
        watcher = DnsWatcher(self.pool, _SOURCE, self.lookups, self.clock, "system")
        self.addCleanup(watcher.stop)
        watcher.start()
        delays = []
        for _ in range(5):
            self.lookups.fail()
            assert watcher.status.next_lookup is not None
            delays.append(watcher.status.next_lookup - self.clock.seconds())
            self.clock.advance(delays[-1])
        self.assertEqual(delays, [1, 2, 4, 5, 5])

    def test_long_outage(self) -> None:
        """
        Lookups go on every C{dns-refresh} however long the outage: the
        back-off does not overflow after a thousand failures in a row.
        """
        self.watcher.start()
        for _ in range(1100):
            self.lookups.fail()
            assert self.watcher.status.next_lookup is not None
            self.clock.advance(self.watcher.status.next_lookup - self.clock.seconds())
        self.assertEqual(self.lookups.count, 1101)
        self.lookups.fail()
        assert self.watcher.status.next_lookup is not None
        self.assertEqual(self.watcher.status.next_lookup - self.clock.seconds(), 30.0)

    def test_retry_delay_capped(self) -> None:
        """
        L{retry_delay} stops doubling long before floats overflow, and
        never exceeds C{dns-refresh}.
        """
        self.assertEqual(watcher_module.retry_delay(10**6, 30.0), 30.0)
        self.assertEqual(watcher_module.retry_delay(33, 1e12), 2.0**32)
        self.assertEqual(watcher_module.retry_delay(10**6, 1e12), 2.0**32)

    def test_stop(self) -> None:
        """
        Stopped, it looks up no more, and a lookup under way ends unheeded;
        C{idle} fires when it has ended.
        """
        self.watcher.start()
        self.lookups.answer("10.0.0.5", ttl=5)
        self.clock.advance(5)
        self.watcher.stop()
        idle = self.watcher.idle()
        self.assertNoResult(idle)
        self.lookups.answer("10.0.0.6")
        self.successResultOf(idle)
        self.assertEqual(self._hosts(), ["10.0.0.5"])
        self.clock.advance(100)
        self.assertEqual(self.lookups.count, 2)
        self.assertIsNone(self.watcher.status.next_lookup)

    def test_move_to(self) -> None:
        """
        Moved to a reload's pool, it gives that pool the servers found,
        the same L{Server} objects, and keeps its schedule.
        """
        self.watcher.start()
        self.lookups.answer("10.0.0.5", ttl=10)
        server = self.pool.servers[0]
        self.clock.advance(4)
        new = _pool(self.clock)
        self.watcher.move_to(new, {server.config.key: server})
        self.assertEqual(new.servers, (server,))
        self.assertIs(new.discovery[_SOURCE.url], self.watcher.status)
        self.clock.advance(6)
        self.assertEqual(self.lookups.count, 2)
        self.lookups.answer("10.0.0.6")
        self.assertEqual([s.config.host for s in new.servers], ["10.0.0.6"])

    def test_known_taken_over_once(self) -> None:
        """
        A watcher made with C{known} servers (a reload changed its source)
        takes over those its first lookup finds again.
        """
        old = _pool(self.clock)
        old.update_servers([ServerConfig("10.0.0.5", 3000)], "previous")
        server = old.servers[0]
        watcher = DnsWatcher(
            _pool(self.clock),
            _SOURCE,
            self.lookups,
            self.clock,
            "system",
            {server.config.key: server},
        )
        self.addCleanup(watcher.stop)
        watcher.start()
        self.lookups.answer("10.0.0.5")
        self.assertIs(watcher.pool.servers[0], server)

    def test_lookup_raises(self) -> None:
        """
        A lookup that raises (a bug) is logged with its traceback and the
        watcher goes on.
        """

        def broken(source: DnsSource) -> Deferred[Answer]:
            raise RuntimeError("boom")

        watcher = DnsWatcher(_pool(self.clock), _SOURCE, broken, self.clock, "system")
        self.addCleanup(watcher.stop)
        watcher.start()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertIsNotNone(watcher.status.next_lookup)
