"""
Tests for health: active checks (L{lbproxy.balancing.health}), passive tracking and
backups (L{lbproxy.balancing.pool}), and what requests see when servers are down.
"""

from __future__ import annotations

import os
from dataclasses import replace

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from lbproxy.balancing.health import HealthChecker, _failure_reason, agent_probe
from lbproxy.balancing.pool import Pool, Server
from lbproxy.balancing.strategies import RoundRobin
from lbproxy.config.model import PoolConfig, ServerConfig
from lbproxy.upstream.tls import UpstreamTLS
from tests.certs import CA
from tests.support import AppServer, CountingSite, get, refused_port, start_app, start_proxy


def _pool(
    clock: Clock,
    count: int = 2,
    backups: int = 0,
    **settings: object,
) -> Pool:
    servers = tuple(ServerConfig(f"10.0.0.{i}", 80) for i in range(1, count + 1))
    servers += tuple(ServerConfig(f"10.0.1.{i}", 80, backup=True) for i in range(1, backups + 1))
    config = PoolConfig("web", servers, **settings)  # type: ignore[arg-type]
    return Pool(config, RoundRobin(), clock)


class _Transitions:
    """
    Collects the pool's UP/DOWN log lines while a test runs.
    """

    def __init__(self, testcase: SynchronousTestCase) -> None:
        self.lines: list[str] = []
        globalLogPublisher.addObserver(self._observe)
        testcase.addCleanup(globalLogPublisher.removeObserver, self._observe)

    def _observe(self, event: dict) -> None:
        if "why" in event and "server" in event:
            self.lines.append(f"{event['server']} {event['log_format'].split()[2]} {event['why']}")


