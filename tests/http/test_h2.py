"""
HTTP/2 requests through lbproxy's gate (L{lbproxy.http.h2}, L{lbproxy.http.h2gate}),
sent by a real h2 client that validates nothing itself, over TLS with ALPN,
to a real lbproxy on loopback with a recording app server behind it.

Each malformed case checks four things: the client's stream is refused (a
4xx answer, or RST_STREAM with the code RFC 9113 gives), no byte of it
reached the app server, nothing was logged as a failure, and the same
HTTP/2 connection still serves the next request (a stream error, not a
connection error).
"""

from __future__ import annotations

import os
from typing import Any

import httptools
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    InformationalResponseReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from lbproxy.config.model import Config, PoolConfig, ServerConfig
from lbproxy.http.servertls import server_endpoint
from lbproxy.tap import build_site
from tests.certs import CA
from tests.support import get

Header = tuple[bytes, bytes]

#: The path of the well-formed request sent after each case.
_AFTER = b"/after"


class RecordingApp(Protocol):
    """
    An app server connection that records every byte and every complete
    request (parsed by llhttp).  It answers C{200 ok}, or, for a target
    starting with C{/cut}, the head and part of a 100-byte body before
    closing the connection.
    """

    def __init__(self, owner: Recorder) -> None:
        self.owner = owner
        self.raw = b""
        self.requests: list[dict[str, Any]] = []
        self.partial: dict[str, Any] = {}
        self.parser = httptools.HttpRequestParser(self)
        self.broken = False

    def connectionMade(self) -> None:
        self.owner.connections.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.raw += data
        waiters, self.owner.data_waiters = self.owner.data_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        if self.broken:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.broken = True
            self.transport.loseConnection()

    def on_message_begin(self) -> None:
        self.partial = {"url": b"", "headers": [], "body": b""}

    def on_url(self, url: bytes) -> None:
        self.partial["url"] += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.partial["headers"].append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self.partial["body"] += body

    def on_message_complete(self) -> None:
        self.partial["method"] = self.parser.get_method()
        request, self.partial = self.partial, {}
        self.requests.append(request)
        if request["url"].startswith(b"/cut"):
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
            self.transport.loseConnection()
        else:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


class Recorder:
    """
    What the app server saw, over all its connections.
    """

    def __init__(self) -> None:
        self.connections: list[RecordingApp] = []
        self.data_waiters: list[Deferred[None]] = []

    def requests(self) -> list[dict[str, Any]]:
        """
        The complete requests, in order of arrival per connection.
        """
        return [r for connection in self.connections for r in connection.requests]

    def raw(self) -> bytes:
        """
        Every byte received, over all connections.
        """
        return b"".join(connection.raw for connection in self.connections)

    def clear(self) -> None:
        """
        Forget what was received so far (connections stay known).
        """
        for connection in self.connections:
            connection.raw = b""
            connection.requests = []

    def data_arrived(self) -> Deferred[None]:
        """
        Fires when the app server next receives bytes.
        """
        waiter: Deferred[None] = Deferred()
        self.data_waiters.append(waiter)
        return waiter


class Outcome:
    """
    How the server ended one stream.

    @ivar status: the response status, if a response came.
    @ivar headers: the response headers.
    @ivar body: the response body received.
    @ivar ended: the response ended cleanly (END_STREAM).
    @ivar reset: the RST_STREAM error code, if the server reset the stream.
    @ivar goaway: the GOAWAY error code, if the connection was ended.
    """

    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: list[Header] = []
        self.body = b""
        self.ended = False
        self.reset: int | None = None
        self.goaway: int | None = None
        self.done: Deferred[Outcome] = Deferred()

    def finish(self) -> None:
        if not self.done.called:
            self.done.callback(self)

    def __repr__(self) -> str:
        return (
            f"<Outcome status={self.status} ended={self.ended} reset={self.reset} "
            f"goaway={self.goaway} body={self.body[:80]!r}>"
        )


