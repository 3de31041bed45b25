"""
Integration tests for DNS pools (L{lbproxy.discovery}): the whole proxy
(L{lbproxy.tap.make_proxy_service}) with app servers and a DNS server on
loopback, Twisted's own (L{tests.discovery.dnsserver}) or dnsmasq, whose
records change while a client keeps sending requests.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import formatEvent, globalLogPublisher
from twisted.names import dns
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase

from lbproxy.balancing.pool import Pool
from lbproxy.config.file import load_config
from lbproxy.config.model import Config, DnsSource, PoolConfig
from lbproxy.service.service import ProxyService
from lbproxy.tap import make_proxy_service
from tests.discovery.dnsserver import Zone, free_dns_port, has_loopback, start_dns_server
from tests.support import AppServer, CountingSite, RawResponse, get, start_app

_DNSMASQ = "/usr/sbin/dnsmasq"


class LogWatch:
    """
    The text of every log event from now until the test ends, and
    Deferreds that fire when a line containing some text is logged.
    """

    def __init__(self, testcase: TestCase) -> None:
        self.lines: list[str] = []
        self._waiting: list[tuple[str, Deferred[str]]] = []
        globalLogPublisher.addObserver(self._observe)
        testcase.addCleanup(globalLogPublisher.removeObserver, self._observe)

    def _observe(self, event: dict[str, Any]) -> None:
        line = formatEvent(event)
        self.lines.append(line)
        for waiting in [w for w in self._waiting if w[0] in line]:
            self._waiting.remove(waiting)
            waiting[1].callback(line)

    def wait_for(self, text: str) -> Deferred[str]:
        """
        Fires with the first line logged from now on that contains C{text}.
        """
        waiting: Deferred[str] = Deferred()
        self._waiting.append((text, waiting))
        return waiting


class SteadyClient:
    """
    Sends C{GET /} to the proxy, each request as soon as the one before
    it was answered, until stopped; records every answer and failure.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.answers: list[tuple[int, bytes]] = []
        self.failures: list[Failure] = []
        self._waiting: list[tuple[Callable[[RawResponse], bool], Deferred[None]]] = []
        self._stopping: Deferred[None] | None = None

    def start(self) -> None:
        """
        Send the first request.
        """
        self._next()

    def _next(self) -> None:
        if self._stopping is not None:
            self._stopping.callback(None)
            return
        sending = get(self.port)
        sending.addCallbacks(self._answered, self.failures.append)
        sending.addBoth(lambda _: self._next())

    def _answered(self, response: RawResponse) -> None:
        self.answers.append((response.status, response.body))
        for waiting in [w for w in self._waiting if w[0](response)]:
            self._waiting.remove(waiting)
            waiting[1].callback(None)

    def wait_for(self, wanted: Callable[[RawResponse], bool]) -> Deferred[None]:
        """
        Fires when an answer from now on is C{wanted}.
        """
        waiting: Deferred[None] = Deferred()
        self._waiting.append((wanted, waiting))
        return waiting

    def stop(self) -> Deferred[None]:
        """
        Send no more; fires when the request under way was answered.
        """
        self._stopping = Deferred()
        return self._stopping


def _from(name: bytes) -> Callable[[RawResponse], bool]:
    return lambda response: response.body == b"PORT " + name


def _start_app_at(testcase: TestCase, name: str, interface: str, port: int) -> AppServer:
    """
    An app server on C{interface}, port C{port} (another loopback address
    with the same port as a first one).
    """
    app = AppServer(name)
    site = CountingSite(app)
    site.timeOut = None
    listening = reactor.listenTCP(port, site, interface=interface)
    testcase.addCleanup(listening.stopListening)
    return app


def _start(testcase: TestCase, config: Config, path: str | None = None) -> Deferred[Any]:
    """
    Start the whole proxy; fires with its service and listening port.
    """
    service, _ = make_proxy_service(config, reactor, path)
    service.startService()
    testcase.addCleanup(service.stopService)
    listening = service.listening_ports()
    return listening.addCallback(lambda ports: (service, ports[0].getHost().port))


def _config(dns_port: int, *sources: DnsSource, **pool: Any) -> Config:
    settings = {"health_check": False, "dns_refresh": 1.0, **pool}
    return Config(
        pools=(PoolConfig("web", (), sources, **settings),),
        listen=("tcp:0:interface=127.0.0.1",),
        access_log="off",
        resolver=f"127.0.0.1:{dns_port}",
    )


