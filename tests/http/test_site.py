"""
Tests for L{lbproxy.http.site}: the access log line and the client channel
(its framing gate, limits and timeouts, driven by hand on a L{Clock}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import ClientCreator, Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from lbproxy.http.site import ProxyRequest, ProxySite, combined_log_line
from lbproxy.tools.corpus import CASES
from tests.support import get, listen, parse_responses, raw_request, start_app, start_proxy


class _FinishedRequest:
    """
    The parts of a finished request an access line reads.
    """

    def __init__(
        self, uri: bytes = b"/", headers: dict[bytes, bytes] | None = None, address: object = None
    ) -> None:
        self.method = b"GET"
        self.uri = uri
        self.clientproto = b"HTTP/1.1"
        self.code = 200
        self.sentLength = 9
        self.requestHeaders = Headers({k: [v] for k, v in (headers or {}).items()})
        self._address = address or IPv4Address("TCP", "10.0.0.7", 5555)

    def getClientAddress(self) -> object:
        return self._address


_TIME = "[25/Nov/2026:12:00:00 +0000]"
_PEER = IPv4Address("TCP", "10.0.0.5", 40000)


class CombinedLogLineTests(SynchronousTestCase):
    """
    L{combined_log_line} writes nginx's C{combined} format.
    """

    def test_plain(self) -> None:
        """
        Address unquoted, request line, status, bytes, referrer and agent
        quoted, as nginx writes them.
        """
        line = combined_log_line(
            _TIME,
            _FinishedRequest(headers={b"referer": b"http://r/", b"user-agent": b"curl/8"}),
        )
        self.assertEqual(
            line,
            '10.0.0.7 - - [25/Nov/2026:12:00:00 +0000] "GET / HTTP/1.1" 200 9 "http://r/" "curl/8"',
        )

    def test_missing_headers_are_dashes(self) -> None:
        """
        No Referer or User-Agent gives C{"-"} for each.
        """
        line = combined_log_line(_TIME, _FinishedRequest())
        self.assertTrue(line.endswith('200 9 "-" "-"'), line)

    def test_escapes(self) -> None:
        """
        Quotes, backslashes, control and non-ASCII bytes are written as
        C{\\xHH}, so a request cannot forge or break a log line.
        """
        line = combined_log_line(
            _TIME,
            _FinishedRequest(uri=b'/a"b\\c\n\xff', headers={b"user-agent": b'x" 200 1 "'}),
        )
        self.assertIn('"GET /a\\x22b\\x5Cc\\x0A\\xFF HTTP/1.1"', line)
        self.assertTrue(line.endswith('"x\\x22 200 1 \\x22"'), line)
        self.assertNotIn("\n", line)

    def test_unix_client(self) -> None:
        """
        A client on a UNIX socket is logged as C{-}.
        """
        line = combined_log_line(_TIME, _FinishedRequest(address=UNIXAddress(b"/run/lb.sock")))
        self.assertTrue(line.startswith("- - - ["), line)


class _Resource(Resource):
    """
    A leaf resource that keeps every request it renders, unanswered.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[ProxyRequest] = []

    def render(self, request: ProxyRequest) -> int:  # type: ignore[override]
        self.requests.append(request)
        return NOT_DONE_YET


class _Exchange:
    """
    Stands for a L{lbproxy.proxy.resource.ProxyExchange}: records being
    abandoned.
    """

    gone = False

    def client_gone(self) -> None:
        self.gone = True


class _HalfClosingTransport(StringTransport):
    """
    A transport that can close its write side, as TCP can.
    """

    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True


def _connect(
    site: ProxySite, transport: StringTransport | None = None
) -> tuple[Any, StringTransport]:
    protocol = site.buildProtocol(None)
    transport = transport or StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