@implementer(IHandshakeListener)
class RawH2Client(Protocol):
    """
    An HTTP/2 client that sends what it is told, valid or not: C{h2} with
    every outbound check and normalisation off.
    """

    def __init__(self) -> None:
        self.conn = H2Connection(
            H2Configuration(
                client_side=True,
                header_encoding=None,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
                validate_inbound_headers=False,
            )
        )
        self.negotiated: bytes | None = None
        self.outcomes: dict[int, Outcome] = {}
        self.closed: Deferred[None] = Deferred()
        self.goaway: int | None = None

    def connectionMade(self) -> None:
        self.conn.initiate_connection()
        self.flush()

    def handshakeCompleted(self) -> None:
        self.negotiated = self.transport.negotiatedProtocol

    def headers(self, headers: list[Header], end_stream: bool = True) -> int:
        """
        Open a stream with C{headers} as they are; returns its id.
        """
        stream = self.conn.get_next_available_stream_id()
        self.outcomes[stream] = Outcome()
        self.conn.send_headers(stream, headers, end_stream=end_stream)
        self.flush()
        return stream

    def data(self, stream: int, data: bytes, end_stream: bool = False, flush: bool = True) -> None:
        """
        Send DATA on C{stream}.
        """
        self.conn.send_data(stream, data, end_stream=end_stream)
        if flush:
            self.flush()

    def trailers(self, stream: int, headers: list[Header]) -> None:
        """
        Send trailers (a HEADERS frame with END_STREAM) on C{stream}.
        """
        self.conn.send_headers(stream, headers, end_stream=True)
        self.flush()

    def outcome(self, stream: int) -> Deferred[Outcome]:
        """
        Fires when the server has ended or reset C{stream}.
        """
        return self.outcomes[stream].done

    def get(self, path: bytes = _AFTER) -> Deferred[Outcome]:
        """
        A well-formed GET on a new stream.
        """
        return self.outcome(self.headers(request(b"GET", path)))

    def dataReceived(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            outcome = self.outcomes.get(getattr(event, "stream_id", 0))
            if isinstance(event, ResponseReceived) and outcome is not None:
                outcome.headers = event.headers
                outcome.status = int(dict(event.headers)[b":status"])
            elif isinstance(event, InformationalResponseReceived):
                pass
            elif isinstance(event, DataReceived) and outcome is not None:
                outcome.body += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, TrailersReceived):
                pass
            elif isinstance(event, StreamEnded) and outcome is not None:
                outcome.ended = True
                outcome.finish()
            elif isinstance(event, StreamReset) and outcome is not None:
                outcome.reset = event.error_code
                outcome.finish()
            elif isinstance(event, ConnectionTerminated):
                self.goaway = event.error_code
                for each in self.outcomes.values():
                    each.goaway = event.error_code
                    each.finish()
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.transport.write(data)

    def connectionLost(self, reason: Failure) -> None:
        for outcome in self.outcomes.values():
            outcome.finish()
        self.closed.callback(None)


def request(
    method: bytes = b"GET",
    path: bytes = b"/",
    authority: bytes | None = b"localhost",
    extra: list[Header] | None = None,
    scheme: bytes = b"https",
) -> list[Header]:
    """
    A request head: the four pseudo-header fields, then C{extra}.
    """
    headers = [(b":method", method), (b":path", path), (b":scheme", scheme)]
    if authority is not None:
        headers.append((b":authority", authority))
    return headers + (extra or [])


