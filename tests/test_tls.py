"""
Tests for L{lbproxy.tls}: TLS listeners (SNI, HTTP/2 by ALPN, HSTS,
redirects) and verified https upstreams (CA, host name, mTLS), over real
loopback sockets with certificates made at run time (L{tests.certs}).
"""

from __future__ import annotations

import hashlib
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    DataReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import globalLogPublisher
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from lbproxy.balancing.health import _failure_reason, agent_probe
from lbproxy.balancing.pool import Pool
from lbproxy.config.model import Config, PoolConfig, ServerConfig
from lbproxy.errors import ConfigError
from lbproxy.http.servertls import server_endpoint
from lbproxy.tap import Options, build_site
from lbproxy.upstream.tls import UpstreamTLS
from tests.certs import CA
from tests.support import (
    AppServer,
    CountingSite,
    RawClient,
    get,
    listen,
    parse_responses,
    pattern_digest,
    raw_request,
    start_app,
)


def _collect_logs(testcase: TestCase) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    testcase.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


def _log_text(events: list[dict[str, Any]]) -> str:
    from twisted.logger import formatEvent

    return "\n".join(formatEvent(e) for e in events)


def start_tls_app(testcase: TestCase, name: str, options: Any) -> tuple[AppServer, int]:
    """
    An L{AppServer} behind TLS with C{options}; stopped on cleanup.
    """
    app = AppServer(name)
    site = CountingSite(app)
    site.timeOut = None
    port = reactor.listenSSL(0, site, options, interface="127.0.0.1")
    testcase.addCleanup(port.stopListening)
    return app, port.getHost().port


def start_proxy(testcase: TestCase, servers: tuple[ServerConfig, ...], **settings: Any) -> Any:
    """
    lbproxy over C{servers} (health checks off), built as C{twistd} builds
    it; returns its site, not listening yet.
    """
    settings.setdefault("access_log", "off")
    pool = PoolConfig("default", servers)
    site, client = build_site(Config(pools=(pool,), **settings), reactor)
    testcase.addCleanup(_close_upstream, client)
    return site


def _close_upstream(client: Any) -> Deferred[Any]:
    """
    Close the idle upstream connections and wait until they are closed
    (over TLS that takes a close_notify exchange).
    """
    waiting = []
    for idle in client._idle.values():
        for connection in idle:
            lost: Deferred[None] = Deferred()
            original = connection.connectionLost

            def connectionLost(reason: Failure, original: Any = original, lost: Any = lost) -> None:
                original(reason)
                lost.callback(None)

            connection.connectionLost = connectionLost
            waiting.append(lost)
    client.close_idle()
    return gatherResults(waiting)


def listen_tls(testcase: TestCase, site: Any, key: str, cert: str, cert_dir: str = "") -> int:
    """
    Listen with C{site} on an C{ssl:} endpoint, as C{--listen} does.
    """
    description = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
    endpoint = server_endpoint(reactor, description, cert_dir or None)
    listening: Deferred[Any] = endpoint.listen(site)
    port = listening.result  # listenSSL answers at once
    testcase.addCleanup(port.stopListening)
    return int(port.getHost().port)


@inlineCallbacks
def tls_get(
    testcase: TestCase, port: int, hostname: str, ca: CA, path: bytes = b"/", host: bytes = b""
) -> Any:
    """
    One HTTP/1.1 C{GET} over TLS, verifying the server as C{hostname}.
    """
    payload = (
        b"GET " + path + b" HTTP/1.1\r\nHost: " + (host or hostname.encode()) + b"\r\n"
        b"Connection: close\r\n\r\n"
    )
    client = RawClient(payload)
    endpoint = wrapClientTLS(
        optionsForClientTLS(hostname, trustRoot=ca.trust_root()),
        TCP4ClientEndpoint(reactor, "127.0.0.1", port),
    )
    yield endpoint.connect(Factory.forProtocol(lambda: client))
    data = yield client.done
    return parse_responses(data)[-1]