class _ChannelTestCase(SynchronousTestCase):
    """
    A L{ProxySite} on a L{Clock} with a resource that records requests.
    """

    def site(self, **settings: Any) -> ProxySite:
        self.clock = Clock()
        self.resource = _Resource()
        settings.setdefault("access_log", "off")
        return ProxySite(self.resource, client_timeout=60.0, reactor=self.clock, **settings)

    def assertRefused(self, transport: StringTransport, status: int) -> None:
        responses = parse_responses(transport.value())
        self.assertEqual([r.status for r in responses], [status], transport.value())
        self.assertEqual(responses[0].header(b"connection"), [b"close"])
        self.assertTrue(transport.disconnecting or getattr(transport, "write_closed", False))


class ChannelGateTests(_ChannelTestCase):
    """
    L{ProxyChannel} passes every request head through the framing gate
    before C{twisted.web} sees it.
    """

    def test_valid_request_normalised(self) -> None:
        """
        A request that passes reaches the resource normalised: target in
        origin-form, Host from the absolute-form target, headers with
        underscores dropped.
        """
        protocol, transport = _connect(self.site())
        protocol.dataReceived(
            b"GET http://app.example/p?q=1 HTTP/1.1\r\nHost: other\r\nX_Forwarded_For: 1.2.3.4\r\n"
            b"X-A:  1 \r\n\r\n"
        )
        [request] = self.resource.requests
        self.assertEqual((request.method, request.uri), (b"GET", b"/p?q=1"))
        headers = request.requestHeaders
        self.assertEqual(headers.getRawHeaders(b"host"), [b"app.example"])
        self.assertEqual(headers.getRawHeaders(b"x-a"), [b"1"])
        self.assertFalse(headers.hasHeader(b"x_forwarded_for"))
        self.assertEqual(transport.value(), b"")

    def test_refused_head_never_proxied(self) -> None:
        """
        A refused head gets its status with C{Connection: close}, the
        connection closes, and the resource never sees the request.
        """
        protocol, transport = _connect(self.site())
        protocol.dataReceived(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        )
        self.assertRefused(transport, 400)
        self.assertEqual(self.resource.requests, [])

    def test_nothing_read_after_refusal(self) -> None:
        """
        After a refusal, later bytes (a valid request) are ignored.
        """
        protocol, transport = _connect(self.site())
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        protocol.dataReceived(b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertRefused(transport, 400)
        self.assertEqual(self.resource.requests, [])

    def test_bare_lf_refused_at_once(self) -> None:
        """
        A head with bare LF line endings is refused as soon as it arrives,
        without waiting for a CRLF.
        """
        protocol, transport = _connect(self.site())
        protocol.dataReceived(b"GET / HTTP/1.1\nHost: a\n\n")
        self.assertRefused(transport, 400)

    def test_long_request_line(self) -> None:
        """
        A request line over 8 kB is a 414 before its end arrives.
        """
        protocol, transport = _connect(self.site())
        protocol.dataReceived(b"GET /" + b"a" * 9000)
        self.assertRefused(transport, 414)

    def test_long_header_line(self) -> None:
        """
        A header line over 8 kB is a 431 before its end arrives.
        """
        protocol, transport = _connect(self.site())
        protocol.dataReceived(b"GET / HTTP/1.1\r\nX-A: " + b"a" * 9000)
        self.assertRefused(transport, 431)

    def test_limits_configurable(self) -> None:
        """
        The site's limits apply: 3 headers allowed, 4 are a 431.
        """
        protocol, transport = _connect(self.site(max_headers=3))
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 1\r\nC: 1\r\n\r\n")
        self.assertRefused(transport, 431)

    def test_bad_chunk_then_pipelined_request(self) -> None:
        """
        A bad chunk in a body already on its way upstream: 400, its exchange
        abandoned, and the request pipelined after it never proxied.
        """
        protocol, transport = _connect(self.site())
        protocol.dataReceived(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        [request] = self.resource.requests
        request.exchange = exchange = _Exchange()  # type: ignore[assignment]
        protocol.dataReceived(b"0x5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertRefused(transport, 400)
        self.assertTrue(exchange.gone)
        self.assertEqual(len(self.resource.requests), 1)

    def test_chunked_body_over_limit(self) -> None:
        """
        A chunked body growing past the maximum is a 413 and its exchange
        is abandoned.
        """
        protocol, transport = _connect(self.site(max_body_size=8))
        protocol.dataReceived(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        )
        [request] = self.resource.requests
        request.exchange = exchange = _Exchange()  # type: ignore[assignment]
        protocol.dataReceived(b"5\r\nworld\r\n0\r\n\r\n")
        self.assertRefused(transport, 413)
        self.assertTrue(exchange.gone)

    def test_length_over_limit(self) -> None:
        """
        A Content-Length over the maximum is a 413 before any proxying.
        """
        protocol, transport = _connect(self.site(max_body_size=8))
        protocol.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\n")
        self.assertRefused(transport, 413)
        self.assertEqual(self.resource.requests, [])

    def test_error_after_answer_started_aborts(self) -> None:
        """
        When the answer has begun (an early answer to a streaming upload),
        a framing error aborts the connection instead of writing a second
        status line.
        """
        protocol, transport = _connect(self.site())
        protocol.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        [request] = self.resource.requests
        request.write(b"early")
        written = transport.value()
        protocol.dataReceived(b"zz\r\n")
        self.assertTrue(transport.disconnected)
        self.assertEqual(transport.value(), written)

    def test_lingering_close(self) -> None:
        """
        On a transport that can half-close, a refusal sends the answer and
        a FIN, drops what the client still sends, and aborts after 5 s.
        """
        protocol, transport = _connect(self.site(), _HalfClosingTransport())
        protocol.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        self.assertRefused(transport, 400)
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(b"more body bytes")
        self.clock.advance(5)
        self.assertTrue(transport.disconnected)


class RefusalLogTests(_ChannelTestCase):
    """
    Refused requests are logged at most once a second per reason, with a
    count, however many connections they come on.
    """

    def test_scan(self) -> None:
        """
        1,000 bad requests in one second, each on its own connection: one
        line at once, one line with the count after the second, and no
        timer left once the site stops.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        site = self.site()
        for _ in range(1000):
            protocol, _ = _connect(site, StringTransport(peerAddress=_PEER))
            protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: 1\r\n\r\n")
            protocol.connectionLost(Failure(ConnectionDone()))
            self.clock.advance(0.0009)
        self.clock.advance(1.0 - self.clock.seconds())
        lines = [formatEvent(e) for e in events if "refused" in e.get("log_format", "")]
        detail = "400 Bad Request: invalid header name"
        self.assertEqual(
            lines,
            [
                f"refused a request from 10.0.0.5: {detail}",
                f"refused 999 more requests in the last 1 s: {detail} (last from 10.0.0.5)",
            ],
        )
        site.stopFactory()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ChannelTimeoutTests(_ChannelTestCase):
    """
    The header and body timeouts of L{ProxyChannel} (nginx's
    C{client_header_timeout} and C{client_body_timeout}).
    """

    def test_slowloris(self) -> None:
        """
        A client sending a head one byte a second gets 408 when the header
        timeout (2 s here) has passed since its first byte, not later.
        """
        protocol, transport = _connect(self.site(header_timeout=2.0))
        head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
        for i in range(2):
            protocol.dataReceived(head[i : i + 1])
            self.clock.advance(1)
        self.assertRefused(transport, 408)
        self.assertEqual(self.clock.seconds(), 2.0)

    def test_not_before_timeout(self) -> None:
        """
        A head completed just within the header timeout is served.
        """
        protocol, transport = _connect(self.site(header_timeout=2.0))
        protocol.dataReceived(b"GET / HTTP/1.1\r\n")
        self.clock.advance(1.9)
        protocol.dataReceived(b"Host: a\r\n\r\n")
        self.clock.advance(10)
        self.assertEqual(len(self.resource.requests), 1)
        self.assertEqual(transport.value(), b"")

    def test_counts_from_first_byte(self) -> None:
        """
        The header timeout starts at the first byte of a head, not at the
        connection: a keep-alive connection may wait (up to the idle
        timeout) before its request.
        """
        protocol, transport = _connect(self.site(header_timeout=2.0))
        self.clock.advance(30)
        protocol.dataReceived(b"GET / HTTP/1.1\r\n")
        self.clock.advance(1)
        protocol.dataReceived(b"Host: a\r\n\r\n")
        self.assertEqual(len(self.resource.requests), 1)
        self.assertEqual(transport.value(), b"")

    def test_each_request_has_its_own_window(self) -> None:
        """
        The second request on a connection gets a full header timeout of
        its own.
        """
        protocol, transport = _connect(self.site(header_timeout=2.0))
        protocol.dataReceived(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
        self.clock.advance(1.5)
        self.resource.requests[0].finish()
        protocol.dataReceived(b"GET /2 HTTP/1.1\r\n")
        self.clock.advance(1.5)
        protocol.dataReceived(b"Host: a\r\n\r\n")
        self.assertEqual([r.uri for r in self.resource.requests], [b"/1", b"/2"])
        self.assertNotIn(b"408", transport.value())

    def test_idle_timeout_between_requests(self) -> None:
        """
        Between requests the idle timeout closes the connection quietly,
        with no 408.
        """
        protocol, transport = _connect(self.site())
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.resource.requests[0].finish()
        answered = transport.value()
        self.clock.advance(59)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), answered)

    def test_idle_timeout_suspended_during_head(self) -> None:
        """
        A head in progress is governed by the header timeout alone, even
        when it is longer than the idle timeout.
        """
        protocol, transport = _connect(self.site(header_timeout=90.0))
        protocol.dataReceived(b"GET / HTTP/1.1\r\n")
        self.clock.advance(80)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(10)
        self.assertRefused(transport, 408)

    def test_body_stall(self) -> None:
        """
        A body that stalls for the body timeout gets 408 and its exchange
        is abandoned.
        """
        protocol, transport = _connect(self.site(body_timeout=2.0))
        protocol.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n12345")
        [request] = self.resource.requests
        request.exchange = exchange = _Exchange()  # type: ignore[assignment]
        self.clock.advance(1.9)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(0.1)
        self.assertRefused(transport, 408)
        self.assertTrue(exchange.gone)

    def test_body_progress(self) -> None:
        """
        The body timeout is between two reads: a slow but steady body is
        not cut.
        """
        protocol, transport = _connect(self.site(body_timeout=2.0))
        protocol.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n")
        for byte in b"12345":
            self.clock.advance(1.5)
            protocol.dataReceived(bytes([byte]))
        self.clock.advance(10)
        self.assertEqual(transport.value(), b"")
        self.assertTrue(self.resource.requests[0]._body_received)

    def test_paused_body(self) -> None:
        """
        While lbproxy holds the body back (the app server is not reading),
        the client is not at fault: past the body timeout the answer is a
        504, not a 408.
        """
        protocol, transport = _connect(self.site(body_timeout=2.0))
        protocol.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n12345")
        channel = protocol._channel
        channel.pause_body()
        self.clock.advance(2)
        self.assertRefused(transport, 504)

    def test_resumed_body_gets_full_timeout(self) -> None:
        """
        After lbproxy resumes reading, the client has the whole body timeout
        again.
        """
        protocol, transport = _connect(self.site(body_timeout=2.0))
        protocol.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n12345")
        channel = protocol._channel
        channel.pause_body()
        self.clock.advance(1.5)
        channel.resume_body()
        self.clock.advance(1.9)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(0.1)
        self.assertRefused(transport, 408)

    def test_configure_clients(self) -> None:
        """
        New limits and timeouts apply to connections made afterwards.
        """
        site = self.site()
        site.configure_clients(
            header_timeout=1.0,
            body_timeout=1.0,
            max_body_size=0,
            max_request_line=8192,
            max_header_line=8192,
            max_headers_size=65536,
            max_headers=100,
        )
        protocol, transport = _connect(site)
        protocol.dataReceived(b"G")
        self.clock.advance(1)
        self.assertRefused(transport, 408)


class ChannelReadPauseTests(_ChannelTestCase):
    """
    The client transport is paused for two owners, C{HTTPChannel} (its
    write buffer is full, or pipelined requests wait) and the request body
    (the app server is not reading the upload); it reads again only when
    neither holds it.
    """

    def _upload(self, extra: bytes = b"") -> tuple[Any, StringTransport, StringTransport]:
        """
        Start a 1 MB upload whose app server has stopped reading: the
        body's upstream transport pauses it.
        """
        protocol, transport = _connect(self.site())
        protocol.dataReceived(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000 + extra
        )
        [request] = self.resource.requests
        upstream = StringTransport()
        request.body_stream.attach(upstream)
        upstream.producer.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        return request, transport, upstream

    def test_drain_keeps_body_pause(self) -> None:
        """
        An early answer written to the client fills its write buffer; when
        that drains, Twisted resumes its own pause, but the upload stays
        paused while the app server is not reading it.
        """
        request, transport, upstream = self._upload()
        request.write(b"early answer")
        transport.producer.pauseProducing()
        transport.producer.resumeProducing()
        self.assertEqual(transport.producerState, "paused")
        upstream.producer.resumeProducing()
        self.assertEqual(transport.producerState, "producing")

    def test_pipelined_answer_drain_keeps_body_pause(self) -> None:
        """
        A request pipelined behind an answer still being written: its body
        goes into the pending buffer past its limit, and the earlier answer
        draining does not resume reading the rest of it.
        """
        protocol, transport = _connect(self.site())
        protocol.dataReceived(
            b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
            b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 70000
        )
        first = self.resource.requests[0]
        first.write(b"a long answer")
        transport.producer.pauseProducing()  # the client is slow to read it
        first.finish()
        self.assertEqual([r.uri for r in self.resource.requests], [b"/1", b"/2"])
        self.assertEqual(transport.producerState, "paused")
        transport.producer.resumeProducing()
        self.assertEqual(transport.producerState, "paused")
        self.resource.requests[1].body_stream.attach(StringTransport())
        self.assertEqual(transport.producerState, "producing")

    def test_body_resume_keeps_twisted_pause(self) -> None:
        """
        When the app server reads again while the client's write buffer is
        still full, reading waits for that buffer to drain (Twisted's own
        pause, which keeps answers from piling up).
        """
        request, transport, upstream = self._upload()
        transport.producer.pauseProducing()
        upstream.producer.resumeProducing()
        self.assertEqual(transport.producerState, "paused")
        transport.producer.resumeProducing()
        self.assertEqual(transport.producerState, "producing")

    def test_complete_body_releases_its_pause(self) -> None:
        """
        A body paused by the read that also completed it holds nothing back
        once it is complete: after its answer, the next request is read.
        """
        protocol, transport = _connect(self.site())
        protocol.dataReceived(
            b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 70000\r\n\r\n"
            + b"x" * 70000
            + b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        self.resource.requests[0].finish()
        self.assertEqual([r.uri for r in self.resource.requests], [b"/1", b"/2"])
        self.assertEqual(transport.producerState, "producing")

    def test_paused_time_is_not_the_clients(self) -> None:
        """
        Reading paused by the body and by Twisted at once: the body timeout
        still blames the app server (504), since the body pause stands.
        """
        request, transport, upstream = self._upload()
        transport.producer.pauseProducing()
        transport.producer.resumeProducing()
        self.clock.advance(60)
        self.assertRefused(transport, 504)


class SlowlorisTests(TestCase):
    """
    Many slow clients on real sockets, with the header timeout on a
    L{Clock}: they hold connections, not the proxy.
    """

    @inlineCallbacks
    def test_thousand_slow_clients(self):
        """
        1,000 clients sending a head one byte per (simulated) second do not
        stop a normal client from being served, and each gets 408 when the
        2 s header timeout has passed.
        """
        count = 1000
        _, _, app_port = start_app(self, "3000")
        clock = Clock()
        proxy_port, site, _ = start_proxy(self, [app_port], clock=clock, client_header_timeout=2.0)
        channels: list[Any] = []
        build = site.buildProtocol

        def build_protocol(addr: Any) -> Any:
            protocol = build(addr)
            channels.append(protocol._channel)
            return protocol

        site.buildProtocol = build_protocol  # type: ignore[method-assign]
        head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
        clients: list[Any] = []
        self.addCleanup(lambda: [c.transport.abortConnection() for c, _ in clients if c.transport])
        # In batches of 50, Twisted's listen backlog, so no SYN is dropped
        # (a dropped SYN is retried a second later).
        for batch in range(50, count + 1, 50):
            clients += [raw_request(proxy_port, head[:1]) for _ in range(50)]
            yield _until(lambda batch=batch: len(channels) == batch)
        yield _until(lambda: sum(c._head_started is not None for c in channels) == count)

        response = yield get(proxy_port)
        self.assertEqual((response.status, response.body), (200, b"PORT 3000"))

        clock.advance(1)
        for client, _ in clients:
            client.transport.write(head[1:2])
        yield _until(lambda: sum(len(c._buffer) == 2 for c in channels) == count)
        self.assertEqual([data for c, _ in clients for data in [c.received] if data], [])

        clock.advance(1)
        answers = yield gatherResults([done for _, done in clients])
        statuses = {parse_responses(answer)[0].status for answer in answers}
        self.assertEqual(statuses, {408})


class _EarlyAnswerApp(Protocol):
    """
    An app server that, once a request's first bytes are in, stops reading
    and answers with C{size} bytes at once.
    """

    def __init__(self, size: int, connections: list[_EarlyAnswerApp]) -> None:
        self.size = size
        connections.append(self)
        self.answered = False

    def dataReceived(self, data: bytes) -> None:
        if not self.answered:
            self.answered = True
            self.transport.pauseProducing()
            head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % self.size
            self.transport.write(head + b"a" * self.size)


class _Uploader(Protocol):
    """
    A client that uploads C{total} bytes as fast as its transport takes
    them (a push producer) while reading the answer; C{answered} fires once
    C{size} bytes of answer body are in.
    """

    def __init__(self, total: int, size: int) -> None:
        self.total = total
        self.size = size
        self.sent = 0
        self.paused = False
        self.head: bytes | None = b""
        self.body = 0
        self.answered: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % self.total
        )
        self.transport.registerProducer(self, True)
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        chunk = b"u" * 65536
        while not self.paused and self.sent < self.total:
            piece = chunk[: self.total - self.sent]
            self.sent += len(piece)
            self.transport.write(piece)

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.paused = True

    def dataReceived(self, data: bytes) -> None:
        if self.head is not None:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            data = self.head.partition(b"\r\n\r\n")[2]
            self.head = None
        self.body += len(data)
        if self.body >= self.size and not self.answered.called:
            self.answered.callback(None)


class EarlyAnswerUploadTests(TestCase):
    """
    On real sockets: an upload the app server stopped reading stays held
    back while an early answer streams to the same client.
    """

    @inlineCallbacks
    def test_answer_draining_does_not_read_held_upload(self):
        """
        The app server stops reading a 256 MB upload and answers 16 MB at
        once.  While that answer streams to the client, whose write buffer
        fills and drains many times, lbproxy keeps the upload paused: what
        it holds for the app server stays under 1 MB instead of growing
        with every drain.
        """
        size, total = 16 * 1024 * 1024, 256 * 1024 * 1024
        apps: list[_EarlyAnswerApp] = []
        app_port = listen(self, Factory.forProtocol(lambda: _EarlyAnswerApp(size, apps)))
        proxy_port, site, _ = start_proxy(self, [app_port])
        uploader = _Uploader(total, size)
        connected = ClientCreator(reactor, lambda: uploader).connectTCP("127.0.0.1", proxy_port)
        held: list[Any] = []
        self.addCleanup(
            _until,
            lambda: not site.channels and all(upstream.disconnected for upstream in held),
        )
        self.addCleanup(lambda: uploader.transport.abortConnection())
        self.addCleanup(lambda: [app.transport.abortConnection() for app in apps])
        yield connected

        def upstream_attached() -> bool:
            for connection in site.channels:
                requests = connection._channel.requests
                stream = requests[0].body_stream if requests else None
                if stream is not None and stream._upstream is not None:
                    held.append(stream._upstream)
                    return True
            return False

        yield _until(upstream_attached)
        upstream = held[0]
        yield uploader.answered
        buffered = upstream._tempDataLen + len(upstream.dataBuffer) - upstream.offset
        # One read past Twisted's 64 kB write buffer, not the answer's worth
        # of upload (20 MB before the pause had one owner).
        self.assertLess(buffered, 1024 * 1024)


def _until(condition: Any, timeout: float = 30.0) -> Deferred[None]:
    """
    Fires once C{condition()} is true, polling the reactor (no sleeping).
    """

    async def poll() -> None:
        for _ in range(int(timeout / 0.01)):
            if condition():
                return
            await deferLater(reactor, 0.01, lambda: None)
        raise AssertionError("condition never became true")

    return Deferred.fromCoroutine(poll())


class ChannelPathsTests(SynchronousTestCase):
    """
    A head that arrives whole takes a shorter path through L{ProxyChannel}
    than one arriving in pieces; both must decide alike.
    """

    def _feed(self, payload: bytes, piece: int) -> tuple[bytes, list[bytes]]:
        resource = _Resource()
        site = ProxySite(resource, client_timeout=60.0, access_log="off", reactor=Clock())
        protocol, transport = _connect(site)
        for i in range(0, len(payload), piece):
            protocol.dataReceived(payload[i : i + piece])
        return transport.value(), [request.uri for request in resource.requests]

    def test_head_ending_in_next_read(self) -> None:
        """
        A head whose final empty line arrives with the next, pipelined,
        request: both requests are proxied, in order.
        """
        resource = _Resource()
        site = ProxySite(resource, client_timeout=60.0, access_log="off", reactor=Clock())
        protocol, transport = _connect(site)
        protocol.dataReceived(b"GET /1 HTTP/1.1\r\nHost: a\r\n")
        protocol.dataReceived(b"\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual([r.uri for r in resource.requests], [b"/1"])
        resource.requests[0].finish()
        self.assertEqual([r.uri for r in resource.requests], [b"/1", b"/2"])

    def test_corpus_whole_and_byte_by_byte(self) -> None:
        """
        Every corpus case gives the same answer and proxies the same
        requests whether sent whole or a byte at a time.
        """
        for case in CASES:
            payload = case.render(b"lbproxy.test")
            whole = self._feed(payload, len(payload))
            if len(payload) > 20000:
                pieces = self._feed(payload, 997)
            else:
                pieces = self._feed(payload, 1)
            self.assertEqual(
                [r.status for r in parse_responses(whole[0])],
                [r.status for r in parse_responses(pieces[0])],
                case.name,
            )
            self.assertEqual(whole[1], pieces[1], case.name)


class _HoldingApp(Resource):
    """
    An app server that holds C{/slow} until released and answers anything
    else at once with its path.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bytes] = []
        self.held: list[Any] = []

    def render(self, request: Any) -> Any:
        self.seen.append(request.path)
        if request.path == b"/slow":
            self.held.append(request)
            return NOT_DONE_YET
        return request.path


class PipeliningTests(TestCase):
    """
    Pipelined requests go upstream one at a time, in order, and their
    answers come back in order (CVE-2023-46137, CVE-2024-41671).
    """

    @inlineCallbacks
    def test_slow_first_answer(self):
        """
        While the first request's answer is slow, the second has not been
        sent to any app server; once the first is answered, the second
        follows, and the client gets both answers in order.
        """
        app = _HoldingApp()
        app_site = Site(app)
        port = reactor.listenTCP(0, app_site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        proxy_port, _, _ = start_proxy(self, [port.getHost().port, port.getHost().port])
        client, done = raw_request(
            proxy_port,
            b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\nGET /fast HTTP/1.1\r\nHost: a\r\n"
            b"Connection: close\r\n\r\n",
        )
        yield _until(lambda: app.held)
        for _ in range(10):  # give a wrongly forwarded second request time to arrive
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(app.seen, [b"/slow"])
        self.assertEqual(client.received, b"")
        held = app.held.pop()
        held.write(b"/slow")
        held.finish()
        responses = parse_responses((yield done))
        self.assertEqual([r.body for r in responses], [b"/slow", b"/fast"])
        self.assertEqual(app.seen, [b"/slow", b"/fast"])