class HTTP2TestCase(TestCase):
    """
    lbproxy on a TLS listener over one recording app server, and log events
    collected to look for failures.
    """

    timeout = 20
    body_timeout = 60.0
    read_timeout = 60.0

    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        directory = self.mktemp()
        os.makedirs(directory)
        self.ca = CA()
        key, cert = self.ca.issue("localhost", "127.0.0.1").write_split(directory, "server")
        self.recorder = Recorder()
        app = reactor.listenTCP(
            0, Factory.forProtocol(lambda: RecordingApp(self.recorder)), interface="127.0.0.1"
        )
        self.addCleanup(app.stopListening)
        self.addCleanup(self._close_app_connections)
        config = Config(
            pools=(PoolConfig("default", (ServerConfig("127.0.0.1", app.getHost().port),)),),
            access_log="off",
            client_body_timeout=self.body_timeout,
            read_timeout=self.read_timeout,
        )
        self.site, client = build_site(config, reactor)
        self.addCleanup(client.close_idle)
        description = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
        port = server_endpoint(reactor, description, None).listen(self.site).result
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port
        # A plain listener on the same site, for HTTP/1.1 clients.
        plain = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.addCleanup(plain.stopListening)
        self.plain_port = plain.getHost().port

    def _close_app_connections(self) -> None:
        for connection in self.recorder.connections:
            connection.transport.abortConnection()

    @inlineCallbacks
    def connect(self) -> Any:
        """
        A L{RawH2Client} connected by TLS with ALPN h2; closed on cleanup.
        """
        endpoint = wrapClientTLS(
            optionsForClientTLS(
                "localhost", trustRoot=self.ca.trust_root(), acceptableProtocols=[b"h2"]
            ),
            TCP4ClientEndpoint(reactor, "127.0.0.1", self.port),
        )
        client = yield endpoint.connect(Factory.forProtocol(RawH2Client))

        def close() -> Deferred[None]:
            client.transport.loseConnection()
            return client.closed

        self.addCleanup(close)
        return client

    def failures(self) -> list[str]:
        """
        Every logged event that carries a failure, or says a traceback or
        an unhandled error happened.
        """
        found = []
        for event in self.events:
            text = formatEvent(event)
            if (
                "log_failure" in event
                or "Traceback" in text
                or "Unhandled" in text
                or event.get("isError")
            ):
                failure = event.get("log_failure")
                found.append(text + ("\n" + failure.getTraceback() if failure else ""))
        return found

    @inlineCallbacks
    def refused(
        self,
        client: RawH2Client,
        stream: int,
        status: int | None = None,
        reset: int | None = None,
    ) -> Any:
        """
        Check that C{stream} was refused with C{status} (an answer with
        END_STREAM) or with a RST_STREAM of code C{reset}, that the
        connection still serves a good request, that no byte of the
        refused request reached the app server, and that nothing was
        logged as a failure.
        """
        outcome = yield client.outcome(stream)
        self.assertIsNone(outcome.goaway, f"connection error instead of a stream error: {outcome}")
        if status is not None:
            self.assertEqual(outcome.status, status, outcome)
            self.assertTrue(outcome.ended, outcome)
            self.assertIn(b"%d " % status, outcome.body)
        if reset is not None:
            self.assertEqual(outcome.reset, reset, outcome)
            self.assertIsNone(outcome.status, outcome)
        after = yield client.get()
        self.assertEqual((after.status, after.body), (200, b"ok"), after)
        requests = self.recorder.requests()
        self.assertEqual([r["url"] for r in requests], [_AFTER], self.recorder.raw())
        self.assertTrue(self.recorder.raw().startswith(b"GET " + _AFTER), self.recorder.raw())
        self.assertEqual(self.failures(), [])
        return outcome

    @inlineCallbacks
    def check_refused(
        self, headers: list[Header], status: int | None = None, reset: int | None = None
    ) -> Any:
        """
        Send C{headers} (END_STREAM on HEADERS) and check it is refused as
        L{refused} says.
        """
        client = yield self.connect()
        stream = client.headers(headers)
        outcome = yield self.refused(client, stream, status, reset)
        return outcome

    @inlineCallbacks
    def check_forwarded(self, headers: list[Header]) -> Any:
        """
        Send C{headers} (END_STREAM on HEADERS); it gets the app server's
        200, and the request the app server saw is returned.
        """
        client = yield self.connect()
        outcome = yield client.outcome(client.headers(headers))
        self.assertEqual((outcome.status, outcome.body, outcome.ended), (200, b"ok", True), outcome)
        self.assertEqual(self.failures(), [])
        (seen,) = self.recorder.requests()
        return seen


_PROTOCOL_ERROR = ErrorCodes.PROTOCOL_ERROR