@implementer(IHandshakeListener)
class H2Client(Protocol):
    """
    A minimal HTTP/2 client: C{h2}'s L{H2Connection} over a Twisted TLS
    transport, with flow control both ways.
    """

    def __init__(self) -> None:
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.negotiated: bytes | None = None
        self.closed: Deferred[None] = Deferred()
        self._responses: dict[int, dict[str, Any]] = {}
        self._uploads: dict[int, bytes] = {}

    def connectionMade(self) -> None:
        self.conn.initiate_connection()
        self._flush()

    def handshakeCompleted(self) -> None:
        self.negotiated = self.transport.negotiatedProtocol

    def request(
        self, method: bytes, path: bytes, body: bytes = b"", authority: bytes = b"localhost"
    ) -> Deferred[dict[str, Any]]:
        """
        Send one request on a new stream; fires with C{status}, C{headers}
        and C{body}.
        """
        stream = self.conn.get_next_available_stream_id()
        headers = [
            (b":method", method),
            (b":path", path),
            (b":scheme", b"https"),
            (b":authority", authority),
        ]
        if body:
            headers.append((b"content-length", b"%d" % len(body)))
        self.conn.send_headers(stream, headers, end_stream=not body)
        done: Deferred[dict[str, Any]] = Deferred()
        self._responses[stream] = {"body": b"", "done": done, "headers": []}
        if body:
            self._uploads[stream] = body
            self._send_body(stream)
        self._flush()
        return done

    def _send_body(self, stream: int) -> None:
        data = self._uploads.pop(stream)
        while data:
            window = min(
                self.conn.local_flow_control_window(stream), self.conn.max_outbound_frame_size
            )
            if window <= 0:
                self._uploads[stream] = data
                return
            self.conn.send_data(stream, data[:window])
            data = data[window:]
        self.conn.end_stream(stream)

    def dataReceived(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            if isinstance(event, ResponseReceived):
                response = self._responses[event.stream_id]
                response["headers"] = event.headers
                response["status"] = int(dict(event.headers)[b":status"])
            elif isinstance(event, DataReceived):
                self._responses[event.stream_id]["body"] += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded):
                response = self._responses.pop(event.stream_id)
                response["done"].callback(response)
            elif isinstance(event, StreamReset):
                response = self._responses.pop(event.stream_id)
                response["done"].errback(Failure(RuntimeError(f"reset {event.error_code}")))
            elif isinstance(event, WindowUpdated):
                for stream in list(self._uploads):
                    self._send_body(stream)
        self._flush()

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.transport.write(data)

    def connectionLost(self, reason: Failure) -> None:
        self.closed.callback(None)


@inlineCallbacks
def h2_connect(
    testcase: TestCase, port: int, hostname: str, ca: CA, protocols: list[bytes] | None = None
) -> Any:
    """
    An L{H2Client} connected over TLS (ALPN offering C{h2}); closed on
    cleanup.
    """
    endpoint = wrapClientTLS(
        optionsForClientTLS(
            hostname, trustRoot=ca.trust_root(), acceptableProtocols=protocols or [b"h2"]
        ),
        TCP4ClientEndpoint(reactor, "127.0.0.1", port),
    )
    client = yield endpoint.connect(Factory.forProtocol(H2Client))

    def close() -> Deferred[None]:
        client.transport.loseConnection()
        return client.closed

    testcase.addCleanup(close)
    return client


class TLSTestCase(TestCase):
    """
    Shared set-up: a CA, a server certificate for C{localhost} and
    C{127.0.0.1}, and files of them in a temporary directory.
    """

    def setUp(self) -> None:
        self.dir = self.mktemp()
        import os

        os.makedirs(self.dir)
        self.ca = CA()
        self.ca_path = self.ca.write(self.dir)
        self.server_cert = self.ca.issue("localhost", "127.0.0.1")
        self.key_path, self.cert_path = self.server_cert.write_split(self.dir, "server")


