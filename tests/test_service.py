"""
Tests for L{lbproxy.service}: reload, routes in the running proxy, and the
graceful stop, with real app servers on loopback.
"""

from __future__ import annotations

import os
import signal

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from lbproxy.configfile import load_config
from lbproxy.tap import make_proxy_service
from tests.support import (
    free_port,
    get,
    held_request,
    parse_responses,
    raw_request,
    release_held,
    start_app,
)


def _toml(servers: list[int], listen: str = "tcp:0:interface=127.0.0.1", extra: str = "") -> str:
    addresses = ", ".join(f'"127.0.0.1:{port}"' for port in servers)
    return (
        f'listen = ["{listen}"]\naccess-log = "off"\ndrain-timeout = 5\n{extra}'
        f"[upstream.web]\nservers = [{addresses}]\nhealth = {{ enabled = false }}\n"
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
        self.assertTrue(service.reload())
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
        app_a, _, port_a = start_app(self, "A")
        service, proxy_port = yield self._start(_toml([port_a]))
        self._write('[upstream.web]\nservers = ["nope"]\n')
        self.assertFalse(service.reload())
        errors = [e for e in self.flushLoggedErrors()] if False else []
        response = yield get(proxy_port)
        self.assertEqual(response.body, b"PORT A")
        self.assertEqual(errors, [])

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
        service.reload()
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
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(200):
            if service.config.pools[0].servers[0].port == port_b:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual((yield get(proxy_port)).body, b"PORT B")

    @inlineCallbacks
    def test_reload_changes_listeners(self):
        """
        A listener added to the file starts; one removed stops.
        """
        _, _, port_a = start_app(self, "A")
        service, first_port = yield self._start(_toml([port_a]))
        number = free_port()
        self._write(_toml([port_a], listen=f"tcp:{number}:interface=127.0.0.1"))
        service.reload()
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
                f'[upstream.web]\nservers = ["127.0.0.1:{web}"]\nhealth = {{ enabled = false }}\n'
                f'[upstream.api]\nservers = ["127.0.0.1:{api}"]\nhealth = {{ enabled = false }}\n'
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
        self.assertEqual(service.site.channels, set())
        response = yield slow
        self.assertEqual(response.body, b"held by A")
        # Its access line was written although the listener had stopped.
        with open(self.access_log) as f:
            self.assertIn('"GET /hold HTTP/1.1" 200', f.read())

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
        from lbproxy.service import with_default_backlog

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
    def test_renewed_certificate(self):
        """
        After the certificate files are replaced and the configuration is
        reloaded, new TLS connections get the new certificate; a reload
        with unusable files keeps the one in use.
        """
        from tests.certs import CA
        from tests.test_tls import tls_get

        _, _, port = start_app(self, "A")
        directory = self.mktemp()
        os.makedirs(directory)
        old_ca, new_ca = CA("old CA"), CA("new CA")
        key, cert = old_ca.issue("localhost").write_split(directory, "server")
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(
                _toml(
                    [port],
                    listen=f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}",
                )
            )
        service, _ = make_proxy_service(load_config(path), reactor, path)
        service.startService()
        self.addCleanup(service.stopService)
        tls_port = (yield service.listening_ports())[0].getHost().port
        self.assertEqual((yield tls_get(self, tls_port, "localhost", old_ca)).body, b"PORT A")

        new_ca.issue("localhost").write_split(directory, "server")
        self.assertTrue(service.reload())
        self.assertEqual((yield tls_get(self, tls_port, "localhost", new_ca)).body, b"PORT A")

        with open(cert, "w") as f:
            f.write("not a certificate")
        self.assertTrue(service.reload())
        self.assertEqual((yield tls_get(self, tls_port, "localhost", new_ca)).body, b"PORT A")
        self.flushLoggedErrors()


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
        from tests.support import listen

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
        self.assertTrue(service.reload())
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
        self.assertTrue(service.reload())
        self.assertEqual(service.resource.send_timeout, 3.0)