class RequestTargetTests(HTTP2TestCase):
    """
    C{:method} and C{:path} become the request line upstream: each must be
    a token and an origin-form target, or a request line is injected.
    """

    def test_path_with_space(self) -> Any:
        """
        C{:path} C{/a /SMUGGLED}: 400.
        """
        return self.check_refused(request(path=b"/a /SMUGGLED"), 400)

    def test_path_with_version(self) -> Any:
        """
        C{:path} C{/a HTTP/1.0}: 400.
        """
        return self.check_refused(request(path=b"/a HTTP/1.0"), 400)

    def test_method_with_space(self) -> Any:
        """
        C{:method} C{GET /SMUGGLED}: 400.
        """
        return self.check_refused(request(method=b"GET /SMUGGLED", path=b"/a"), 400)

    def test_path_with_tab(self) -> Any:
        """
        A tab in C{:path}: 400.
        """
        return self.check_refused(request(path=b"/a\tb"), 400)

    def test_method_not_token(self) -> Any:
        """
        C{:method} C{G(E)T}: 400.
        """
        return self.check_refused(request(method=b"G(E)T"), 400)

    def test_path_without_slash(self) -> Any:
        """
        C{:path} C{a}: 400.
        """
        return self.check_refused(request(path=b"a"), 400)

    def test_path_absolute(self) -> Any:
        """
        An absolute C{:path} (C{http://evil.example/x}): 400, since an
        HTTP/2 request names its authority in C{:authority}.
        """
        return self.check_refused(request(path=b"http://evil.example/x"), 400)

    def test_path_with_fragment(self) -> Any:
        """
        C{#} in C{:path}: 400.
        """
        return self.check_refused(request(path=b"/a#b"), 400)

    def test_path_empty(self) -> Any:
        """
        An empty C{:path}: 400.
        """
        return self.check_refused(request(path=b""), 400)

    def test_asterisk_get(self) -> Any:
        """
        C{*} is the target of C{OPTIONS} only: 400 for C{GET}.
        """
        return self.check_refused(request(path=b"*"), 400)

    @inlineCallbacks
    def test_asterisk_options(self) -> Any:
        """
        C{OPTIONS *} is forwarded as such.
        """
        seen = yield self.check_forwarded(request(b"OPTIONS", b"*"))
        self.assertEqual((seen["method"], seen["url"]), (b"OPTIONS", b"*"))

    def test_path_too_long(self) -> Any:
        """
        A C{:path} making a request line over C{--max-request-line}: 414.
        """
        return self.check_refused(request(path=b"/" + b"a" * 8200), 414)

    def test_connect(self) -> Any:
        """
        C{CONNECT}: 501, lbproxy does not tunnel.
        """
        return self.check_refused(
            [(b":method", b"CONNECT"), (b":authority", b"evil.example:443")], 501
        )

    def test_scheme_other(self) -> Any:
        """
        A C{:scheme} other than http or https: 400.
        """
        return self.check_refused(request(scheme=b"ftp"), 400)

    def test_scheme_missing(self) -> Any:
        """
        No C{:scheme}: 400 (RFC 9113 section 8.3.1).
        """
        return self.check_refused([(b":method", b"GET"), (b":path", b"/")], 400)

    @inlineCallbacks
    def test_method_cr_lf(self) -> Any:
        """
        CR, LF or NUL in C{:method}: 400.
        """
        for bad in (b"GET\r\nX: y", b"GET\n", b"G\x00ET"):
            self.recorder.clear()
            yield self.check_refused(request(method=bad), 400)

    @inlineCallbacks
    def test_path_cr_lf(self) -> Any:
        """
        CR, LF or NUL in C{:path}: 400 (with old h2, CR LF there put a
        whole second request on the upstream connection).
        """
        for bad in (
            b"/a HTTP/1.1\r\nHost: x\r\n\r\nGET /SMUGGLED",
            b"/a\nb",
            b"/a\rb",
            b"/a\x00b",
        ):
            self.recorder.clear()
            yield self.check_refused(request(path=bad), 400)


class PseudoHeaderTests(HTTP2TestCase):
    """
    Pseudo-header fields: only the four of RFC 9113 section 8.3.1, once
    each, before every other field.
    """

    def test_unknown(self) -> Any:
        """
        An unknown pseudo-header field: 400.
        """
        return self.check_refused(request(extra=[(b":foo", b"bar")]), 400)

    def test_status_in_request(self) -> Any:
        """
        C{:status} in a request: 400.
        """
        return self.check_refused(
            [(b":method", b"GET"), (b":status", b"200"), (b":path", b"/"), (b":scheme", b"https")],
            400,
        )

    def test_protocol(self) -> Any:
        """
        C{:protocol} (extended CONNECT, not offered): 400.
        """
        return self.check_refused(request(extra=[(b":protocol", b"websocket")]), 400)

    def test_duplicate_path(self) -> Any:
        """
        Two C{:path} fields: 400.
        """
        return self.check_refused(request(extra=[(b":path", b"/other")]), 400)

    def test_after_regular(self) -> Any:
        """
        A pseudo-header field after a regular one: 400.
        """
        headers = [
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b"accept", b"*/*"),
            (b":path", b"/"),
            (b":authority", b"localhost"),
        ]
        return self.check_refused(headers, 400)


