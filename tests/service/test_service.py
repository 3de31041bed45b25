"""
Tests for L{lbproxy.service.service}: reload, routes in the running proxy, and the
graceful stop, with real app servers on loopback.
"""

from __future__ import annotations

import errno
import os
import signal
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from lbproxy.config.file import load_config
from lbproxy.http.accesslog import LineSink, TwistdLog, open_sink
from lbproxy.tap import make_proxy_service
from tests.support import (
    free_port,
    get,
    held_request,
    listen,
    parse_responses,
    raw_request,
    release_held,
    start_app,
)
from tests.test_tls import _close_upstream, start_tls_app, tls_get


def _collect_logs(testcase: TestCase) -> list[dict]:
    """
    Every log event from now until the end of the test.
    """
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    testcase.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


def _errors(events: list[dict]) -> list[str]:
    """
    The text of the error events among C{events}.
    """
    return [formatEvent(e) for e in events if e.get("log_level") == LogLevel.error]


def _toml(
    servers: list[int],
    listen: str | list[str] = "tcp:0:interface=127.0.0.1",
    extra: str = "",
    scheme: str = "http",
    pool: str = "",
) -> str:
    """
    A configuration file over app servers on loopback C{servers}, health
    checks off, listening on C{listen} (one endpoint or several), with the
    top-level lines C{extra} and the lines C{pool} in the pool's table.
    """
    addresses = ", ".join(f'"{scheme}://127.0.0.1:{port}"' for port in servers)
    listen = [listen] if isinstance(listen, str) else listen
    endpoints = ", ".join(f'"{endpoint}"' for endpoint in listen)
    return (
        f'listen = [{endpoints}]\naccess-log = "off"\ndrain-timeout = 5\n{extra}'
        f"[upstream.web]\nservers = [{addresses}]\nhealth-check = false\n{pool}"
    )