class UpstreamTLSTests(TLSTestCase):
    """
    C{https://} upstreams: verified with service-identity, 502 when not.
    """

    @inlineCallbacks
    def test_verified(self) -> Any:
        """
        An https upstream whose certificate chains to C{--upstream-ca} and
        names the configured host gets the request: 200.
        """
        app, port = start_tls_app(self, "a", self.server_cert.options())
        site = start_proxy(
            self, (ServerConfig("127.0.0.1", port, scheme="https"),), upstream_ca=self.ca_path
        )
        response = yield get(listen(self, site))
        self.assertEqual((response.status, response.body), (200, b"PORT a"))
        self.assertEqual(len(app.requests), 1)

    @inlineCallbacks
    def test_verified_by_name(self) -> Any:
        """
        A host name upstream (resolved by C{HostnameEndpoint}) is verified
        against that name.
        """
        _, port = start_tls_app(self, "a", self.server_cert.options())
        site = start_proxy(
            self, (ServerConfig("localhost", port, scheme="https"),), upstream_ca=self.ca_path
        )
        response = yield get(listen(self, site))
        self.assertEqual((response.status, response.body), (200, b"PORT a"))

    @inlineCallbacks
    def test_wrong_ca(self) -> Any:
        """
        A certificate from another CA fails the handshake: 502, a log line
        saying why, and the app server never sees the request.
        """
        events = _collect_logs(self)
        other = CA("another CA").issue("127.0.0.1")
        app, port = start_tls_app(self, "a", other.options())
        site = start_proxy(
            self, (ServerConfig("127.0.0.1", port, scheme="https"),), upstream_ca=self.ca_path
        )
        response = yield get(listen(self, site))
        self.assertEqual(response.status, 502)
        self.assertNotIn(b"PORT", response.body)
        self.assertEqual(app.requests, [])
        self.assertIn("certificate verify failed", _log_text(events))

    @inlineCallbacks
    def test_wrong_host_name(self) -> Any:
        """
        A certificate from the trusted CA for another name: 502, and the
        log names the mismatch.
        """
        events = _collect_logs(self)
        wrong = self.ca.issue("other.example")
        app, port = start_tls_app(self, "a", wrong.options())
        site = start_proxy(
            self, (ServerConfig("127.0.0.1", port, scheme="https"),), upstream_ca=self.ca_path
        )
        response = yield get(listen(self, site))
        self.assertEqual(response.status, 502)
        self.assertEqual(app.requests, [])
        self.assertIn("does not match the host name", _log_text(events))

    @inlineCallbacks
    def test_platform_trust_by_default(self) -> Any:
        """
        Without C{--upstream-ca} the platform's roots are trusted, which do
        not include a test CA: 502.
        """
        app, port = start_tls_app(self, "a", self.server_cert.options())
        site = start_proxy(self, (ServerConfig("127.0.0.1", port, scheme="https"),))
        response = yield get(listen(self, site))
        self.assertEqual(response.status, 502)
        self.assertEqual(app.requests, [])

    @inlineCallbacks
    def test_insecure(self) -> Any:
        """
        C{--upstream-insecure} accepts any certificate, and says so in a
        warning at start.
        """
        events = _collect_logs(self)
        other = CA("another CA").issue("other.example")
        _, port = start_tls_app(self, "a", other.options())
        site = start_proxy(
            self, (ServerConfig("127.0.0.1", port, scheme="https"),), upstream_insecure=True
        )
        self.assertIn("NOT verified", _log_text(events))
        response = yield get(listen(self, site))
        self.assertEqual((response.status, response.body), (200, b"PORT a"))

    def _mtls_app(self) -> int:
        options = self.server_cert.options(
            verify=True,
            caCerts=[self.ca.trust_root()._caCerts[0]],  # type: ignore[attr-defined]
            requireCertificate=True,
        )
        _, port = start_tls_app(self, "a", options)
        return port

    @inlineCallbacks
    def test_client_certificate(self) -> Any:
        """
        C{--upstream-client-cert} is presented to an app server that
        requires one (mTLS).
        """
        client_path = self.ca.issue("lbproxy", client=True).write(self.dir, "client.pem")
        site = start_proxy(
            self,
            (ServerConfig("127.0.0.1", self._mtls_app(), scheme="https"),),
            upstream_ca=self.ca_path,
            upstream_client_cert=client_path,
        )
        response = yield get(listen(self, site))
        self.assertEqual((response.status, response.body), (200, b"PORT a"))

    @inlineCallbacks
    def test_no_client_certificate(self) -> Any:
        """
        Without a client certificate such an app server refuses: 502.
        """
        site = start_proxy(
            self,
            (ServerConfig("127.0.0.1", self._mtls_app(), scheme="https"),),
            upstream_ca=self.ca_path,
        )
        response = yield get(listen(self, site))
        self.assertEqual(response.status, 502)

    @inlineCallbacks
    def test_health_check(self) -> Any:
        """
        Health checks of an https server use the same trust: they pass with
        the right CA and fail with another.
        """
        _, port = start_tls_app(self, "a", self.server_cert.options())
        server_config = ServerConfig("127.0.0.1", port, scheme="https")
        server = Pool(PoolConfig("p", (server_config,)), None, reactor).servers[0]  # type: ignore[arg-type]
        good = agent_probe(reactor, "/", 5.0, None, UpstreamTLS(self.ca_path))
        status = yield good(server)
        self.assertEqual(status, 200)
        other_path = CA("another CA").write(self.dir, "other.pem")
        bad = agent_probe(reactor, "/", 5.0, None, UpstreamTLS(other_path))
        (failure,) = yield bad(server).addErrback(lambda reason: (reason,))
        # The DOWN line says why in words, as the proxy's own log does.
        reason = _failure_reason(failure)
        self.assertTrue(reason.startswith("TLS handshake failed: "), reason)
        self.assertIn("certificate verify failed", reason)