class AuthorityTests(HTTP2TestCase):
    """
    C{:authority} becomes the C{Host} upstream: one valid host[:port].
    """

    def test_invalid(self) -> Any:
        """
        C{:authority} C{evil.example/x?y z@w}: 400.
        """
        return self.check_refused(request(authority=b"evil.example/x?y z@w"), 400)

    def test_userinfo(self) -> Any:
        """
        Userinfo in C{:authority}: 400 (RFC 9113 section 8.3.1).
        """
        return self.check_refused(request(authority=b"user@localhost"), 400)

    def test_empty(self) -> Any:
        """
        An empty C{:authority}: 400.
        """
        return self.check_refused(request(authority=b""), 400)

    def test_missing(self) -> Any:
        """
        Neither C{:authority} nor C{host}: 400, as HTTP/1.1 without Host.
        """
        return self.check_refused(request(authority=None), 400)

    def test_different_host(self) -> Any:
        """
        C{:authority} and a different C{host}: 400 (RFC 9113 section 8.3.1).
        """
        return self.check_refused(request(extra=[(b"host", b"evil.example")]), 400)

    def test_two_hosts(self) -> Any:
        """
        Two C{host} fields: 400.
        """
        return self.check_refused(
            request(authority=None, extra=[(b"host", b"a.example"), (b"host", b"b.example")]), 400
        )

    @inlineCallbacks
    def test_same_host(self) -> Any:
        """
        C{:authority} and the same C{host}: merged into one C{Host}.
        """
        seen = yield self.check_forwarded(request(extra=[(b"host", b"localhost")]))
        self.assertEqual([v for n, v in seen["headers"] if n == b"host"], [b"localhost"])

    @inlineCallbacks
    def test_host_only(self) -> Any:
        """
        A C{host} field without C{:authority} is the C{Host}.
        """
        seen = yield self.check_forwarded(request(authority=None, extra=[(b"host", b"a.example")]))
        self.assertEqual([v for n, v in seen["headers"] if n == b"host"], [b"a.example"])