class ReloadTests(TestCase):
    """
    Reloading the file swaps routes and pools without dropping requests.
    """

    @inlineCallbacks
    def _start(self, text: str):
        self.path = self.mktemp()
        self._write(text)
        config = load_config(self.path)
        service, site = make_proxy_service(config, reactor, self.path)
        service.startService()
        self.addCleanup(service.stopService)
        ports = yield service.listening_ports()
        return service, ports[0].getHost().port

    def _write(self, text: str) -> None:
        with open(self.path, "w") as f:
            f.write(text)

    @inlineCallbacks
    def test_reload_switches_servers_in_flight_finish(self):
        """
        A request in flight on A finishes with A's answer after the file
        changed to B and was reloaded; the next requests go to B.
        """
        app_a, _, port_a = start_app(self, "A")
        app_b, _, port_b = start_app(self, "B")
        service, proxy_port = yield self._start(_toml([port_a]))
        slow = get(proxy_port, b"/hold")
        yield held_request(app_a)
        self._write(_toml([port_b]))
        self.assertTrue((yield service.reload()))
        after = yield get(proxy_port)
        self.assertEqual(after.body, b"PORT B")
        release_held(app_a)
        response = yield slow
        self.assertEqual((response.status, response.body), (200, b"held by A"))

    @inlineCallbacks
    def test_broken_reload_keeps_config(self):
        """
        A broken file is refused, its problems logged; the old
        configuration keeps serving.
        """
        events = _collect_logs(self)
        app_a, _, port_a = start_app(self, "A")
        service, proxy_port = yield self._start(_toml([port_a]))
        self._write('[upstream.web]\nservers = ["nope"]\n')
        self.assertFalse((yield service.reload()))
        response = yield get(proxy_port)
        self.assertEqual(response.body, b"PORT A")
        self.assertEqual(
            _errors(events),
            [
                f"reload failed, configuration kept: {self.path}: upstream.web.servers[0].address: "
                "bad upstream address 'nope': expected HOST:PORT"
            ],
        )
        self.assertEqual(self.flushLoggedErrors(), [])

    @inlineCallbacks
    def test_reload_bad_endpoint_changes_nothing(self):
        """
        A file whose listen endpoint Twisted cannot parse is refused as a
        whole: the routes stay (they used to be switched before the
        listener raised) and the problem is logged as one line naming the
        file, the key and the value.
        """
        events = _collect_logs(self)
        app_a, _, port_a = start_app(self, "A")
        _, _, port_b = start_app(self, "B")
        service, proxy_port = yield self._start(_toml([port_a]))
        self._write(_toml([port_b], listen="tcpp:1"))
        self.assertFalse((yield service.reload()))
        self.assertEqual((yield get(proxy_port)).body, b"PORT A")
        self.assertEqual(
            _errors(events),
            [
                f"reload failed, configuration kept: {self.path}: listen[0]: "
                "'tcpp:1': Unknown endpoint type: 'tcpp'"
            ],
        )

    @inlineCallbacks
    def test_reload_port_in_use_changes_nothing(self):
        """
        A reload whose new listener cannot bind (its port is in use)
        changes nothing: the old routes and listeners keep serving, the
        listener the reload had bound meanwhile is closed again, and the
        log says why in one line.
        """
        events = _collect_logs(self)
        _, _, port_a = start_app(self, "A")
        _, _, port_b = start_app(self, "B")
        service, proxy_port = yield self._start(_toml([port_a]))
        router = service.resource.router
        taken = listen(self, Factory())
        free = free_port()
        self._write(
            _toml(
                [port_b],
                listen=[
                    f"tcp:{free}:interface=127.0.0.1",
                    f"tcp:{taken}:interface=127.0.0.1",
                ],
            )
        )
        self.assertFalse((yield service.reload()))
        self.assertEqual((yield get(proxy_port)).body, b"PORT A")
        self.assertIs(service.resource.router, router)
        self.assertEqual(service.config.pools[0].servers[0].port, port_a)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", free)
        yield self.assertFailure(endpoint.connect(Factory()), ConnectionRefusedError)
        self.assertEqual(
            _errors(events),
            [
                f"reload failed, configuration kept: cannot listen on "
                f"tcp:{taken}:interface=127.0.0.1: [Errno 98] Address already in use"
            ],
        )
        # The next reload, with the port free, applies.
        self._write(_toml([port_b], listen=f"tcp:{free}:interface=127.0.0.1"))
        self.assertTrue((yield service.reload()))
        self.assertEqual((yield get(free)).body, b"PORT B")

    @inlineCallbacks
    def test_apply_unchecked_listener_changes_nothing(self):
        """
        L{ProxyService.apply} refuses a listener it cannot build as a whole
        even when the configuration did not go through the checks (here,
        loaded without them): routes and health checks stay as they were.
        """
        events = _collect_logs(self)
        _, _, port_a = start_app(self, "A")
        _, _, port_b = start_app(self, "B")
        service, proxy_port = yield self._start(_toml([port_a]))
        router, checkers = service.resource.router, list(service._checkers)
        self._write(_toml([port_b], listen="tcpp:1"))
        service._load = lambda: load_config(self.path)
        self.assertFalse((yield service.reload()))
        self.assertEqual((yield get(proxy_port)).body, b"PORT A")
        self.assertIs(service.resource.router, router)
        self.assertEqual(service._checkers, checkers)
        self.assertEqual(
            _errors(events),
            [
                "reload failed, configuration kept: cannot listen on tcpp:1: "
                "Unknown endpoint type: 'tcpp'"
            ],
        )

    @inlineCallbacks
    def test_apply_access_log_unusable_changes_nothing(self):
        """
        An access log file that cannot be opened when the reload applies
        (here, unchecked: in a directory that does not exist) refuses the
        reload as a whole; a listener the reload had bound is closed again.
        """
        events = _collect_logs(self)
        _, _, port_a = start_app(self, "A")
        _, _, port_b = start_app(self, "B")
        service, proxy_port = yield self._start(_toml([port_a]))
        free = free_port()
        log_path = os.path.join(self.mktemp(), "access.log")
        self._write(
            _toml([port_b], listen=f"tcp:{free}:interface=127.0.0.1").replace(
                'access-log = "off"', f'access-log = "{log_path}"'
            )
        )
        service._load = lambda: load_config(self.path)
        self.assertFalse((yield service.reload()))
        self.assertEqual((yield get(proxy_port)).body, b"PORT A")
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", free)
        yield self.assertFailure(endpoint.connect(Factory()), ConnectionRefusedError)
        self.assertEqual(
            _errors(events),
            [
                f"reload failed, configuration kept: access log {log_path!r}: "
                "No such file or directory"
            ],
        )

    @inlineCallbacks
    def test_reload_keeps_server_state(self):
        """
        A server in both configurations is the same object afterwards, with
        its health state; a new one starts fresh.
        """
        _, _, port_a = start_app(self, "A")
        _, _, port_b = start_app(self, "B")
        service, _ = yield self._start(_toml([port_a]))
        old = service.resource.router.pools["web"].servers[0]
        old.checked_up = False
        old.up = False
        self._write(_toml([port_a, port_b]))
        yield service.reload()
        servers = service.resource.router.pools["web"].servers
        self.assertIs(servers[0], old)
        self.assertFalse(servers[0].up)
        self.assertTrue(servers[1].up)

    @inlineCallbacks
    def test_sighup_reloads(self):
        """
        SIGHUP makes the running service read its file again.
        """
        _, _, port_a = start_app(self, "A")
        _, _, port_b = start_app(self, "B")
        service, proxy_port = yield self._start(_toml([port_a]))
        self._write(_toml([port_b]))
        reloaded: Deferred[bool] = Deferred()
        reload = service.reload

        def reload_and_tell() -> Deferred[bool]:
            return reload().addCallback(lambda applied: reloaded.callback(applied))

        self.patch(service, "reload", reload_and_tell)
        os.kill(os.getpid(), signal.SIGHUP)
        yield reloaded
        self.assertEqual(service.config.pools[0].servers[0].port, port_b)
        self.assertEqual((yield get(proxy_port)).body, b"PORT B")

    @inlineCallbacks
    def test_reload_restart_option(self):
        """
        A reload that changes C{workers} applies the rest and logs that
        the number of processes changes only with a restart; a worker
        (C{restart_notes} off) leaves that line to its supervisor.
        """
        events = _collect_logs(self)
        _, _, port_a = start_app(self, "A")
        service, _ = yield self._start(_toml([port_a]))
        self._write(_toml([port_a], extra="workers = 2\n"))
        self.assertTrue((yield service.reload()))
        notes = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]
        self.assertEqual(notes, ["workers changed: restart to apply"])
        self.patch(service, "_restart_notes", False)
        self._write(_toml([port_a], extra="workers = 3\n"))
        self.assertTrue((yield service.reload()))
        notes = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]
        self.assertEqual(notes, ["workers changed: restart to apply"])

    @inlineCallbacks
    def test_reload_changes_listeners(self):
        """
        A listener added to the file starts; one removed stops.
        """
        _, _, port_a = start_app(self, "A")
        service, first_port = yield self._start(_toml([port_a]))
        number = free_port()
        self._write(_toml([port_a], listen=f"tcp:{number}:interface=127.0.0.1"))
        yield service.reload()
        self.assertEqual((yield get(number)).body, b"PORT A")
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", first_port)
        yield self.assertFailure(endpoint.connect(Factory()), ConnectionRefusedError)