class FakeProbe:
    """
    A probe whose answers the test gives: C{calls} records each check.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, Deferred[int]]] = []

    def __call__(self, server: Server) -> Deferred[int]:
        d: Deferred[int] = Deferred()
        self.calls.append((server.address, d))
        return d


class ActiveCheckTests(SynchronousTestCase):
    """
    L{HealthChecker} checks each server on its own loop and the pool counts
    rise and fall.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.probe = FakeProbe()
        self.pool = _pool(self.clock, health_interval=2.0, fall=3, rise=2)
        self.transitions = _Transitions(self)
        self.checker = HealthChecker(self.pool, self.probe, self.clock)
        self.checker.startService()
        self.addCleanup(self.checker.stopService)
        self.a, self.b = self.pool.servers

    def _answer_all(self, result: object) -> None:
        for _, d in self.probe.calls:
            if not d.called:
                if isinstance(result, Exception):
                    d.errback(Failure(result))
                else:
                    d.callback(result)

    def test_spread_over_interval(self) -> None:
        """
        With two servers, the first is checked at once and the second half
        an interval later, then each every interval.
        """
        self.assertEqual([c[0] for c in self.probe.calls], ["10.0.0.1:80"])
        self.clock.advance(1.0)
        self.assertEqual([c[0] for c in self.probe.calls], ["10.0.0.1:80", "10.0.0.2:80"])
        self._answer_all(200)
        self.clock.advance(1.0)
        self.assertEqual(len(self.probe.calls), 3)
        self.assertEqual(self.probe.calls[2][0], "10.0.0.1:80")

    def test_maintenance_pauses_checks(self) -> None:
        """
        A server in maintenance (the operator's) is not checked while its
        pool's others are; enabled, it is checked again at its next turn.
        """
        from lbproxy.balancing.server import AdminState

        self.pool.set_admin(self.a, AdminState.MAINT)
        for _ in range(4):  # t = 1 ... 4: A's turns at 2 and 4, B's at 1 and 3
            self._answer_all(200)
            self.clock.advance(1.0)
        self.assertEqual(
            [c[0] for c in self.probe.calls], ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.2:80"]
        )
        self.pool.set_admin(self.a, AdminState.NORMAL)
        self._answer_all(200)
        self.clock.advance(2.0)  # t = 6: A's turn
        self.assertEqual([c[0] for c in self.probe.calls[3:]], ["10.0.0.2:80", "10.0.0.1:80"])

    def test_fall(self) -> None:
        """
        Three failed checks in a row take a server out, logged once with
        the reason; two are not enough.
        """
        for _ in range(2):
            self._answer_all(ConnectionRefusedError())
            self.clock.advance(2.0)
        self.assertTrue(self.a.up)
        self._answer_all(ConnectionRefusedError())
        self.assertFalse(self.a.up)
        self.assertIn(
            "10.0.0.1:80 DOWN 3 checks failed: connection refused", self.transitions.lines
        )

    def test_bad_status_fails(self) -> None:
        """
        A status outside the healthy ranges counts as a failed check.
        """
        for _ in range(3):
            self._answer_all(503)
            self.clock.advance(2.0)
        self.assertFalse(self.a.up)
        self.assertIn("10.0.0.1:80 DOWN 3 checks failed: status 503", self.transitions.lines)

    def test_rise(self) -> None:
        """
        A server that is down comes back after two passed checks in a row,
        logged once.
        """
        for _ in range(3):
            self._answer_all(ConnectionRefusedError())
            self.clock.advance(2.0)
        self.assertFalse(self.a.up)
        self._answer_all(200)
        self.assertFalse(self.a.up)
        self.clock.advance(2.0)
        self._answer_all(200)
        self.assertTrue(self.a.up)
        self.assertIn("10.0.0.1:80 UP 2 checks passed", self.transitions.lines)

    def test_checks_do_not_overlap(self) -> None:
        """
        A check that has not answered delays the next one of that server.
        """
        self.clock.advance(10.0)
        self.assertEqual([c[0] for c in self.probe.calls], ["10.0.0.1:80", "10.0.0.2:80"])

    def test_stop(self) -> None:
        """
        Stopping the service stops the checks.
        """
        self.clock.advance(1.0)
        self._answer_all(200)
        self.checker.stopService()
        self.clock.advance(20.0)
        self.assertEqual(len(self.probe.calls), 2)

    def test_probe_exception_keeps_loop(self) -> None:
        """
        A probe that raises counts as a failed check and the loop goes on.
        """

        def broken(server: Server) -> Deferred[int]:
            raise RuntimeError("boom")

        clock = Clock()
        pool = _pool(clock, count=1)
        checker = HealthChecker(pool, broken, clock)
        checker.startService()
        self.addCleanup(checker.stopService)
        clock.advance(2.0)
        clock.advance(2.0)
        self.assertFalse(pool.servers[0].up)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 3)