class FieldTests(HTTP2TestCase):
    """
    Header fields: lowercase token names, values without CR, LF, NUL or
    other controls, no connection-specific fields, within the limits.
    """

    def test_name_not_token(self) -> Any:
        """
        A header name that is not a token: 400.
        """
        return self.check_refused(request(extra=[(b"x(y)", b"1")]), 400)

    def test_name_with_space(self) -> Any:
        """
        A space in a header name: 400.
        """
        return self.check_refused(request(extra=[(b"x y", b"1")]), 400)

    def test_name_uppercase(self) -> Any:
        """
        An uppercase header name: 400 (RFC 9113 section 8.2.1).
        """
        return self.check_refused(request(extra=[(b"X-Upper", b"1")]), 400)

    def test_name_empty(self) -> Any:
        """
        An empty header name: 400.
        """
        return self.check_refused(request(extra=[(b"", b"1")]), 400)

    @inlineCallbacks
    def test_value_cr_lf_nul(self) -> Any:
        """
        CR, LF, NUL or another control character in a value: 400.
        """
        for bad in (b"a\r\nGET /SMUGGLED HTTP/1.1", b"a\nb", b"a\rb", b"a\x00b", b"a\x7fb"):
            self.recorder.clear()
            yield self.check_refused(request(extra=[(b"x-test", bad)]), 400)

    def test_value_surrounding_space(self) -> Any:
        """
        A value starting or ending with whitespace: 400 (RFC 9113
        section 8.2.1).
        """
        return self.check_refused(request(extra=[(b"x-test", b" a")]), 400)

    @inlineCallbacks
    def test_connection_specific(self) -> Any:
        """
        Connection-specific fields (RFC 9113 section 8.2.2): 400 each.
        """
        for name, value in (
            (b"connection", b"close"),
            (b"keep-alive", b"timeout=5"),
            (b"proxy-connection", b"keep-alive"),
            (b"transfer-encoding", b"chunked"),
            (b"upgrade", b"websocket"),
            (b"te", b"gzip"),
        ):
            self.recorder.clear()
            yield self.check_refused(request(extra=[(name, value)]), 400)

    @inlineCallbacks
    def test_te_trailers(self) -> Any:
        """
        C{te: trailers} is allowed, and not forwarded (hop-by-hop).
        """
        seen = yield self.check_forwarded(request(extra=[(b"te", b"trailers")]))
        self.assertNotIn(b"te", [n for n, v in seen["headers"]])

    @inlineCallbacks
    def test_underscore_dropped(self) -> Any:
        """
        Header names with an underscore are dropped, as on HTTP/1.1.
        """
        seen = yield self.check_forwarded(
            request(extra=[(b"x_real_ip", b"1.2.3.4"), (b"x-kept", b"1")])
        )
        names = [n for n, v in seen["headers"]]
        self.assertNotIn(b"x_real_ip", names)
        self.assertIn(b"x-kept", names)

    @inlineCallbacks
    def test_cookies_joined(self) -> Any:
        """
        Cookie crumbs become one C{Cookie} upstream (RFC 9113 section
        8.2.3).
        """
        seen = yield self.check_forwarded(
            request(extra=[(b"cookie", b"a=1"), (b"cookie", b"b=2"), (b"cookie", b"c=3")])
        )
        self.assertEqual([v for n, v in seen["headers"] if n == b"cookie"], [b"a=1; b=2; c=3"])

    def test_many_headers(self) -> Any:
        """
        1,000 header fields: 431.
        """
        extra = [(b"x-h%d" % i, b"v") for i in range(1000)]
        return self.check_refused(request(extra=extra), 431)

    def test_huge_value(self) -> Any:
        """
        A 100 kB value: 431.
        """
        return self.check_refused(request(extra=[(b"x-big", b"v" * 100_000)]), 431)

    @inlineCallbacks
    def test_hpack_bomb(self) -> Any:
        """
        A header list far past the limits (over twice them) ends the
        connection with ENHANCE_YOUR_CALM, as h2 does with its own limit,
        without a traceback; nothing reaches the app server.
        """
        client = yield self.connect()
        stream = client.headers(request(extra=[(b"x-big", b"v" * 200_000)]))
        outcome = yield client.outcome(stream)
        self.assertEqual(outcome.goaway, ErrorCodes.ENHANCE_YOUR_CALM, outcome)
        self.assertEqual(self.recorder.raw(), b"")
        self.assertEqual(self.failures(), [])

    def test_long_line(self) -> Any:
        """
        A field over C{--max-header-line}: 431.
        """
        return self.check_refused(request(extra=[(b"x-big", b"v" * 9000)]), 431)