class RouteIntegrationTests(TestCase):
    """
    Routes send requests to their pools; unmatched requests get 404.
    """

    @inlineCallbacks
    def test_routes(self):
        """
        C{/api/} on C{api.example.com} goes to the api pool, the rest to
        web, and a host no route covers gets lbproxy's 404.
        """
        web_app, _, web = start_app(self, "WEB")
        api_app, _, api = start_app(self, "API")
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(
                'listen = ["tcp:0:interface=127.0.0.1"]\naccess-log = "off"\n'
                f'[upstream.web]\nservers = ["127.0.0.1:{web}"]\nhealth-check = false\n'
                f'[upstream.api]\nservers = ["127.0.0.1:{api}"]\nhealth-check = false\n'
                '[[route]]\nhost = "api.example.com"\npath = "/api/"\nupstream = "api"\n'
                '[[route]]\nhost = "*.example.com"\nupstream = "web"\n'
            )
        service, _ = make_proxy_service(load_config(path), reactor, path)
        service.startService()
        self.addCleanup(service.stopService)
        port = (yield service.listening_ports())[0].getHost().port

        def ask(host: bytes, target: bytes) -> Deferred:
            request = b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
            _, done = raw_request(port, request % (target, host))
            return done.addCallback(lambda data: parse_responses(data)[0])

        self.assertEqual((yield ask(b"api.example.com", b"/api/")).body, b"Cannot GET /api/")
        self.assertEqual(len(api_app.requests), 1)
        self.assertEqual((yield ask(b"api.example.com", b"/")).body, b"PORT WEB")
        self.assertEqual((yield ask(b"www.example.com", b"/api/")).body, b"Cannot GET /api/")
        self.assertEqual(len(web_app.requests), 2)
        unmatched = yield ask(b"other.org", b"/")
        self.assertEqual(unmatched.status, 404)
        self.assertIn(b"no route", unmatched.body)