def _post(port: int, body: bytes, path: bytes = b"/echo") -> Deferred[Any]:
    """
    One C{POST} with C{Connection: close}; fires with the parsed response.
    """
    payload = (
        b"POST " + path + b" HTTP/1.1\r\nHost: test.example\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
    ) + body
    _, done = raw_request(port, payload)
    return done.addCallback(lambda data: parse_responses(data)[-1])


class UpstreamTLSBodyTests(TLSTestCase):
    """
    Request bodies to C{https://} upstreams, on pooled connections and
    across a failed handshake.
    """

    @inlineCallbacks
    def test_posts_on_a_pooled_connection(self) -> Any:
        """
        Three POSTs in a row reach an https app server whole and are
        answered 200 with their bodies: the body's producer is unregistered
        from the TLS transport (which wraps it) after each, so the pooled
        connection takes the next; no exchange is left in flight.
        """
        app, port = start_tls_app(self, "a", self.server_cert.options())
        site = start_proxy(
            self, (ServerConfig("127.0.0.1", port, scheme="https"),), upstream_ca=self.ca_path
        )
        proxy_port = listen(self, site)
        for index in range(3):
            body = b"body number %d " % index * 100
            response = yield _post(proxy_port, body)
            self.assertEqual((response.status, response.body), (200, body))
        self.assertEqual(
            [r.body for r in app.requests], [b"body number %d " % i * 100 for i in range(3)]
        )
        self.assertEqual(site.resource.exchanges, set())

    @inlineCallbacks
    def test_failed_handshake_keeps_the_body(self) -> Any:
        """
        A POST whose first server fails the TLS handshake goes to the next
        server with its whole body: nothing of it counted as sent before
        the handshake completed.
        """
        other = CA("another CA").issue("127.0.0.1")
        bad, bad_port = start_tls_app(self, "bad", other.options())
        good, good_port = start_tls_app(self, "good", self.server_cert.options())
        site = start_proxy(
            self,
            (
                ServerConfig("127.0.0.1", bad_port, scheme="https"),
                ServerConfig("127.0.0.1", good_port, scheme="https"),
            ),
            upstream_ca=self.ca_path,
            read_timeout=5.0,
        )
        body = b"the whole upload " * 1000
        response = yield _post(listen(self, site), body)
        self.assertEqual((response.status, response.body), (200, body))
        self.assertEqual(bad.requests, [])
        self.assertEqual([r.body for r in good.requests], [body])


class _StallingH2Client(H2Client):
    """
    An L{H2Client} that takes no data of the streams in C{stalled}: it
    sends no C{WINDOW_UPDATE} for them (their data still counts for the
    connection's window, which it keeps open).
    """

    def __init__(self) -> None:
        super().__init__()
        self.stalled: set[int] = set()
        acknowledge = self.conn.acknowledge_received_data

        def acknowledge_unless_stalled(size: int, stream_id: int) -> None:
            if stream_id in self.stalled:
                if size:
                    self.conn.increment_flow_control_window(size)
            else:
                acknowledge(size, stream_id)

        self.conn.acknowledge_received_data = acknowledge_unless_stalled  # type: ignore[method-assign]