def _pool(service: ProxyService) -> Pool:
    pool: Pool = service.resource.router.pools["web"]
    return pool


class DnsPoolTests(TestCase):
    """
    A pool fed by a DNS server on loopback, Twisted's own.
    """

    def setUp(self) -> None:
        self.zone = Zone()
        self.dns_port = start_dns_server(self, self.zone)
        self.logs = LogWatch(self)

    def _lookups(self) -> int:
        """
        How many lookups of C{app.lbtest} were asked so far (A questions).
        """
        return self.zone.queries.count(("app.lbtest", dns.A))

    @inlineCallbacks
    def test_follows_records_steady_client(self) -> Any:
        """
        The pool follows the records changing {A} -> {A, B} -> {B} within
        two seconds of each change (C{dns-refresh} 1 s), with health checks
        on (a new server comes in after its first check), while a steady
        client sees no failed request.
        """
        if not has_loopback("127.0.0.2"):
            raise SkipTest("127.0.0.2 is not a loopback address here")
        _, _, port = start_app(self, "A")
        _start_app_at(self, "B", "127.0.0.2", port)
        self.zone.set_addresses("app.lbtest", ["127.0.0.1"], ttl=60)
        config = _config(
            self.dns_port,
            DnsSource("a", "app.lbtest", port),
            health_check=True,
            health_interval=1.0,
        )
        a_up = self.logs.wait_for(f"upstream 127.0.0.1:{port} UP")
        service, proxy_port = yield _start(self, config)
        yield a_up
        client = SteadyClient(proxy_port)
        client.start()
        yield client.wait_for(_from(b"A"))

        # "Within two seconds" is counted in lookups, not read off a clock:
        # lookups are dns-refresh (1 s) apart, and the change is applied by
        # the first lookup whose A question comes after it (a lookup under
        # way asked before it, and found the old records).
        joined = self.logs.wait_for(f"pool web: +127.0.0.2:{port} (dns+a app.lbtest)")
        self.zone.set_addresses("app.lbtest", ["127.0.0.1", "127.0.0.2"], ttl=60)
        asked = self._lookups()
        yield joined
        lookups_to_join = self._lookups() - asked
        yield client.wait_for(_from(b"B"))
        yield client.wait_for(_from(b"A"))

        removed = self.logs.wait_for(f"pool web: -127.0.0.1:{port} (dns+a app.lbtest)")
        self.zone.set_addresses("app.lbtest", ["127.0.0.2"], ttl=60)
        asked = self._lookups()
        yield removed
        lookups_to_leave = self._lookups() - asked
        count = len(client.answers)
        for _ in range(5):
            yield client.wait_for(lambda response: True)
        yield client.stop()

        self.assertEqual(client.failures, [])
        self.assertEqual({status for status, _ in client.answers}, {200})
        # The request under way as A left may still be A's; none after.
        self.assertEqual({body for _, body in client.answers[count + 1 :]}, {b"PORT B"})
        self.assertEqual((lookups_to_join, lookups_to_leave), (1, 1))
        status = _pool(service).discovery[f"dns+a://app.lbtest:{port}"]
        self.assertEqual(
            (status.last_outcome, status.last_records, status.servers),
            ("ok", 1, (f"127.0.0.2:{port}",)),
        )
        # The next lookup is due dns-refresh after the last (TTL 60 s); both
        # times are read in the same reactor turn.
        assert status.next_lookup is not None and status.last_lookup is not None
        self.assertLess(abs(status.next_lookup - status.last_lookup - 1.0), 0.1)

    @inlineCallbacks
    def test_unresolved_at_start(self) -> Any:
        """
        A name that does not resolve at start leaves its pool empty (503),
        logged once; when it resolves, requests go to its servers.
        """
        _, _, port = start_app(self, "A")
        service, proxy_port = yield _start(
            self, _config(self.dns_port, DnsSource("a", "app.lbtest", port))
        )
        yield self.logs.wait_for("dns+a app.lbtest has no records (name not found)")
        response = yield get(proxy_port)
        self.assertEqual(response.status, 503)
        joined = self.logs.wait_for(f"pool web: +127.0.0.1:{port} (dns+a app.lbtest)")
        self.zone.set_addresses("app.lbtest", ["127.0.0.1"])
        yield joined
        response = yield get(proxy_port)
        self.assertEqual((response.status, response.body), (200, b"PORT A"))
        self.assertEqual(len([line for line in self.logs.lines if "has no records" in line]), 1)

    @inlineCallbacks
    def test_srv_over_tcp(self) -> Any:
        """
        SRV records too many for a UDP answer are asked again over TCP and
        found whole: the lowest priority's targets are primaries, the rest
        backups.  (Stopping the proxy closes the TCP connection: the test
        would leave it open otherwise.)
        """
        services = []
        for i in range(1, 31):
            self.zone.set_addresses(f"n{i}.lbtest", [f"10.0.1.{i}"])
            services.append((1 if i <= 20 else 2, 10, 3000 + i, f"n{i}.lbtest"))
        self.zone.set_services("_web._tcp.lbtest", services)
        joined = self.logs.wait_for("(dns+srv _web._tcp.lbtest)")
        service, _ = yield _start(
            self, _config(self.dns_port, DnsSource("srv", "_web._tcp.lbtest"))
        )
        yield joined
        servers = _pool(service).servers
        self.assertEqual(len(servers), 30)
        self.assertEqual(
            [s.address for s in servers if s.config.backup],
            [f"10.0.1.{i}:{3000 + i}" for i in range(21, 31)],
        )
        self.assertEqual({s.weight for s in servers}, {10})

    @inlineCallbacks
    def test_reload_keeps_resolved_set(self) -> Any:
        """
        A reload with the same DNS source keeps its servers (the same
        objects) without waiting for a lookup; one that changes the name
        starts anew with the new name's servers.
        """
        _, _, port = start_app(self, "A")
        self.zone.set_addresses("app.lbtest", ["127.0.0.1"])
        self.zone.set_addresses("other.lbtest", ["127.0.0.3"])
        path = self.mktemp()
        text = (
            'listen = "tcp:0:interface=127.0.0.1"\naccess-log = "off"\n'
            f'resolver = "127.0.0.1:{self.dns_port}"\n'
            "[upstream.web]\nhealth-check = false\n"
            f'servers = ["dns+a://{{name}}:{port}"]\n'
        )
        with open(path, "w") as f:
            f.write(text.format(name="app.lbtest"))
        joined = self.logs.wait_for("(dns+a app.lbtest)")
        service, proxy_port = yield _start(self, load_config(path), path)
        yield joined
        server = _pool(service).servers[0]
        self.assertTrue((yield service.reload()))
        self.assertEqual(_pool(service).servers, (server,))
        response = yield get(proxy_port)
        self.assertEqual(response.body, b"PORT A")

        with open(path, "w") as f:
            f.write(text.format(name="other.lbtest"))
        joined = self.logs.wait_for("(dns+a other.lbtest)")
        self.assertTrue((yield service.reload()))
        yield joined
        self.assertEqual([s.address for s in _pool(service).servers], [f"127.0.0.3:{port}"])