class BodyTests(HTTP2TestCase):
    """
    Request bodies: the DATA received must match C{content-length}; a
    mismatch resets the stream (RFC 9113 section 8.1.1) and never reaches
    the app server as a body that will not come.
    """

    def test_length_without_data(self) -> Any:
        """
        C{content-length: 5} with END_STREAM on HEADERS: refused, 400.
        """
        return self.check_refused(
            request(b"POST", b"/post", extra=[(b"content-length", b"5")]), 400
        )

    @inlineCallbacks
    def test_short_then_trailers_with_length(self) -> Any:
        """
        3 bytes of DATA then trailers carrying C{content-length: 5}:
        RST_STREAM PROTOCOL_ERROR.
        """
        client = yield self.connect()
        stream = client.conn.get_next_available_stream_id()
        client.outcomes[stream] = Outcome()
        client.conn.send_headers(
            stream, request(b"POST", b"/post", extra=[(b"content-length", b"5")])
        )
        client.data(stream, b"abc", flush=False)
        client.trailers(stream, [(b"content-length", b"5")])
        yield self.refused(client, stream, reset=_PROTOCOL_ERROR)

    @inlineCallbacks
    def test_short_then_trailers(self) -> Any:
        """
        3 bytes of DATA then harmless trailers, with C{content-length: 5}:
        RST_STREAM PROTOCOL_ERROR.
        """
        client = yield self.connect()
        stream = client.conn.get_next_available_stream_id()
        client.outcomes[stream] = Outcome()
        client.conn.send_headers(
            stream, request(b"POST", b"/post", extra=[(b"content-length", b"5")])
        )
        client.data(stream, b"abc", flush=False)
        client.trailers(stream, [(b"x-checksum", b"1")])
        yield self.refused(client, stream, reset=_PROTOCOL_ERROR)

    @inlineCallbacks
    def test_short(self) -> Any:
        """
        3 bytes of DATA and END_STREAM, with C{content-length: 5}:
        RST_STREAM PROTOCOL_ERROR.
        """
        client = yield self.connect()
        stream = client.conn.get_next_available_stream_id()
        client.outcomes[stream] = Outcome()
        client.conn.send_headers(
            stream, request(b"POST", b"/post", extra=[(b"content-length", b"5")])
        )
        client.data(stream, b"abc", end_stream=True)
        yield self.refused(client, stream, reset=_PROTOCOL_ERROR)

    @inlineCallbacks
    def test_long(self) -> Any:
        """
        6 bytes of DATA with C{content-length: 5}: RST_STREAM
        PROTOCOL_ERROR.
        """
        client = yield self.connect()
        stream = client.conn.get_next_available_stream_id()
        client.outcomes[stream] = Outcome()
        client.conn.send_headers(
            stream, request(b"POST", b"/post", extra=[(b"content-length", b"5")])
        )
        client.data(stream, b"abcdef", end_stream=True)
        yield self.refused(client, stream, reset=_PROTOCOL_ERROR)

    @inlineCallbacks
    def test_long_in_a_later_read(self) -> Any:
        """
        A body that outgrows its C{content-length} in a later read, once
        the request is on its way upstream: only that stream is reset
        (PROTOCOL_ERROR), its upstream request is abandoned, and the
        connection serves the next request.  (h2 4.3 and later need the
        reset event built with its stream id; without it the whole
        connection failed.)
        """
        client = yield self.connect()
        stream = client.conn.get_next_available_stream_id()
        client.outcomes[stream] = Outcome()
        client.conn.send_headers(
            stream, request(b"POST", b"/post", extra=[(b"content-length", b"5")])
        )
        arrived = self.recorder.data_arrived()
        client.data(stream, b"abc")
        yield arrived
        client.data(stream, b"def", end_stream=True)
        outcome = yield client.outcome(stream)
        self.assertIsNone(outcome.goaway, outcome)
        self.assertEqual(outcome.reset, _PROTOCOL_ERROR, outcome)
        after = yield client.get()
        self.assertEqual((after.status, after.body), (200, b"ok"), after)
        self.assertEqual(self.failures(), [])

    @inlineCallbacks
    def test_trailers_pseudo(self) -> Any:
        """
        Trailers with a pseudo-header field: RST_STREAM PROTOCOL_ERROR.
        """
        client = yield self.connect()
        stream = client.conn.get_next_available_stream_id()
        client.outcomes[stream] = Outcome()
        client.conn.send_headers(
            stream, request(b"POST", b"/post", extra=[(b"content-length", b"5")])
        )
        client.data(stream, b"abcde", flush=False)
        client.trailers(stream, [(b":path", b"/SMUGGLED")])
        yield self.refused(client, stream, reset=_PROTOCOL_ERROR)

    def test_conflicting_lengths(self) -> Any:
        """
        Two different C{content-length} fields: 400.
        """
        return self.check_refused(
            request(
                b"POST", b"/post", extra=[(b"content-length", b"5"), (b"content-length", b"6")]
            ),
            400,
        )

    def test_equal_lengths(self) -> Any:
        """
        Two equal C{content-length} fields: 400, as on HTTP/1.1.
        """
        return self.check_refused(
            request(
                b"POST", b"/post", extra=[(b"content-length", b"0"), (b"content-length", b"0")]
            ),
            400,
        )

    @inlineCallbacks
    def test_invalid_length(self) -> Any:
        """
        A C{content-length} that is not plain digits: 400.
        """
        for bad in (b"+5", b" 5", b"5 ", b"0x5", b"-1", b"", b"5,5", b"99999999999999999999"):
            self.recorder.clear()
            yield self.check_refused(
                request(b"POST", b"/post", extra=[(b"content-length", bad)]), 400
            )

    @inlineCallbacks
    def test_body_forwarded(self) -> Any:
        """
        A well-formed body reaches the app server with its length.
        """
        client = yield self.connect()
        stream = client.conn.get_next_available_stream_id()
        client.outcomes[stream] = Outcome()
        client.conn.send_headers(
            stream, request(b"POST", b"/post", extra=[(b"content-length", b"5")])
        )
        client.data(stream, b"hello", end_stream=True)
        outcome = yield client.outcome(stream)
        self.assertEqual((outcome.status, outcome.body), (200, b"ok"), outcome)
        (seen,) = self.recorder.requests()
        self.assertEqual(seen["body"], b"hello")
        self.assertIn((b"content-length", b"5"), seen["headers"])
        self.assertEqual(self.failures(), [])

    @inlineCallbacks
    def test_get_with_data(self) -> Any:
        """
        A GET with DATA and no C{content-length} (RFC 9113 allows a body
        without one): its body goes upstream chunked, as a POST's would,
        instead of a traceback dropping the connection.
        """
        client = yield self.connect()
        stream = client.headers(request(b"GET", b"/get"), end_stream=False)
        client.data(stream, b"hello", end_stream=True)
        outcome = yield client.outcome(stream)
        self.assertEqual((outcome.status, outcome.body), (200, b"ok"), outcome)
        (seen,) = self.recorder.requests()
        self.assertEqual((seen["method"], seen["body"]), (b"GET", b"hello"))
        self.assertIn((b"transfer-encoding", b"chunked"), seen["headers"])
        after = yield client.get()
        self.assertEqual(after.status, 200)
        self.assertEqual(self.failures(), [])

    @inlineCallbacks
    def test_post_empty(self) -> Any:
        """
        A POST with END_STREAM on HEADERS and no C{content-length} goes
        upstream with C{Content-Length: 0}.
        """
        seen = yield self.check_forwarded(request(b"POST", b"/post"))
        self.assertIn((b"content-length", b"0"), seen["headers"])
        self.assertNotIn(b"transfer-encoding", [n for n, v in seen["headers"]])