class H2SendTimeoutTests(TLSTestCase):
    """
    The send timeout on HTTP/2: a stalled stream is reset, not its
    connection.
    """

    # Without the send timeout the stalled stream waits for ever: fail
    # sooner than trial's 120 s.
    timeout = 30

    @inlineCallbacks
    def test_stalled_stream_is_reset(self) -> Any:
        """
        A stream whose client takes none of its data for the send timeout
        is reset and its upstream connection closed, while the same HTTP/2
        connection goes on serving other streams.
        """
        from twisted.internet.task import Clock

        from lbproxy.proxy.exchange import ProxyExchange

        app, _, app_port = start_app(self, "a")
        clock = Clock()
        config = Config(
            pools=(PoolConfig("default", (ServerConfig("127.0.0.1", app_port),)),),
            access_log="off",
            send_timeout=2.0,
        )
        site, upstream = build_site(config, reactor, clock)
        self.addCleanup(_close_upstream, upstream)
        port = listen_tls(self, site, self.key_path, self.cert_path)
        endpoint = wrapClientTLS(
            optionsForClientTLS(
                "localhost", trustRoot=self.ca.trust_root(), acceptableProtocols=[b"h2"]
            ),
            TCP4ClientEndpoint(reactor, "127.0.0.1", port),
        )
        client = yield endpoint.connect(Factory.forProtocol(_StallingH2Client))
        self.addCleanup(lambda: (client.transport.loseConnection(), client.closed)[1])
        held_back: Deferred[None] = Deferred()
        pause = ProxyExchange.pauseProducing

        def pause_and_tell(exchange: ProxyExchange) -> None:
            pause(exchange)
            if not held_back.called:
                held_back.callback(None)

        self.patch(ProxyExchange, "pauseProducing", pause_and_tell)
        client.stalled.add(1)
        stalled = client.request(b"GET", b"/big/%d" % (50 * 1024 * 1024))
        yield held_back
        upstream_closed = app.streams[0].request.notifyFinish()
        clock.advance(1.9)
        self.assertNoResult(stalled)
        clock.advance(0.1)
        reset = yield self.assertFailure(stalled, RuntimeError)
        self.assertIn("reset", str(reset))
        yield self.assertFailure(upstream_closed, Exception)
        other = yield client.request(b"GET", b"/")
        self.assertEqual((other["status"], other["body"]), (200, b"PORT a"))
        self.assertEqual(site.resource.exchanges, set())


class ListenerTests(TLSTestCase):
    """
    C{ssl:} listeners: termination, X-Forwarded-Proto, HSTS, SNI.
    """

    @inlineCallbacks
    def test_terminate(self) -> Any:
        """
        An C{ssl:} listener serves the proxy over TLS, and the app server
        learns the scheme from C{X-Forwarded-Proto: https}.
        """
        app, _, app_port = start_app(self, "a")
        site = start_proxy(self, (ServerConfig("127.0.0.1", app_port),))
        port = listen_tls(self, site, self.key_path, self.cert_path)
        response = yield tls_get(self, port, "localhost", self.ca)
        self.assertEqual((response.status, response.body), (200, b"PORT a"))
        self.assertEqual(app.requests[0].headers[b"x-forwarded-proto"], [b"https"])
        self.assertEqual(response.header(b"strict-transport-security"), [])

    @inlineCallbacks
    def test_hsts(self) -> Any:
        """
        C{--hsts} adds C{Strict-Transport-Security} on TLS responses (errors
        included) and not on plain ones.
        """
        _, _, app_port = start_app(self, "a")
        site = start_proxy(self, (ServerConfig("127.0.0.1", app_port),), hsts=31536000)
        port = listen_tls(self, site, self.key_path, self.cert_path)
        response = yield tls_get(self, port, "localhost", self.ca, b"/status/404")
        self.assertEqual(response.status, 404)
        self.assertEqual(response.header(b"strict-transport-security"), [b"max-age=31536000"])
        plain = yield get(listen(self, site))
        self.assertEqual(plain.header(b"strict-transport-security"), [])

    @inlineCallbacks
    def test_sni(self) -> Any:
        """
        With C{--tls-cert-dir} the certificate is chosen by SNI (exact and
        wildcard names); clients without SNI get the listener's own.
        """
        cert_dir = self.dir + "/certs"
        import os

        os.makedirs(cert_dir)
        self.ca.issue("a.example").write(cert_dir, "a.example.pem")
        self.ca.issue("b.example").write(cert_dir, "b.example.pem")
        self.ca.issue("*.wild.example").write(cert_dir, "*.wild.example.pem")
        _, _, app_port = start_app(self, "a")
        site = start_proxy(self, (ServerConfig("127.0.0.1", app_port),))
        port = listen_tls(self, site, self.key_path, self.cert_path, cert_dir)
        # Each verification passes only if the server sent that name's
        # certificate; an IP address sends no SNI.
        for hostname in ("a.example", "b.example", "x.wild.example", "127.0.0.1"):
            response = yield tls_get(self, port, hostname, self.ca)
            self.assertEqual((hostname, response.status), (hostname, 200))

    def test_sni_unknown_name(self) -> Any:
        """
        An unknown server name gets the default certificate (so a client
        verifying that name fails).
        """
        cert_dir = self.dir + "/certs"
        import os

        os.makedirs(cert_dir)
        self.ca.issue("a.example").write(cert_dir, "a.example.pem")
        _, _, app_port = start_app(self, "a")
        site = start_proxy(self, (ServerConfig("127.0.0.1", app_port),))
        port = listen_tls(self, site, self.key_path, self.cert_path, cert_dir)
        return self.assertFailure(tls_get(self, port, "c.example", self.ca), Exception)