class DrainTests(TestCase):
    """
    Stopping lets requests in flight finish, up to the drain timeout.
    """

    @inlineCallbacks
    def _start(self, drain: float):
        app, _, port = start_app(self, "A")
        path = self.mktemp()
        self.access_log = self.mktemp()
        with open(path, "w") as f:
            f.write(
                _toml([port])
                .replace("drain-timeout = 5", f"drain-timeout = {drain}")
                .replace('access-log = "off"', f'access-log = "{self.access_log}"')
            )
        service, _ = make_proxy_service(load_config(path), reactor, path)
        service.startService()
        proxy_port = (yield service.listening_ports())[0].getHost().port
        return app, service, proxy_port

    @inlineCallbacks
    def test_in_flight_request_finishes(self):
        """
        A request in flight when the service stops gets its whole answer;
        the stop completes only after it, and nothing new is accepted.
        """
        app, service, proxy_port = yield self._start(5)
        slow = get(proxy_port, b"/hold")
        yield held_request(app)
        stopped = service.stopService()
        self.assertNoResult(stopped)
        yield deferLater(reactor, 0.05, lambda: None)
        self.assertNoResult(stopped)
        release_held(app)
        yield stopped
        # Every client connection was closed cleanly (its answer flushed)
        # before the stop finished: twistd then stops the reactor, which
        # would drop whatever was still unsent.
        self.assertEqual(service.site.connections, set())
        response = yield slow
        self.assertEqual(response.body, b"held by A")
        # Its access line was written although the listener had stopped.
        with open(self.access_log) as f:
            self.assertIn('"GET /hold HTTP/1.1" 200', f.read())

    @inlineCallbacks
    def test_sighup_while_draining(self):
        """
        SIGHUP while requests drain is ignored (logged once), not given to
        the handler from before the start (under twistd C{SIG_DFL}, which
        would end the process and cut the requests in flight); that one is
        put back once stopped.
        """
        events = _collect_logs(self)
        before: list[int] = []
        self.addCleanup(signal.signal, signal.SIGHUP, signal.getsignal(signal.SIGHUP))
        signal.signal(signal.SIGHUP, lambda signum, frame: before.append(signum))
        previous = signal.getsignal(signal.SIGHUP)
        app, service, proxy_port = yield self._start(5)
        slow = get(proxy_port, b"/hold")
        yield held_request(app)
        stopped = service.stopService()
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGHUP)
        yield deferLater(reactor, 0, lambda: None)
        self.assertEqual(before, [])
        self.assertNoResult(stopped)
        release_held(app)
        yield stopped
        self.assertEqual((yield slow).body, b"held by A")
        self.assertIs(signal.getsignal(signal.SIGHUP), previous)
        ignored = [e for e in events if "reload ignored while stopping" in formatEvent(e)]
        self.assertEqual(len(ignored), 1)

    @inlineCallbacks
    def test_drain_timeout(self):
        """
        A request still in flight after the drain timeout does not hold the
        stop any longer: it is aborted.
        """
        app, service, proxy_port = yield self._start(0.2)
        client, slow = raw_request(proxy_port, b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        yield held_request(app)
        yield service.stopService()
        self.assertEqual(service.resource.in_flight, 0)
        yield slow
        self.assertEqual(client.received, b"")
        # The app's side of the aborted exchange is gone too.
        self.assertTrue(app.held[0]._disconnected)


class BacklogTests(TestCase):
    """
    Listeners get nginx's backlog unless the endpoint names one.
    """

    def test_default_backlog(self) -> None:
        """
        C{tcp:}, C{tcp6:}, C{ssl:} and C{unix:} endpoints get C{backlog=511};
        an explicit backlog and other endpoint kinds are left alone.
        """
        from lbproxy.service.listeners import with_default_backlog

        self.assertEqual(with_default_backlog("tcp:8080"), "tcp:8080:backlog=511")
        self.assertEqual(
            with_default_backlog("tcp:8080:interface=127.0.0.1"),
            "tcp:8080:interface=127.0.0.1:backlog=511",
        )
        self.assertEqual(with_default_backlog("unix:/run/lb.sock"), "unix:/run/lb.sock:backlog=511")
        self.assertEqual(with_default_backlog("tcp:8080:backlog=64"), "tcp:8080:backlog=64")
        self.assertEqual(with_default_backlog("haproxy:tcp:8080"), "haproxy:tcp:8080")


class TLSReloadTests(TestCase):
    """
    A reload reads the certificates of C{ssl:} listeners again.
    """

    @inlineCallbacks
    def _start(self):
        """
        lbproxy on an C{ssl:} listener, with a certificate of an old CA,
        over app server A; the renewed certificate's CA is C{self.new_ca}.
        """
        from tests.certs import CA

        _, _, self.port_a = start_app(self, "A")
        _, _, self.port_b = start_app(self, "B")
        directory = self.mktemp()
        os.makedirs(directory)
        self.old_ca, self.new_ca = CA("old CA"), CA("new CA")
        self.key, self.cert = self.old_ca.issue("localhost").write_split(directory, "server")
        self.directory = directory
        self.listen = f"ssl:0:interface=127.0.0.1:privateKey={self.key}:certKey={self.cert}"
        self.path = self.mktemp()
        with open(self.path, "w") as f:
            f.write(_toml([self.port_a], listen=self.listen))
        service, _ = make_proxy_service(load_config(self.path), reactor, self.path)
        service.startService()
        self.addCleanup(service.stopService)
        tls_port = (yield service.listening_ports())[0].getHost().port
        return service, tls_port

    @inlineCallbacks
    def test_renewed_certificate(self):
        """
        After the certificate files are replaced and the configuration is
        reloaded, new TLS connections get the new certificate.
        """
        service, tls_port = yield self._start()
        self.assertEqual((yield tls_get(self, tls_port, "localhost", self.old_ca)).body, b"PORT A")
        self.new_ca.issue("localhost").write_split(self.directory, "server")
        self.assertTrue((yield service.reload()))
        self.assertEqual((yield tls_get(self, tls_port, "localhost", self.new_ca)).body, b"PORT A")

    @inlineCallbacks
    def test_unusable_certificate_changes_nothing(self):
        """
        A reload while the listener's certificate file is unusable is
        refused as a whole: the listener keeps the certificate it has, the
        routes stay, and the log names the file.
        """
        events = _collect_logs(self)
        service, tls_port = yield self._start()
        with open(self.cert, "w") as f:
            f.write("not a certificate")
        with open(self.path, "w") as f:
            f.write(_toml([self.port_b], listen=self.listen))
        self.assertFalse((yield service.reload()))
        self.assertEqual((yield tls_get(self, tls_port, "localhost", self.old_ca)).body, b"PORT A")
        self.assertEqual(
            _errors(events),
            [
                f"reload failed, configuration kept: {self.path}: listen[0]: "
                f"{self.listen!r}: TLS certificate {self.cert!r}: no PEM certificate in it"
            ],
        )


def _https(port: int, extra: str = "") -> str:
    """
    A configuration file over an https app server on loopback C{port}, with
    the top-level lines C{extra}; a failed request does not take the
    server out (C{max-fails = 0}), so that the next one tries it again.
    """
    return _toml([port], extra=extra, scheme="https", pool="max-fails = 0\n")


class ReloadSettingsTests(TestCase):
    """
    A reload applies every setting to new connections, including those the
    upstream client and the site kept from the start (they used to keep
    their old values silently).
    """

    def setUp(self) -> None:
        from tests.certs import CA

        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.ca = CA()
        self.ca_path = self.ca.write(self.dir)
        self.other_ca_path = CA("another CA").write(self.dir, "other.pem")
        self.server_cert = self.ca.issue("localhost", "127.0.0.1")
        self.path = self.mktemp()

    @inlineCallbacks
    def _start(self, text: str):
        with open(self.path, "w") as f:
            f.write(text)
        service, _ = make_proxy_service(load_config(self.path), reactor, self.path)
        service.startService()
        self.addCleanup(service.stopService)
        # First (cleanups run last in, first out): wait until the pooled
        # TLS connections are closed.
        self.addCleanup(_close_upstream, service.client)
        ports = yield service.listening_ports()
        return service, ports[0].getHost().port

    def _write(self, text: str) -> None:
        with open(self.path, "w") as f:
            f.write(text)

    @inlineCallbacks
    def test_upstream_ca(self):
        """
        A new C{upstream-ca} is trusted after the reload: a server the old
        CA file did not vouch for is now reached.
        """

        _, app_port = start_tls_app(self, "a", self.server_cert.options())
        service, port = yield self._start(
            _https(app_port, f'upstream-ca = "{self.other_ca_path}"\n')
        )
        self.assertEqual((yield get(port)).status, 502)
        self._write(_https(app_port, f'upstream-ca = "{self.ca_path}"\n'))
        self.assertTrue((yield service.reload()))
        self.assertEqual((yield get(port)).body, b"PORT a")

    @inlineCallbacks
    def test_upstream_ca_pooled_connection(self):
        """
        A pooled connection verified under the old C{upstream-ca} is not
        used after a reload that no longer trusts its server: the next
        request makes a new connection, which fails verification.
        """

        app, app_port = start_tls_app(self, "a", self.server_cert.options())
        service, port = yield self._start(_https(app_port, f'upstream-ca = "{self.ca_path}"\n'))
        self.assertEqual((yield get(port)).body, b"PORT a")
        self._write(_https(app_port, f'upstream-ca = "{self.other_ca_path}"\n'))
        self.assertTrue((yield service.reload()))
        self.assertEqual((yield get(port)).status, 502)
        self.assertEqual(len(app.requests), 1)

    @inlineCallbacks
    def test_upstream_ca_in_flight(self):
        """
        A request in flight on a connection verified under the old
        C{upstream-ca} finishes after the reload; its connection is then
        closed rather than pooled.
        """
        app, app_port = start_tls_app(self, "a", self.server_cert.options())
        service, port = yield self._start(_https(app_port, f'upstream-ca = "{self.ca_path}"\n'))
        slow = get(port, b"/hold")
        yield held_request(app)
        self._write(_https(app_port, f'upstream-ca = "{self.other_ca_path}"\n'))
        self.assertTrue((yield service.reload()))
        release_held(app)
        response = yield slow
        self.assertEqual((response.status, response.body), (200, b"held by a"))
        server = service.resource.router.pools["web"].servers[0]
        self.assertEqual(service.client.idle_count(server), 0)

    @inlineCallbacks
    def test_same_tls_keeps_pooled_connections(self):
        """
        A reload that leaves the upstream TLS files as they were keeps the
        pooled connections to https servers.
        """
        app, app_port = start_tls_app(self, "a", self.server_cert.options())
        text = _https(app_port, f'upstream-ca = "{self.ca_path}"\n')
        service, port = yield self._start(text)
        self.assertEqual((yield get(port)).body, b"PORT a")
        server = service.resource.router.pools["web"].servers[0]
        self.assertEqual(service.client.idle_count(server), 1)
        self.assertTrue((yield service.reload()))
        self.assertEqual(service.client.idle_count(server), 1)
        self.assertEqual((yield get(port)).body, b"PORT a")

    @inlineCallbacks
    def test_upstream_client_cert(self):
        """
        A new C{upstream-client-cert} is presented to app servers after the
        reload.
        """

        options = self.server_cert.options(
            verify=True,
            caCerts=[self.ca.trust_root()._caCerts[0]],
            requireCertificate=True,
        )
        _, app_port = start_tls_app(self, "a", options)
        client_path = self.ca.issue("lbproxy", client=True).write(self.dir, "client.pem")
        trust = f'upstream-ca = "{self.ca_path}"\n'
        service, port = yield self._start(_https(app_port, trust))
        self.assertEqual((yield get(port)).status, 502)
        self._write(_https(app_port, trust + f'upstream-client-cert = "{client_path}"\n'))
        self.assertTrue((yield service.reload()))
        self.assertEqual((yield get(port)).body, b"PORT a")

    @inlineCallbacks
    def test_upstream_insecure(self):
        """
        C{upstream-insecure} turned on by a reload accepts any certificate
        for new connections, and says so in the log.
        """
        from tests.certs import CA

        events = _collect_logs(self)
        other = CA("unknown CA").issue("127.0.0.1")
        _, app_port = start_tls_app(self, "a", other.options())
        service, port = yield self._start(_https(app_port))
        self.assertEqual((yield get(port)).status, 502)
        self._write(_https(app_port, "upstream-insecure = true\n"))
        self.assertTrue((yield service.reload()))
        self.assertEqual((yield get(port)).body, b"PORT a")
        self.assertIn("NOT verified", "\n".join(formatEvent(e) for e in events))

    @inlineCallbacks
    def test_redirect_https(self):
        """
        C{redirect-https} set by a reload redirects requests on new plain
        connections.
        """
        _, _, app_port = start_app(self, "A")
        service, port = yield self._start(_toml([app_port]))
        self.assertEqual((yield get(port)).body, b"PORT A")
        self._write(_toml([app_port], extra="redirect-https = 8443\n"))
        self.assertTrue((yield service.reload()))
        response = yield get(port, b"/x")
        self.assertEqual(response.status, 308)
        self.assertEqual(response.header(b"location"), [b"https://test.example:8443/x"])

    @inlineCallbacks
    def test_hsts(self):
        """
        C{hsts} set by a reload adds C{Strict-Transport-Security} to
        answers on new TLS connections.
        """
        _, _, app_port = start_app(self, "A")
        key, cert = self.server_cert.write_split(self.dir, "server")
        listener = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
        service, port = yield self._start(_toml([app_port], listen=listener))
        response = yield tls_get(self, port, "localhost", self.ca)
        self.assertEqual(response.header(b"strict-transport-security"), [])
        self._write(_toml([app_port], listen=listener, extra="hsts = 600\n"))
        self.assertTrue((yield service.reload()))
        response = yield tls_get(self, port, "localhost", self.ca)
        self.assertEqual(response.header(b"strict-transport-security"), [b"max-age=600"])


class ReloadConnectTimeoutTests(SynchronousTestCase):
    """
    A reloaded C{connect-timeout} applies to servers kept across the reload.
    """

    def test_connect_timeout_kept_server(self) -> None:
        """
        A server present before and after a reload is connected to with the
        new connect timeout (its endpoint, cached by the upstream client,
        used to keep the old one).
        """
        from dataclasses import replace

        from twisted.internet.testing import MemoryReactorClock, StringTransport

        from lbproxy.config.model import Config, PoolConfig, ServerConfig

        pool = PoolConfig("default", (ServerConfig("10.0.0.1", 3000),), health_check=False)
        config = Config(pools=(pool,), access_log="off", connect_timeout=5.0)
        memory = MemoryReactorClock()
        service, site = make_proxy_service(config, memory)
        service.startService()
        self.addCleanup(service.stopService)

        def ask() -> float:
            channel = site.buildProtocol(None)
            channel.makeConnection(StringTransport())
            channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            host, port, _, timeout, _ = memory.tcpClients[-1]
            self.assertEqual((host, port), ("10.0.0.1", 3000))
            return timeout

        self.assertEqual(ask(), 5.0)
        self.assertTrue(
            self.successResultOf(service.apply(replace(config, connect_timeout=1.5))) is None
        )
        self.assertEqual(ask(), 1.5)


class ListenErrorTests(TestCase):
    """
    A port that cannot be listened on stops the start with one line.
    """

    @inlineCallbacks
    def test_port_in_use(self):
        """
        Starting on a port in use exits with a one-line message naming the
        endpoint, not a traceback.
        """
        _, _, app_port = start_app(self, "A")
        taken = listen(self, Factory())
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(_toml([app_port], listen=f"tcp:{taken}:interface=127.0.0.1"))
        service, _ = make_proxy_service(load_config(path), reactor, path)
        error = self.assertRaises(SystemExit, service.startService)
        self.assertIn(f"cannot listen on tcp:{taken}:interface=127.0.0.1", str(error))
        self.assertIn("Address already in use", str(error))
        self.flushLoggedErrors()
        yield service.stopService()

    @inlineCallbacks
    def test_port_in_use_privileged_start(self):
        """
        Under twistd the listeners are bound in C{privilegedStartService}:
        a port in use ends the start there, with the same one line.
        """
        _, _, app_port = start_app(self, "A")
        taken = listen(self, Factory())
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(_toml([app_port], listen=f"tcp:{taken}:interface=127.0.0.1"))
        service, _ = make_proxy_service(load_config(path), reactor, path)
        error = self.assertRaises(SystemExit, service.privilegedStartService)
        self.assertEqual(
            str(error),
            f"lbproxy: cannot listen on tcp:{taken}:interface=127.0.0.1: "
            "[Errno 98] Address already in use",
        )
        yield service.stopService()

    @inlineCallbacks
    def test_port_in_use_daemon(self):
        """
        When twistd daemonises, a port in use raises L{StartError}, which
        twistd reports to its waiting parent (which prints it and exits
        with status 1); with L{SystemExit} the parent would wait for ever.
        """
        from lbproxy.service.service import StartError

        _, _, app_port = start_app(self, "A")
        taken = listen(self, Factory())
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(_toml([app_port], listen=f"tcp:{taken}:interface=127.0.0.1"))
        service, _ = make_proxy_service(load_config(path), reactor, path, daemon=True)
        error = self.assertRaises(StartError, service.privilegedStartService)
        self.assertEqual(
            str(error),
            f"cannot listen on tcp:{taken}:interface=127.0.0.1: [Errno 98] Address already in use",
        )
        yield service.stopService()

    @inlineCallbacks
    def test_failed_start_closes_bound_ports(self):
        """
        Stopping after a start that failed on the second listener closes
        the port the first one had bound (and stops nothing that never
        started).
        """
        _, _, app_port = start_app(self, "A")
        taken = listen(self, Factory())
        free = free_port()
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(
                _toml(
                    [app_port],
                    listen=[f"tcp:{free}:interface=127.0.0.1", f"tcp:{taken}:interface=127.0.0.1"],
                )
            )
        service, _ = make_proxy_service(load_config(path), reactor, path)
        self.assertRaises(SystemExit, service.privilegedStartService)
        yield service.stopService()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", free)
        yield self.assertFailure(endpoint.connect(Factory()), ConnectionRefusedError)


class PrivilegedStartTests(TestCase):
    """
    What twistd does with C{--uid}/C{--gid}: C{privilegedStartService}
    (as root), then C{startService} (as the user).
    """

    @inlineCallbacks
    def test_access_log_opened_after_privileges(self):
        """
        Binding as root starts the site, which would open (and create, as
        root) the access log file; it is opened in C{startService}
        instead, as the user twistd switched to, so that this user can
        reopen it on SIGHUP.  Requests are logged to it.
        """
        _, _, app_port = start_app(self, "A")
        access_log = os.path.abspath(self.mktemp())
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(_toml([app_port]).replace('access-log = "off"', f'access-log = "{access_log}"'))
        service, site = make_proxy_service(load_config(path), reactor, path)
        service.privilegedStartService()
        self.addCleanup(service.stopService)
        port = (yield service.listening_ports())[0].getHost().port
        self.assertFalse(os.path.exists(access_log))
        service.startService()
        self.assertTrue(os.path.exists(access_log))
        self.assertEqual((yield get(port)).body, b"PORT A")
        site.access_log.flush()
        with open(access_log) as f:
            self.assertIn('"GET / HTTP/1.1" 200', f.read())


class _DroppingOpener:
    """
    Opens access log sinks as L{make_proxy_service} does, twistd logging
    to the file C{twistd_path}; once C{dropped} (twistd switched to the
    C{--uid} user), opening C{-} fails as it does for that user: twistd
    opened its log file as root.

    @ivar opened: the settings opened, in order.
    """

    def __init__(self, twistd_path: str) -> None:
        self.twistd = TwistdLog(path=twistd_path)
        self.dropped = False
        self.opened: list[str] = []

    def __call__(self, setting: str) -> LineSink | None:
        if self.dropped and setting == "-":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        self.opened.append(setting)
        return open_sink(setting, self.twistd)


def _descriptors_on(path: str) -> int:
    """
    How many descriptors this process has open on the file at C{path}.
    """
    target = os.stat(path)
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            found = os.stat(f"/proc/self/fd/{name}")
        except OSError:
            continue
        count += (found.st_dev, found.st_ino) == (target.st_dev, target.st_ino)
    return count


class TwistdLogPrivilegesTests(TestCase):
    """
    C{access-log = "-"} with twistd logging to a file under C{--uid}:
    twistd opened that file as root, so lbproxy opens it before twistd
    drops privileges, and keeps it.
    """

    def _service(self, access_log: str) -> Any:
        """
        A service over an app server, with C{access-log} set so, started as
        twistd does with C{--uid}: privileges are dropped between
        C{privilegedStartService} and C{startService}.
        """
        _, _, app_port = start_app(self, "A")
        self.path = self.mktemp()
        self._write(app_port, access_log)
        self.twistd_path = os.path.abspath(self.mktemp())
        open(self.twistd_path, "w").close()
        service, self.site = make_proxy_service(load_config(self.path), reactor, self.path)
        self.opener = _DroppingOpener(self.twistd_path)
        service._open_sink = self.opener
        self.app_port = app_port
        service.privilegedStartService()
        self.addCleanup(service.stopService)
        self.opener.dropped = True
        service.startService()
        return service

    def _write(self, app_port: int, access_log: str, extra: str = "") -> None:
        with open(self.path, "w") as f:
            f.write(
                _toml([app_port], extra=extra).replace(
                    'access-log = "off"', f'access-log = "{access_log}"'
                )
            )

    @inlineCallbacks
    def _request_logged(self, service: Any, target: str) -> Any:
        """
        Request C{target}; its access line is in twistd's log file.
        """
        port = (yield service.listening_ports())[0].getHost().port
        self.assertEqual((yield get(port, target.encode())).body, b"PORT A")
        self.site.access_log.flush()
        with open(self.twistd_path) as f:
            self.assertIn(f'"GET {target} HTTP/1.1" 200', f.read())

    @inlineCallbacks
    def test_opened_before_privileges(self):
        """
        The start succeeds, and access lines reach twistd's log file.
        """
        service = self._service("-")
        self.assertEqual(self.opener.opened, ["-"])
        yield self._request_logged(service, "/?first")

    @inlineCallbacks
    def test_reload_keeps_it(self):
        """
        A reload that keeps C{-} keeps the sink: it cannot be opened again.
        """
        service = self._service("-")
        sink = self.site.access_log.sink
        self._write(self.app_port, "-", extra="send-timeout = 7\n")
        self.assertTrue((yield service.reload()))
        self.assertEqual(service.config.send_timeout, 7.0)
        self.assertIs(self.site.access_log.sink, sink)
        self.assertEqual(self.opener.opened, ["-"])
        yield self._request_logged(service, "/?after")

    @inlineCallbacks
    def test_reload_back_to_it(self):
        """
        Opened even if the setting is a path (opened as the user, after the
        drop), a reload may choose C{-} later.
        """
        access_log = os.path.abspath(self.mktemp())
        service = self._service(access_log)
        self.assertEqual(self.opener.opened, ["-", access_log])
        self._write(self.app_port, "-")
        self.assertTrue((yield service.reload()))
        yield self._request_logged(service, "/?back")

    @inlineCallbacks
    def test_stop_closes_it(self):
        """
        Stopping closes twistd's log file (lbproxy's descriptor on it).
        """
        service = self._service("-")
        self.assertEqual(_descriptors_on(self.twistd_path), 1)
        yield service.stopService()
        self.assertEqual(_descriptors_on(self.twistd_path), 0)


class ReloadUpstreamSettingsTests(TestCase):
    """
    A reload applies the settings about upstream answers.
    """

    _start = ReloadTests._start
    _write = ReloadTests._write

    @inlineCallbacks
    def test_max_upstream_headers_size(self):
        """
        A new C{max-upstream-headers-size} applies to the next answers,
        pooled connections included: a smaller limit refuses a head the old
        one accepted.
        """
        _, _, port = start_app(self, "A")
        service, proxy_port = yield self._start(_toml([port]))
        self.assertEqual((yield get(proxy_port)).status, 200)
        self._write(_toml([port], extra="max-upstream-headers-size = 50\n"))
        self.assertTrue((yield service.reload()))
        self.assertEqual(service.client.max_headers_size, 50)
        self.assertEqual((yield get(proxy_port)).status, 502)

    @inlineCallbacks
    def test_send_timeout(self):
        """
        A new C{send-timeout} applies to the proxy resource at once.
        """
        _, _, port = start_app(self, "A")
        service, _ = yield self._start(_toml([port]))
        self.assertEqual(service.resource.send_timeout, 60.0)
        self._write(_toml([port], extra="send-timeout = 3\n"))
        self.assertTrue((yield service.reload()))
        self.assertEqual(service.resource.send_timeout, 3.0)


class BalancingReloadTests(TestCase):
    """
    A reload changes a pool's strategy and keeps sticky cookies valid.
    """

    _start = ReloadTests._start
    _write = ReloadTests._write

    @inlineCallbacks
    def _bodies(self, port: int, count: int, headers: bytes):
        bodies = []
        for _ in range(count):
            bodies.append((yield get(port, headers=headers)).body)
        return bodies

    @inlineCallbacks
    def test_strategy_changed(self):
        """
        From round robin to C{hash} on a header: after the reload a user's
        requests stay on one server.
        """
        _, _, port_a = start_app(self, "A")
        _, _, port_b = start_app(self, "B")
        service, proxy_port = yield self._start(_toml([port_a, port_b]))
        bodies = yield self._bodies(proxy_port, 2, b"X-User: u1\r\n")
        self.assertEqual(set(bodies), {b"PORT A", b"PORT B"})
        self._write(_toml([port_a, port_b], pool='balance = "hash"\nhash-key = "header:X-User"\n'))
        self.assertTrue((yield service.reload()))
        bodies = yield self._bodies(proxy_port, 4, b"X-User: u1\r\n")
        self.assertEqual(len(set(bodies)), 1)

    @inlineCallbacks
    def test_sticky_cookie_survives_reload(self):
        """
        A cookie set before a reload names the same server after it (ids
        are made from the pool's name and the address, not kept in memory).
        """
        _, _, port_a = start_app(self, "A")
        _, _, port_b = start_app(self, "B")
        sticky = 'sticky-cookie = "lbsrv"\n'
        service, proxy_port = yield self._start(_toml([port_a, port_b], pool=sticky))
        first = yield get(proxy_port)
        cookie = first.header(b"set-cookie")[0].split(b";")[0]
        self._write(_toml([port_b, port_a], pool=sticky + "fall = 2\n"))
        self.assertTrue((yield service.reload()))
        for _ in range(3):
            response = yield get(proxy_port, headers=b"Cookie: " + cookie + b"\r\n")
            self.assertEqual(response.body, first.body)

    @inlineCallbacks
    def test_apply_unknown_strategy_changes_nothing(self):
        """
        A strategy name no strategy answers to, in a configuration that did
        not go through the checks, refuses the reload as a whole.
        """
        events = _collect_logs(self)
        _, _, port_a = start_app(self, "A")
        service, proxy_port = yield self._start(_toml([port_a]))
        router = service.resource.router
        self._write(_toml([port_a], pool='balance = "fastest"\n'))
        service._load = lambda: load_config(self.path)
        self.assertFalse((yield service.reload()))
        self.assertIs(service.resource.router, router)
        self.assertEqual(
            _errors(events),
            [
                "reload failed, configuration kept: upstream.web.balance: unknown strategy "
                "'fastest' (expected one of ewma, hash, leastconn, random2, roundrobin)"
            ],
        )


class CommandLineReloadTests(TestCase):
    """
    Without C{--config}, a reload (SIGHUP) applies the command line's
    options again: nothing changes, but the access log file is reopened,
    so that logrotate can move it away and send SIGHUP.
    """

    @inlineCallbacks
    def test_access_log_reopened(self):
        """
        After the access log file was moved away, a reload opens a new one
        at its path, where the next requests are logged.
        """
        from lbproxy.config.model import Config, PoolConfig, ServerConfig

        _, _, app_port = start_app(self, "A")
        access_log = os.path.abspath(self.mktemp())
        pool = PoolConfig("default", (ServerConfig("127.0.0.1", app_port),), health_check=False)
        config = Config(pools=(pool,), access_log=access_log, listen=("tcp:0:interface=127.0.0.1",))
        service, site = make_proxy_service(config, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        port = (yield service.listening_ports())[0].getHost().port
        self.assertEqual((yield get(port)).body, b"PORT A")
        site.access_log.flush()
        os.rename(access_log, access_log + ".1")
        applied = yield service.reload()
        self.assertTrue(applied)
        self.assertEqual((yield get(port)).body, b"PORT A")
        self.assertEqual((yield get(port)).body, b"PORT A")
        site.access_log.flush()
        with open(access_log + ".1") as f:
            self.assertEqual(f.read().count('"GET / HTTP/1.1" 200'), 1)
        with open(access_log) as f:
            self.assertEqual(f.read().count('"GET / HTTP/1.1" 200'), 2)