class _Dnsmasq(ProcessProtocol):
    """
    dnsmasq in the foreground, logging to stderr: C{wait_for} fires when a
    line containing some text comes.
    """

    def __init__(self) -> None:
        self.output = b""
        self._waiting: list[tuple[bytes, Deferred[None]]] = []
        self.ended: Deferred[None] = Deferred()

    def wait_for(self, text: bytes) -> Deferred[None]:
        waiting: Deferred[None] = Deferred()
        self._waiting.append((text, waiting))
        return waiting

    def errReceived(self, data: bytes) -> None:
        start = len(self.output)
        self.output += data
        for waiting in list(self._waiting):
            if waiting[0] in self.output[max(start - len(waiting[0]), 0) :]:
                self._waiting.remove(waiting)
                waiting[1].callback(None)

    def processEnded(self, reason: Failure) -> None:
        reason.trap(ProcessDone, ProcessTerminated)
        for _, waiting in self._waiting:
            waiting.errback(Exception(f"dnsmasq ended: {self.output.decode()}"))
        self._waiting = []
        self.ended.callback(None)


class _SwapScenario:
    """
    One behaviour, run against two DNS servers: the records of
    C{app.lbtest} (TTL 0: lookups 1 s apart) change from {A} to {B} in one
    step, and the pool follows with one log line, a steady client seeing
    no failed request and, once B came in, only B's answers.

    A subclass is a L{TestCase} that serves the records: L{serve} and
    L{swap}.
    """

    logs: LogWatch

    def serve(self, address: str) -> Deferred[int]:
        """
        Start a DNS server on 127.0.0.1 that answers C{address} for
        C{app.lbtest}, with a TTL of 0; fires with its port.
        """
        raise NotImplementedError()

    def swap(self, address: str) -> Deferred[None]:
        """
        Make C{address} the record of C{app.lbtest}; fires once the DNS
        server answers with it.
        """
        raise NotImplementedError()

    @inlineCallbacks
    def test_records_swap(self) -> Any:
        """
        {A} -> {B}: the pool logs C{+B -A} and follows, with no failed
        request.
        """
        testcase: Any = self
        if not has_loopback("127.0.0.2"):
            raise SkipTest("127.0.0.2 is not a loopback address here")
        _, _, port = start_app(testcase, "A")
        _start_app_at(testcase, "B", "127.0.0.2", port)
        dns_port = yield self.serve("127.0.0.1")
        joined = self.logs.wait_for(f"pool web: +127.0.0.1:{port}")
        service, proxy_port = yield _start(
            testcase, _config(dns_port, DnsSource("a", "app.lbtest", port))
        )
        yield joined
        client = SteadyClient(proxy_port)
        client.start()
        yield client.wait_for(_from(b"A"))

        # Waited for from before the change: the lookup that sees it may
        # come before the DNS server's word that it has it.
        changed = self.logs.wait_for(f"pool web: +127.0.0.2:{port} -127.0.0.1:{port}")
        yield self.swap("127.0.0.2")
        yield changed
        count = len(client.answers)
        for _ in range(3):
            yield client.wait_for(lambda response: True)
        yield client.stop()
        testcase.assertEqual(client.failures, [])
        testcase.assertEqual({status for status, _ in client.answers}, {200})
        testcase.assertEqual({body for _, body in client.answers[count + 1 :]}, {b"PORT B"})
        status = _pool(service).discovery[f"dns+a://app.lbtest:{port}"]
        testcase.assertEqual(
            (status.resolver, status.ttl, status.servers),
            (f"127.0.0.1:{dns_port}", 0.0, (f"127.0.0.2:{port}",)),
        )