class HTTP2Tests(TLSTestCase):
    """
    HTTP/2 to clients, negotiated by ALPN, through to HTTP/1.1 app servers.
    """

    @inlineCallbacks
    def _proxy(self, cert_dir: str = "") -> Any:
        self.app_a, _, port_a = start_app(self, "3000")
        self.app_b, _, port_b = start_app(self, "3001")
        site = start_proxy(
            self, (ServerConfig("127.0.0.1", port_a), ServerConfig("127.0.0.1", port_b))
        )
        port = listen_tls(self, site, self.key_path, self.cert_path, cert_dir)
        client = yield h2_connect(self, port, "localhost", self.ca)
        return client

    @inlineCallbacks
    def test_negotiated(self) -> Any:
        """
        ALPN picks h2, and a request goes through with
        C{X-Forwarded-Proto: https}.
        """
        client = yield self._proxy()
        response = yield client.request(b"GET", b"/")
        self.assertEqual(client.negotiated, b"h2")
        self.assertEqual((response["status"], response["body"]), (200, b"PORT 3000"))
        self.assertEqual(self.app_a.requests[0].headers[b"x-forwarded-proto"], [b"https"])

    @inlineCallbacks
    def test_concurrent_streams(self) -> Any:
        """
        Fifty streams at once on one connection are all answered, taking
        turns between the app servers.
        """
        client = yield self._proxy()
        responses = yield gatherResults([client.request(b"GET", b"/") for _ in range(50)])
        bodies = sorted(r["body"] for r in responses)
        self.assertEqual(bodies, [b"PORT 3000"] * 25 + [b"PORT 3001"] * 25)

    @inlineCallbacks
    def test_large_response(self) -> Any:
        """
        A 5 MB answer streams through whole, with h2 flow control.
        """
        client = yield self._proxy()
        size = 5 * 1024 * 1024
        response = yield client.request(b"GET", b"/big/%d" % size)
        self.assertEqual(response["status"], 200)
        self.assertEqual(hashlib.sha256(response["body"]).hexdigest(), pattern_digest(size))

    @inlineCallbacks
    def test_large_upload(self) -> Any:
        """
        A 2 MB request body reaches the app server whole (echoed back).
        """
        client = yield self._proxy()
        body = bytes(range(256)) * (8 * 1024)
        response = yield client.request(b"POST", b"/echo", body)
        self.assertEqual(response["status"], 200, response)
        self.assertEqual(len(response["body"]), len(body))
        self.assertEqual(response["body"], body)

    @inlineCallbacks
    def test_sni_keeps_h2(self) -> Any:
        """
        A certificate chosen by SNI still negotiates h2.
        """
        import os

        cert_dir = self.dir + "/certs"
        os.makedirs(cert_dir)
        self.ca.issue("a.example").write(cert_dir, "a.example.pem")
        _, _, app_port = start_app(self, "a")
        site = start_proxy(self, (ServerConfig("127.0.0.1", app_port),))
        port = listen_tls(self, site, self.key_path, self.cert_path, cert_dir)
        client = yield h2_connect(self, port, "a.example", self.ca)
        response = yield client.request(b"GET", b"/", authority=b"a.example")
        self.assertEqual(client.negotiated, b"h2")
        self.assertEqual(response["status"], 200)