class AnswerCutTests(HTTP2TestCase):
    """
    An app server that closes in the middle of its answer's body.
    """

    @inlineCallbacks
    def test_cut_resets_stream(self) -> Any:
        """
        The h2 stream is reset (INTERNAL_ERROR), never ended as if the
        truncated body were complete, and the connection goes on.
        """
        client = yield self.connect()
        outcome = yield client.outcome(client.headers(request(path=b"/cut")))
        self.assertEqual(outcome.status, 200, outcome)
        self.assertFalse(outcome.ended, outcome)
        self.assertEqual(outcome.reset, ErrorCodes.INTERNAL_ERROR, outcome)
        after = yield client.get()
        self.assertEqual(after.status, 200)
        self.flushLoggedErrors()
        self.assertEqual(self.failures(), [])


class StalledBodyTests(HTTP2TestCase):
    """
    A request body that never comes is the client's failure: 408, and the
    app server stays in rotation (C{--max-fails 1}).
    """

    body_timeout = 0.5

    @inlineCallbacks
    def test_length_without_data_keeps_server(self) -> Any:
        """
        After a POST with C{content-length: 5} and END_STREAM on HEADERS,
        another client still gets 200 from the only server.
        """
        client = yield self.connect()
        yield self.refused(
            client,
            client.headers(request(b"POST", b"/post", extra=[(b"content-length", b"5")])),
            400,
        )
        response = yield get(self.plain_port, b"/plain")
        self.assertEqual(response.status, 200)

    @inlineCallbacks
    def test_body_never_comes(self) -> Any:
        """
        A POST whose body never comes gets 408 after the body timeout;
        nothing of it reached the app server, and another client gets
        200 from it.
        """
        client = yield self.connect()
        stream = client.headers(
            request(b"POST", b"/post", extra=[(b"content-length", b"5")]), end_stream=False
        )
        yield self.refused(client, stream, 408)
        response = yield get(self.plain_port, b"/plain")
        self.assertEqual(response.status, 200)

    @inlineCallbacks
    def test_body_stalls(self) -> Any:
        """
        A POST whose body stops after 3 of 5 bytes gets 408 after the body
        timeout; the app server, which got the head, is not counted as
        failed: another client gets 200 from it.
        """
        client = yield self.connect()
        stream = client.headers(
            request(b"POST", b"/stall", extra=[(b"content-length", b"5")]), end_stream=False
        )
        client.data(stream, b"abc")
        outcome = yield client.outcome(stream)
        self.assertEqual(outcome.status, 408, outcome)
        self.assertEqual(self.recorder.requests(), [])
        response = yield get(self.plain_port, b"/plain")
        self.assertEqual(response.status, 200)
        after = yield client.get()
        self.assertEqual(after.status, 200)
        self.assertEqual(self.failures(), [])