class TwistedSwapTests(_SwapScenario, TestCase):
    """
    L{_SwapScenario} against Twisted's DNS server in-process, whose
    records the test sets: the same behaviour as L{DnsmasqTests}, wherever
    dnsmasq is missing.
    """

    def setUp(self) -> None:
        self.zone = Zone()
        self.logs = LogWatch(self)

    def serve(self, address: str) -> Deferred[int]:
        self.zone.set_addresses("app.lbtest", [address], ttl=0)
        return succeed(start_dns_server(self, self.zone))

    def swap(self, address: str) -> Deferred[None]:
        self.zone.set_addresses("app.lbtest", [address], ttl=0)
        return succeed(None)


class DnsmasqTests(_SwapScenario, TestCase):
    """
    L{_SwapScenario} against dnsmasq (Debian's dnsmasq-base), run as this
    user on a free loopback port, its hosts file changed and read again on
    SIGHUP (hosts file records have a TTL of 0).
    """

    def setUp(self) -> None:
        self.executable = _DNSMASQ if os.path.exists(_DNSMASQ) else shutil.which("dnsmasq")
        if self.executable is None:
            raise SkipTest(
                f"dnsmasq is not installed ({_DNSMASQ} nor on PATH; "
                "Debian: apt-get install dnsmasq-base)"
            )
        self.logs = LogWatch(self)
        self.hosts = os.path.abspath(self.mktemp())

    def _write_hosts(self, address: str) -> None:
        with open(self.hosts, "w") as f:
            f.write(f"{address} app.lbtest\n")

    @inlineCallbacks
    def serve(self, address: str) -> Any:
        self._write_hosts(address)
        dns_port = free_dns_port()
        self.dnsmasq = _Dnsmasq()
        ready = self.dnsmasq.wait_for(b"read " + self.hosts.encode())
        assert self.executable is not None
        self.process = reactor.spawnProcess(
            self.dnsmasq,
            self.executable,
            [
                self.executable,
                "--no-daemon",
                f"--port={dns_port}",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--no-resolv",
                "--no-hosts",
                f"--addn-hosts={self.hosts}",
                "--log-facility=-",
                "--pid-file=",
                # As root it would become nobody, who may not read the file.
                *(["--user=root"] if os.getuid() == 0 else []),
            ],
            env=None,
        )
        self.addCleanup(self._stop_dnsmasq)
        yield ready
        return dns_port

    def _stop_dnsmasq(self) -> Deferred[None]:
        self.process.signalProcess("TERM")
        return self.dnsmasq.ended

    def swap(self, address: str) -> Deferred[None]:
        reread = self.dnsmasq.wait_for(b"read " + self.hosts.encode())
        self._write_hosts(address)
        self.process.signalProcess(signal.SIGHUP)
        return reread