class AgentProbeTests(SynchronousTestCase):
    """
    L{agent_probe} on a L{MemoryReactorClock}: a check passes only with a
    whole answer in time, and a check that fails leaves no connection open.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        server = _pool(self.reactor).servers[0]
        self.checking = agent_probe(self.reactor, "/health", 1.0, None)(server)
        [(_, _, factory, _, _)] = self.reactor.tcpClients
        self.protocol = factory.buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.assertTrue(self.transport.value().startswith(b"GET /health HTTP/1.1\r\n"))

    def _answer(self, data: bytes, close: bool = True) -> None:
        self.protocol.dataReceived(data)
        if close:
            self.protocol.connectionLost(Failure(ConnectionDone()))

    def assertFailedWith(self, reason: str) -> None:
        failure = self.failureResultOf(self.checking)
        self.assertEqual(_failure_reason(failure), reason)

    def test_no_answer(self) -> None:
        """
        A server that never answers: the check times out (so logged) and
        its connection is aborted.
        """
        self.reactor.advance(1.0)
        self.assertFailedWith("timed out")
        self.assertTrue(self.transport.disconnected)

    def test_head_then_silence(self) -> None:
        """
        A server that sends a head and then stalls mid-body: the check times
        out and its connection is aborted, not left open for ever.
        """
        self._answer(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789", close=False)
        self.reactor.advance(1.0)
        self.assertFailedWith("timed out")
        self.assertTrue(self.transport.disconnected)

    def test_truncated_body(self) -> None:
        """
        An answer that closes 10 bytes into a 100-byte body failed.
        """
        self._answer(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        self.assertFailedWith("answer cut short")

    def test_truncated_chunked_body(self) -> None:
        """
        A chunked answer that closes before its last chunk failed.
        """
        self._answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        self.assertFailedWith("answer cut short")

    def test_body_until_close(self) -> None:
        """
        A body without a length, ended by the close (RFC 9112 section 6.3,
        as HTTP/1.0 servers answer), is whole: the check passes.
        """
        self._answer(b"HTTP/1.0 200 OK\r\n\r\nfine")
        self.assertEqual(self.successResultOf(self.checking), 200)

    def test_whole_answer(self) -> None:
        """
        A whole answer passes, and its connection is closed gracefully.
        """
        self._answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", close=False)
        self.assertEqual(self.successResultOf(self.checking), 200)
        self.assertTrue(self.transport.disconnecting)
        self.assertFalse(self.transport.disconnected)
        self.reactor.advance(1.0)
        self.assertFalse(self.transport.disconnected)


class _StallingServer(Protocol):
    """
    An app server that answers every request with C{answer} and then either
    closes or (C{close} false) stays silent with the connection open.
    """

    def __init__(self, answer: bytes, close: bool, lost: list[Deferred[None]]) -> None:
        self.answer = answer
        self.close = close
        self.lost: Deferred[None] = Deferred()
        lost.append(self.lost)

    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(self.answer)
            if self.close:
                self.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        self.lost.callback(None)


class AgentProbeSocketTests(TestCase):
    """
    L{agent_probe} against real app servers on loopback that stop halfway.
    """

    def _server(
        self, answer: bytes, close: bool = False, tls: object = None
    ) -> tuple[Server, list[Deferred[None]]]:
        lost: list[Deferred[None]] = []
        factory = Factory.forProtocol(lambda: _StallingServer(answer, close, lost))
        if tls is None:
            port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        else:
            port = reactor.listenSSL(0, factory, tls, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        scheme = "http" if tls is None else "https"
        config = ServerConfig("127.0.0.1", port.getHost().port, scheme=scheme)
        return Pool(PoolConfig("p", (config,)), RoundRobin(), reactor).servers[0], lost

    @inlineCallbacks
    def _assert_stall_closed(self, server: Server, lost: list[Deferred[None]], probe) -> None:
        (failure,) = yield probe(server).addCallbacks(self.fail, lambda reason: (reason,))
        self.assertEqual(_failure_reason(failure), "timed out")
        # The server sees the check's connection go at once, not never.
        yield _until(lambda: lost and lost[0].called, limit=5.0)

    def test_stall_after_head(self):
        """
        A server that sends a head and 10 of 100 body bytes, then stalls:
        the check times out and its socket is closed.
        """
        server, lost = self._server(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        return self._assert_stall_closed(server, lost, agent_probe(reactor, "/", 0.2, None))

    def test_stall_after_head_tls(self):
        """
        The same over TLS, where closing gracefully would wait for the
        server's close_notify for ever: the socket is aborted.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        ca = CA()
        ca_path = ca.write(directory)
        options = ca.issue("127.0.0.1").options()
        server, lost = self._server(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789", tls=options
        )
        probe = agent_probe(reactor, "/", 0.5, None, UpstreamTLS(ca_path))
        return self._assert_stall_closed(server, lost, probe)

    @inlineCallbacks
    def test_truncated_answer(self):
        """
        A server that sends 10 of 100 body bytes and closes fails the check.
        """
        server, _ = self._server(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789", close=True
        )
        (failure,) = yield agent_probe(reactor, "/", 5.0, None)(server).addCallbacks(
            self.fail, lambda reason: (reason,)
        )
        self.assertEqual(_failure_reason(failure), "answer cut short")