class RedirectTests(TLSTestCase):
    """
    C{--redirect-https}: plain listeners answer 308 to the https URL.
    """

    @inlineCallbacks
    def test_redirect(self) -> Any:
        """
        A plain request gets 308 to the same target on https, port
        included; the app server sees nothing.
        """
        app, _, app_port = start_app(self, "a")
        site = start_proxy(self, (ServerConfig("127.0.0.1", app_port),), redirect_https=8443)
        response = yield get(listen(self, site), b"/x?y=1")
        self.assertEqual(response.status, 308)
        self.assertEqual(response.header(b"location"), [b"https://test.example:8443/x?y=1"])
        self.assertEqual(app.requests, [])

    @inlineCallbacks
    def test_redirect_443_with_body(self) -> Any:
        """
        On port 443 the URL has no port; a request body is read and
        dropped, and the connection stays usable.
        """
        app, _, app_port = start_app(self, "a")
        site = start_proxy(self, (ServerConfig("127.0.0.1", app_port),), redirect_https=443)
        payload = (
            b"POST /form HTTP/1.1\r\nHost: shop.example:80\r\nContent-Length: 5\r\n\r\nhello"
            b"GET /next HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n"
        )
        _, done = raw_request(listen(self, site), payload)
        first, second = parse_responses((yield done))
        self.assertEqual(first.header(b"location"), [b"https://shop.example/form"])
        self.assertEqual(second.header(b"location"), [b"https://shop.example/next"])
        self.assertEqual(app.requests, [])

    @inlineCallbacks
    def test_tls_not_redirected(self) -> Any:
        """
        Requests on TLS listeners are proxied as usual.
        """
        _, _, app_port = start_app(self, "a")
        site = start_proxy(self, (ServerConfig("127.0.0.1", app_port),), redirect_https=443)
        port = listen_tls(self, site, self.key_path, self.cert_path)
        response = yield tls_get(self, port, "localhost", self.ca)
        self.assertEqual((response.status, response.body), (200, b"PORT a"))


class OptionsTests(SynchronousTestCase):
    """
    The TLS command-line options and their checks.
    """

    def setUp(self) -> None:
        import os
        import tempfile

        self.dir = tempfile.mkdtemp()
        self.addCleanup(__import__("shutil").rmtree, self.dir)
        self.ca = CA()
        self.ca_path = self.ca.write(self.dir)
        self.client_path = self.ca.issue("lbproxy", client=True).write(self.dir, "client.pem")
        self.cert_dir = os.path.join(self.dir, "certs")
        os.makedirs(self.cert_dir)
        self.ca.issue("a.example").write(self.cert_dir, "a.example.pem")

    def test_options(self) -> None:
        """
        Every TLS option lands in the L{Config}.
        """
        options = Options()
        options.parseOptions(
            [
                "--upstream", "https://app.example:8443",
                "--upstream-ca", self.ca_path,
                "--upstream-client-cert", self.client_path,
                "--tls-cert-dir", self.cert_dir,
                "--redirect-https", "443",
                "--hsts", "600",
            ]
        )  # fmt: skip
        config = options.config
        self.assertEqual(config.pools[0].servers[0].scheme, "https")
        self.assertEqual(
            (config.upstream_ca, config.upstream_client_cert, config.tls_cert_dir),
            (self.ca_path, self.client_path, self.cert_dir),
        )
        self.assertEqual((config.redirect_https, config.hsts), (443, 600))

    def test_bad_ca_file(self) -> None:
        """
        An unreadable or non-PEM CA file is a usage error naming it.
        """
        options = Options()
        error = self.assertRaises(
            usage.UsageError,
            options.parseOptions,
            ["--upstream", "https://a:1", "--upstream-ca", self.cert_dir + "/a.example.pem.x"],
        )
        self.assertIn("upstream CA", str(error))

    def test_client_cert_without_key(self) -> None:
        """
        A client certificate file without its key is refused.
        """
        options = Options()
        error = self.assertRaises(
            usage.UsageError,
            options.parseOptions,
            ["--upstream", "https://a:1", "--upstream-client-cert", self.ca_path],
        )
        self.assertIn("no PEM private key", str(error))

    def test_insecure_and_ca(self) -> None:
        """
        C{--upstream-insecure} with C{--upstream-ca} contradict.
        """
        self.assertRaises(
            ConfigError,
            Config,
            pools=(PoolConfig("p", (ServerConfig("a", 1, scheme="https"),)),),
            upstream_ca=self.ca_path,
            upstream_insecure=True,
        )

    def test_empty_cert_dir(self) -> None:
        """
        A certificate directory without .pem files is refused.
        """
        import os

        empty = os.path.join(self.dir, "empty")
        os.makedirs(empty)
        options = Options()
        error = self.assertRaises(
            usage.UsageError,
            options.parseOptions,
            ["--upstream", "a:1", "--tls-cert-dir", empty],
        )
        self.assertIn("no .pem files", str(error))