class PassiveTests(SynchronousTestCase):
    """
    Failed requests take a server out for C{fail_timeout} (nginx's
    C{max_fails}).
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.transitions = _Transitions(self)

    def test_max_fails_within_window(self) -> None:
        """
        Two failures within 10 s eject the server for 10 s; it is then
        picked again.
        """
        pool = _pool(self.clock, max_fails=2, fail_timeout=10.0)
        a, b = pool.servers
        pool.attempt_failed(a, "connection refused")
        self.clock.advance(5)
        pool.attempt_failed(a, "connection refused")
        self.assertFalse(a.up)
        self.assertEqual({pool.pick() for _ in range(4)}, {b})
        self.clock.advance(9.9)
        self.assertFalse(a.up)
        self.clock.advance(0.2)
        self.assertEqual({pool.pick() for _ in range(4)}, {a, b})
        self.assertEqual(
            self.transitions.lines,
            [
                "10.0.0.1:80 DOWN 2 failed attempts: connection refused",
                "10.0.0.1:80 UP 10 s since it was ejected",
            ],
        )

    def test_failures_outside_window(self) -> None:
        """
        Failures further apart than C{fail_timeout} do not add up.
        """
        pool = _pool(self.clock, max_fails=2, fail_timeout=10.0)
        a = pool.servers[0]
        pool.attempt_failed(a, "timed out")
        self.clock.advance(11)
        pool.attempt_failed(a, "timed out")
        self.assertTrue(a.up)

    def test_off(self) -> None:
        """
        C{max_fails} 0 turns passive tracking off.
        """
        pool = _pool(self.clock, max_fails=0)
        a = pool.servers[0]
        for _ in range(5):
            pool.attempt_failed(a, "timed out")
        self.assertTrue(a.up)

    def test_checks_readmit_early(self) -> None:
        """
        C{rise} passed checks after an ejection bring the server back before
        C{fail_timeout} is over.
        """
        pool = _pool(self.clock, max_fails=1, fail_timeout=10.0)
        a = pool.servers[0]
        pool.attempt_failed(a, "connection refused")
        self.assertFalse(a.up)
        pool.check_passed(a)
        self.assertFalse(a.up)
        pool.check_passed(a)
        self.assertTrue(a.up)


class BackupTests(SynchronousTestCase):
    """
    Backup servers take requests only while every primary is out.
    """

    def test_takeover_and_return(self) -> None:
        """
        With both primaries down the backup serves; when one primary comes
        back it serves again and the backup idles.
        """
        clock = Clock()
        pool = _pool(clock, count=2, backups=1, fall=1, rise=1)
        a, b, backup = pool.servers
        self.assertEqual({pool.pick() for _ in range(4)}, {a, b})
        pool.check_failed(a, "connection refused")
        self.assertEqual({pool.pick() for _ in range(4)}, {b})
        pool.check_failed(b, "connection refused")
        self.assertEqual({pool.pick() for _ in range(4)}, {backup})
        pool.check_passed(b)
        self.assertEqual({pool.pick() for _ in range(4)}, {b})

    def test_all_down(self) -> None:
        """
        With every server down, nothing is picked, and the outage is
        reported once until a server comes back.
        """
        clock = Clock()
        pool = _pool(clock, count=1, backups=1, fall=1, rise=1)
        for server in pool.servers:
            pool.check_failed(server, "timed out")
        self.assertIsNone(pool.pick())
        self.assertEqual([pool.first_with_none_up() for _ in range(3)], [True, False, False])
        pool.check_passed(pool.servers[0])
        self.assertTrue(pool.first_with_none_up())


class DownServersTests(TestCase):
    """
    What clients see when servers are out of rotation.
    """

    @inlineCallbacks
    def test_all_down_is_503_at_once(self):
        """
        When no server is in rotation the client gets 503 with a short body
        at once, and the outage is logged once, not per request.
        """
        _, _, port = start_app(self, "3000")
        proxy_port, site, _ = start_proxy(self, [port])
        pool = site.resource.router.pools["default"]
        for _ in range(3):
            pool.check_failed(pool.servers[0], "connection refused")
        transitions: list[dict] = []
        globalLogPublisher.addObserver(transitions.append)
        self.addCleanup(globalLogPublisher.removeObserver, transitions.append)
        first = yield get(proxy_port)
        second = yield get(proxy_port)
        self.assertEqual((first.status, second.status), (503, 503))
        self.assertIn(b"no healthy upstream", first.body)
        outages = [e for e in transitions if "no server is up" in e.get("log_format", "")]
        self.assertEqual(len(outages), 1)

    @inlineCallbacks
    def test_max_tries(self):
        """
        A request is tried on at most C{max_tries} servers.
        """
        ports = [refused_port(self) for _ in range(3)]
        proxy_port, site, _ = start_proxy(self, ports)
        site.resource.router.pools["default"].max_tries = 2
        attempts: list[dict] = []
        globalLogPublisher.addObserver(attempts.append)
        self.addCleanup(globalLogPublisher.removeObserver, attempts.append)
        response = yield get(proxy_port)
        self.assertEqual(response.status, 502)
        failures = [
            e for e in attempts if e.get("log_format", "").startswith("upstream {server} failed")
        ]
        self.assertEqual(len(failures), 2)


class _Restartable:
    """
    An app server that can be stopped (port closed, connections dropped)
    and started again on the same port.
    """

    def __init__(self, testcase: TestCase, name: str) -> None:
        self.app = AppServer(name)
        self.site = _TrackingSite(self.app)
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.number = self.port.getHost().port
        testcase.addCleanup(lambda: self.port.stopListening())

    def stop(self):
        for protocol in list(self.site.protocols):
            # Site protocols wrap the HTTP/1.1 channel (for h2 negotiation).
            protocol._channel.transport.abortConnection()
        return self.port.stopListening()

    def start(self) -> None:
        self.port = reactor.listenTCP(self.number, self.site, interface="127.0.0.1")


class _TrackingSite(CountingSite):
    def __init__(self, resource) -> None:
        super().__init__(resource)
        self.protocols: set = set()
        self.timeOut = None

    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        original = protocol.connectionLost

        def lost(reason, protocol=protocol):
            self.protocols.discard(protocol)
            return original(reason)

        protocol.connectionLost = lost
        self.protocols.add(protocol)
        return protocol


class FailoverIntegrationTests(TestCase):
    """
    A server stopped under a steady client: no request fails; once it is
    back, it serves again.
    """

    @inlineCallbacks
    def test_stop_and_restart_under_load(self):
        """
        Stopping one of two servers while requests flow loses none of them;
        health checks (every 50 ms here) take it out and bring it back.
        """
        a = _Restartable(self, "3000")
        b = _Restartable(self, "3001")
        proxy_port, site, _ = start_proxy(self, [a.number, b.number])
        pool = site.resource.router.pools["default"]
        pool.config = replace(pool.config, health_interval=0.05, health_timeout=0.5, fall=2, rise=2)
        checker = HealthChecker(pool, agent_probe(reactor, "/", 0.5, None), reactor)
        checker.startService()
        self.addCleanup(checker.stopService)
        server_b = pool.servers[1]

        statuses = []
        for _ in range(6):
            statuses.append((yield get(proxy_port)).status)
        yield b.stop()
        for _ in range(20):
            statuses.append((yield get(proxy_port)).status)
        yield _until(lambda: not server_b.up)
        b.start()
        yield _until(lambda: server_b.up)
        bodies = set()
        for _ in range(6):
            response = yield get(proxy_port)
            statuses.append(response.status)
            bodies.add(response.body)
        self.assertEqual(set(statuses), {200})
        self.assertEqual(bodies, {b"PORT 3000", b"PORT 3001"})
        self.flushLoggedErrors()


@inlineCallbacks
def _until(condition, limit: float = 10.0):
    """
    Poll the reactor (not sleep) until C{condition()} holds, at most
    C{limit} seconds: for the integration tests whose outcome comes from
    real health checks over real sockets (the unit tests of checks and
    pools use a Clock).
    """
    waited = 0.0
    while not condition():
        if waited > limit:
            raise AssertionError("condition never held")
        yield deferLater(reactor, 0.02, lambda: None)
        waited += 0.02
