"""
Tests for L{lbproxy.http.h1}: the HTTP/1.1 client connection, driven by
hand as Twisted's own tests drive a channel: raw bytes into
C{site.buildProtocol(None)} on a L{StringTransport}, time on a L{Clock},
a handler that records requests (L{tests.http.fakes}).  The same
behaviours on real sockets, through the whole proxy, are in
L{tests.http.test_h1_loopback}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import UNIXAddress
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from lbproxy.http.accesslog import AccessLog
from lbproxy.http.h1 import EAGER_READ
from lbproxy.http.h1request import HTTP11Request
from lbproxy.http.site import ProxySite
from lbproxy.tools.corpus import APP, CASES
from tests.http.fakes import (
    AnsweringHandler,
    ClientSideTestCase,
    RecordingExchange,
    TLSTransport,
    answer,
    config,
    connect,
)
from tests.support import parse_responses

_GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


@implementer(IPushProducer)
class _Producer:
    """
    An answer's producer (the exchange): records being paused.
    """

    paused = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass


class GateTests(ClientSideTestCase):
    """
    The connection passes every request head through the framing gate
    before its handler sees it, and refuses what the gate refuses.
    """

    def test_valid_request_normalised(self) -> None:
        """
        A request that passes reaches the handler normalised: target in
        origin-form, Host from the absolute-form target, surrounding spaces
        trimmed, headers with underscores dropped.
        """
        protocol, transport = self.connection()
        protocol.dataReceived(
            b"GET http://app.example/p?q=1 HTTP/1.1\r\nHost: other\r\nX_Forwarded_For: 1.2.3.4\r\n"
            b"X-A:  1 \r\n\r\n"
        )
        [request] = self.handler.requests
        self.assertEqual(
            (request.method, request.target, request.version), (b"GET", b"/p?q=1", b"HTTP/1.1")
        )
        headers = [(name.lower(), value) for name, value in request.headers]
        self.assertEqual([v for n, v in headers if n == b"host"], [b"app.example"])
        self.assertEqual(request.header(b"x-a"), b"1")
        self.assertNotIn(b"x_forwarded_for", [name for name, _ in headers])
        self.assertIsNone(request.body)
        self.assertEqual(transport.value(), b"")

    def test_refused_head_never_handled(self) -> None:
        """
        A refused head gets its status with C{Connection: close}, the
        connection closes, and the handler never sees the request.
        """
        protocol, transport = self.connection()
        protocol.dataReceived(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        )
        self.assertRefused(transport, 400)
        self.assertEqual(self.handler.requests, [])

    def test_nothing_read_after_refusal(self) -> None:
        """
        After a refusal, later bytes (a valid request) are ignored.
        """
        protocol, transport = self.connection()
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        protocol.dataReceived(b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertRefused(transport, 400)
        self.assertEqual(self.handler.requests, [])

    def test_bare_lf_refused_at_once(self) -> None:
        """
        A head with bare LF line endings is refused as soon as it arrives,
        without waiting for a CRLF.
        """
        protocol, transport = self.connection()
        protocol.dataReceived(b"GET / HTTP/1.1\nHost: a\n\n")
        self.assertRefused(transport, 400)

    def test_long_request_line(self) -> None:
        """
        A request line over 8 kB is a 414 before its end arrives.
        """
        protocol, transport = self.connection()
        protocol.dataReceived(b"GET /" + b"a" * 9000)
        self.assertRefused(transport, 414)

    def test_long_header_line(self) -> None:
        """
        A header line over 8 kB is a 431 before its end arrives.
        """
        protocol, transport = self.connection()
        protocol.dataReceived(b"GET / HTTP/1.1\r\nX-A: " + b"a" * 9000)
        self.assertRefused(transport, 431)

    def test_limits_configurable(self) -> None:
        """
        The configuration's limits apply: 3 headers allowed, 4 are a 431.
        """
        protocol, transport = self.connection(max_headers=3)
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 1\r\n\r\n")
        self.assertEqual(len(self.handler.requests), 1)
        protocol, transport = self.connection(max_headers=3)
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 1\r\nC: 1\r\n\r\n")
        self.assertRefused(transport, 431)
        self.assertEqual(len(self.handler.requests), 1)

    def test_unknown_transfer_coding(self) -> None:
        """
        A transfer coding other than chunked is a 501, never handled.
        """
        protocol, transport = self.connection()
        protocol.dataReceived(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        )
        self.assertRefused(transport, 501)
        self.assertEqual(self.handler.requests, [])

    def test_http2_request_line(self) -> None:
        """
        An HTTP/2.0 request line on an HTTP/1.1 connection is a 505.
        """
        protocol, transport = self.connection()
        protocol.dataReceived(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n")
        self.assertRefused(transport, 505)

    def test_bad_chunk_then_pipelined_request(self) -> None:
        """
        A bad chunk in a body already on its way upstream: 400, its exchange
        abandoned, and the request pipelined after it never handled.
        """
        protocol, transport = self.connection()
        protocol.dataReceived(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        [request] = self.handler.requests
        request.exchange = exchange = RecordingExchange()
        protocol.dataReceived(b"0x5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertRefused(transport, 400)
        self.assertTrue(exchange.gone)
        self.assertEqual(self.handler.targets, [b"/up"])

    def test_chunked_body_over_limit(self) -> None:
        """
        A chunked body growing past the maximum is a 413 and its exchange
        is abandoned.
        """
        protocol, transport = self.connection(max_body_size=8)
        protocol.dataReceived(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        )
        [request] = self.handler.requests
        request.exchange = exchange = RecordingExchange()
        protocol.dataReceived(b"5\r\nworld\r\n0\r\n\r\n")
        self.assertRefused(transport, 413)
        self.assertTrue(exchange.gone)

    def test_length_over_limit(self) -> None:
        """
        A Content-Length over the maximum is a 413 before any proxying.
        """
        protocol, transport = self.connection(max_body_size=8)
        protocol.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\n")
        self.assertRefused(transport, 413)
        self.assertEqual(self.handler.requests, [])

    def test_error_after_answer_started_aborts(self) -> None:
        """
        When the answer has begun (an early answer to a streaming upload),
        a framing error aborts the connection instead of writing a second
        status line.
        """
        protocol, transport = self.connection()
        protocol.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        [request] = self.handler.requests
        request.respond(200, b"OK", [(b"Content-Length", b"100")])
        request.write(b"early")
        written = transport.value()
        protocol.dataReceived(b"zz\r\n")
        self.assertTrue(transport.disconnected)
        self.assertEqual(transport.value(), written)

    def test_lingering_close(self) -> None:
        """
        On a transport that can half-close (TCP), a refusal sends the
        answer and a FIN, drops what the client still sends, and aborts
        after 5 s.
        """
        protocol, transport = self.connection()
        protocol.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        self.assertRefused(transport, 400)
        self.assertTrue(transport.write_closed)
        self.assertFalse(transport.disconnecting)
        answered = transport.value()
        protocol.dataReceived(b"more body bytes")
        self.clock.advance(4.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnected)
        self.assertEqual(transport.value(), answered)

    def test_lingering_close_reads_a_paused_client(self) -> None:
        """
        A client refused while reading was paused (its body held back for
        a slow app server) is read again during the lingering close, so
        that what it still sends is drained rather than reset.
        """
        protocol, transport = self.connection(client_body_timeout=2.0)
        protocol.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n12345")
        upstream = StringTransport()
        self.handler.requests[0].body.attach(upstream)
        upstream.producer.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        self.clock.advance(2)
        self.assertRefused(transport, 504)
        self.assertEqual(transport.producerState, "producing")

    def test_refusal_without_half_close(self) -> None:
        """
        On a transport that cannot half-close (TLS), a refusal is answered
        and the connection closed.
        """
        protocol, transport = self.connection(TLSTransport())
        protocol.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        self.assertRefused(transport, 400)
        self.assertTrue(transport.disconnecting)

    def test_handler_failure_is_a_500(self) -> None:
        """
        A handler that raises gets its client a 500 (the failure is
        logged), and the connection serves the next request.
        """

        class Failing:
            def handle(self, request: Any) -> None:
                raise ZeroDivisionError()

        self.handler = Failing()  # type: ignore[assignment]
        protocol, transport = self.connection()
        protocol.dataReceived(_GET)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        [response] = parse_responses(transport.value())
        self.assertEqual(response.status, 500)
        self.assertFalse(transport.disconnecting)


class TimeoutTests(ClientSideTestCase):
    """
    The idle, header and body timeouts (nginx's C{keepalive_timeout},
    C{client_header_timeout} and C{client_body_timeout}).
    """

    def test_slowloris(self) -> None:
        """
        A client sending a head one byte a second gets 408 when the header
        timeout (2 s here) has passed since its first byte, not later.
        """
        protocol, transport = self.connection(client_header_timeout=2.0)
        for byte in _GET[:2]:
            protocol.dataReceived(bytes([byte]))
            self.clock.advance(1)
        self.assertRefused(transport, 408)
        self.assertEqual(self.clock.seconds(), 2.0)

    def test_not_before_timeout(self) -> None:
        """
        A head completed just within the header timeout is handled.
        """
        protocol, transport = self.connection(client_header_timeout=2.0)
        protocol.dataReceived(b"GET / HTTP/1.1\r\n")
        self.clock.advance(1.9)
        protocol.dataReceived(b"Host: a\r\n\r\n")
        self.clock.advance(10)
        self.assertEqual(len(self.handler.requests), 1)
        self.assertEqual(transport.value(), b"")

    def test_counts_from_first_byte(self) -> None:
        """
        The header timeout starts at the first byte of a head, not at the
        connection: a keep-alive connection may wait (up to the idle
        timeout) before its request.
        """
        protocol, transport = self.connection(client_header_timeout=2.0)
        self.clock.advance(30)
        protocol.dataReceived(b"GET / HTTP/1.1\r\n")
        self.clock.advance(1.9)
        protocol.dataReceived(b"Host: a\r\n\r\n")
        self.assertEqual(len(self.handler.requests), 1)
        self.assertEqual(transport.value(), b"")

    def test_each_request_has_its_own_window(self) -> None:
        """
        The second request on a connection gets a full header timeout of
        its own.
        """
        protocol, transport = self.connection(client_header_timeout=2.0)
        protocol.dataReceived(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
        self.clock.advance(1.5)
        answer(self.handler.requests[0])
        protocol.dataReceived(b"GET /2 HTTP/1.1\r\n")
        self.clock.advance(1.5)
        protocol.dataReceived(b"Host: a\r\n\r\n")
        self.assertEqual(self.handler.targets, [b"/1", b"/2"])
        self.assertEqual([r.status for r in parse_responses(transport.value())], [200])

    def test_idle_timeout_between_requests(self) -> None:
        """
        Between requests the idle timeout closes the connection quietly,
        with no 408.
        """
        protocol, transport = self.connection()
        protocol.dataReceived(_GET)
        self.clock.advance(100)
        answer(self.handler.requests[0])
        answered = transport.value()
        self.clock.advance(59)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), answered)

    def test_idle_timeout_on_a_new_connection(self) -> None:
        """
        A connection that never sends a byte is closed after the idle
        timeout, quietly.
        """
        protocol, transport = self.connection(client_timeout=5.0)
        self.clock.advance(4.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")

    def test_idle_close_aborted_after_15_s(self) -> None:
        """
        A connection closed for idleness whose close does not complete
        (the client takes no more bytes) is aborted 15 s later.
        """
        protocol, transport = self.connection(client_timeout=5.0)
        self.clock.advance(5)
        self.assertTrue(transport.disconnecting)
        self.clock.advance(14.9)
        self.assertFalse(transport.disconnected)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnected)

    def test_completed_close_leaves_no_timer(self) -> None:
        """
        Once a closed connection is gone, nothing is left to abort it: no
        timer remains.
        """
        protocol, transport = self.connection(client_timeout=5.0)
        self.clock.advance(5)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_idle_timeout_suspended_during_head(self) -> None:
        """
        A head in progress is governed by the header timeout alone, even
        when it is longer than the idle timeout.
        """
        protocol, transport = self.connection(client_header_timeout=90.0)
        protocol.dataReceived(b"GET / HTTP/1.1\r\n")
        self.clock.advance(89)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertRefused(transport, 408)

    def test_no_timeout_during_an_answer(self) -> None:
        """
        While an answer is in progress no client timeout runs: a slow app
        server is timed by the upstream side.
        """
        protocol, transport = self.connection(client_timeout=5.0, client_header_timeout=5.0)
        protocol.dataReceived(_GET)
        self.clock.advance(1000)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(transport.value(), b"")

    def test_body_stall(self) -> None:
        """
        A body that stalls for the body timeout gets 408 and its exchange
        is abandoned.
        """
        protocol, transport = self.connection(client_body_timeout=2.0)
        protocol.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n12345")
        [request] = self.handler.requests
        request.exchange = exchange = RecordingExchange()
        self.clock.advance(1.9)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(0.1)
        self.assertRefused(transport, 408)
        self.assertTrue(exchange.gone)

    def test_body_progress(self) -> None:
        """
        The body timeout is between two reads: a slow but steady body is
        not cut, and arrives whole.
        """
        protocol, transport = self.connection(client_body_timeout=2.0)
        protocol.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n")
        upstream = StringTransport()
        body = self.handler.requests[0].body
        body.attach(upstream)
        for byte in b"12345":
            self.clock.advance(1.5)
            protocol.dataReceived(bytes([byte]))
        self.clock.advance(10)
        self.assertEqual(transport.value(), b"")
        self.assertTrue(body.complete)
        self.assertEqual(upstream.value(), b"12345")

    def _held_upload(self, **settings: Any) -> tuple[Any, Any, StringTransport]:
        """
        A 10-byte upload, half sent, that lbproxy holds back: the app
        server stopped reading it (its transport paused the body).
        """
        protocol, transport = self.connection(**settings)
        protocol.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n12345")
        upstream = StringTransport()
        self.handler.requests[0].body.attach(upstream)
        upstream.producer.pauseProducing()
        return protocol, transport, upstream

    def test_paused_body(self) -> None:
        """
        While lbproxy holds the body back (the app server is not reading),
        the client is not at fault: past the body timeout the answer is a
        504, not a 408.
        """
        _, transport, _ = self._held_upload(client_body_timeout=2.0)
        self.clock.advance(2)
        self.assertRefused(transport, 504)

    def test_resumed_body_gets_full_timeout(self) -> None:
        """
        After lbproxy resumes reading, the client has the whole body timeout
        again.
        """
        _, transport, upstream = self._held_upload(client_body_timeout=2.0)
        self.clock.advance(1.5)
        upstream.producer.resumeProducing()
        self.clock.advance(1.9)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(0.1)
        self.assertRefused(transport, 408)


class ReadPauseTests(ClientSideTestCase):
    """
    The connection is the one owner of its transport's reading pause,
    held for several reasons (the app server is not reading the upload;
    pipelined requests wait behind an answer): the transport reads again
    only when no reason holds it.  A client slow to read its answer pauses
    the answer's producer, not reading.
    """

    def _upload(self) -> tuple[Any, Any, StringTransport]:
        """
        Start a 1 MB upload whose app server has stopped reading: the
        body's upstream transport pauses it.
        """
        protocol, transport = self.connection()
        protocol.dataReceived(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000
        )
        [request] = self.handler.requests
        upstream = StringTransport()
        request.body.attach(upstream)
        upstream.producer.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        return request, transport, upstream

    def test_drain_keeps_body_pause(self) -> None:
        """
        An early answer written to the client fills its write buffer; when
        that drains, the upload stays paused while the app server is not
        reading it, and is read again once it is.
        """
        request, transport, upstream = self._upload()
        request.respond(200, b"OK", [(b"Content-Length", b"100")], _Producer())
        request.write(b"early answer")
        transport.producer.pauseProducing()
        transport.producer.resumeProducing()
        self.assertEqual(transport.producerState, "paused")
        upstream.producer.resumeProducing()
        self.assertEqual(transport.producerState, "producing")

    def test_pipelined_answer_drain_keeps_body_pause(self) -> None:
        """
        A request pipelined behind an answer still being written: its body
        fills what lbproxy holds for an app server, and the earlier answer
        draining does not resume reading the rest of it.
        """
        protocol, transport = self.connection()
        protocol.dataReceived(
            b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
            b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 70000
        )
        first = self.handler.requests[0]
        first.respond(200, b"OK", [(b"Content-Length", b"13")], _Producer())
        first.write(b"a long answer")
        transport.producer.pauseProducing()  # the client is slow to read it
        first.finish()
        self.assertEqual(self.handler.targets, [b"/1", b"/2"])
        self.assertEqual(transport.producerState, "paused")
        transport.producer.resumeProducing()
        self.assertEqual(transport.producerState, "paused")
        self.handler.requests[1].body.attach(StringTransport())
        self.assertEqual(transport.producerState, "producing")

    def test_pipelined_requests_pause_reading(self) -> None:
        """
        More than 16 KiB of pipelined requests read while an answer is in
        progress pause reading until that answer is done; the client's
        write buffer draining in between does not resume it.
        """
        protocol, transport = self.connection()
        protocol.dataReceived(_GET)
        protocol.dataReceived(b"GET /2 HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 2000 + b"\r\n\r\n")
        self.assertEqual(transport.producerState, "producing")
        pipelined = b"GET /3 HTTP/1.1\r\nHost: a\r\n" + b"X: %s\r\n" % (b"a" * 4096) * 4 + b"\r\n"
        self.assertGreater(len(pipelined), EAGER_READ)
        protocol.dataReceived(pipelined)
        self.assertEqual(transport.producerState, "paused")
        transport.producer.pauseProducing()
        transport.producer.resumeProducing()
        self.assertEqual(transport.producerState, "paused")
        answer(self.handler.requests[0])
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(self.handler.targets, [b"/", b"/2"])

    def test_slow_client_pauses_the_answer_not_reading(self) -> None:
        """
        A client whose write buffer is full pauses the answer's producer;
        an upload the app server takes again is read meanwhile (answers
        cannot pile up: their producer is paused).
        """
        request, transport, upstream = self._upload()
        producer = _Producer()
        request.respond(200, b"OK", [(b"Content-Length", b"100")], producer)
        transport.producer.pauseProducing()
        self.assertTrue(producer.paused)
        upstream.producer.resumeProducing()
        self.assertEqual(transport.producerState, "producing")
        self.assertTrue(producer.paused)
        transport.producer.resumeProducing()
        self.assertFalse(producer.paused)

    def test_producer_of_a_paused_client_starts_paused(self) -> None:
        """
        An answer whose head is written while the client's write buffer is
        full (an earlier answer fills it) has its producer paused at once.
        """
        protocol, transport = self.connection()
        protocol.dataReceived(_GET)
        transport.producer.pauseProducing()
        producer = _Producer()
        self.handler.requests[0].respond(200, b"OK", [(b"Content-Length", b"1")], producer)
        self.assertTrue(producer.paused)

    def test_complete_body_releases_its_pause(self) -> None:
        """
        A body paused by the read that also completed it (more than
        lbproxy holds while the app server is not connected yet) holds
        nothing back once it is complete: after its answer, the next
        request is read.
        """
        protocol, transport = self.connection()
        protocol.dataReceived(
            b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 70000\r\n\r\n"
            + b"x" * 70000
            + b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        answer(self.handler.requests[0])
        self.assertEqual(self.handler.targets, [b"/1", b"/2"])
        self.assertEqual(transport.producerState, "producing")

    def test_last_piece_fills_the_app_server(self) -> None:
        """
        When the last piece of a body fills the app server's buffer (its
        transport pauses the body), reading is not left paused: once the
        request is answered, the keep-alive connection reads its next
        request.
        """

        class Filled(StringTransport):
            """
            An app server's connection whose buffer each write fills.
            """

            def write(self, data: bytes) -> None:
                super().write(data)
                if self.producer is not None:
                    self.producer.pauseProducing()

        protocol, transport = self.connection()
        protocol.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n")
        request = self.handler.requests[0]
        upstream = Filled()
        request.body.attach(upstream)
        protocol.dataReceived(b"1234567890")
        self.assertEqual(upstream.value(), b"1234567890")
        answer(request)
        self.assertEqual(transport.producerState, "producing")

    def test_paused_time_is_not_the_clients(self) -> None:
        """
        Reading paused by the body while the client's write buffer filled
        and drained: the body timeout still blames the app server (504),
        since the body pause stands.
        """
        request, transport, upstream = self._upload()
        transport.producer.pauseProducing()
        transport.producer.resumeProducing()
        self.clock.advance(60)
        self.assertRefused(transport, 504)


def _body_data(request: Any, sent: bytes) -> bytes:
    """
    The data of the body of C{request} as sent upstream (C{sent}), without
    the chunk framing lbproxy adds to a chunked one: how that is cut in
    chunks depends on the reads.
    """
    if request.body.length is not None:
        return sent
    data = b""
    while b"\r\n" in sent:
        size_line, _, sent = sent.partition(b"\r\n")
        size = int(size_line, 16)
        data, sent = data + sent[:size], sent[size + 2 :]
    return data


class PathsTests(ClientSideTestCase):
    """
    A head that arrives whole takes a shorter path through the connection
    than one arriving in pieces; both must decide alike.
    """

    def _feed(self, payload: bytes, piece: int) -> tuple[list[int], list[bytes], list[bytes]]:
        """
        Send C{payload} in pieces of C{piece} bytes to a connection whose
        handler reads each body whole, then answers 200.

        @return: the statuses answered, the targets handled, and the bodies
            read (in the order handled).
        """
        handler = AnsweringHandler()
        site = ProxySite(handler, config(), AccessLog(Clock(), None), Clock())
        protocol, transport = connect(site)
        for i in range(0, len(payload), piece):
            protocol.dataReceived(payload[i : i + piece])
        bodies = [_body_data(request, upstream.value()) for request, upstream in handler.uploads]
        return [r.status for r in parse_responses(transport.value())], handler.targets, bodies

    def test_head_ending_in_next_read(self) -> None:
        """
        A head whose final empty line arrives with the next, pipelined,
        request: both requests are handled, in order.
        """
        protocol, transport = self.connection()
        protocol.dataReceived(b"GET /1 HTTP/1.1\r\nHost: a\r\n")
        protocol.dataReceived(b"\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(self.handler.targets, [b"/1"])
        answer(self.handler.requests[0])
        self.assertEqual(self.handler.targets, [b"/1", b"/2"])

    def test_corpus_whole_and_byte_by_byte(self) -> None:
        """
        Every corpus case gets the answers the corpus expects, and hands
        the same requests and bodies to the handler, whether sent whole or
        a byte at a time.
        """
        for case in CASES:
            payload = case.render(b"lbproxy.test")
            whole = self._feed(payload, len(payload))
            pieces = self._feed(payload, 997 if len(payload) > 20000 else 1)
            expected = [200 if status == APP else status for status in case.expect]
            self.assertEqual(whole[0], expected, case.name)
            self.assertEqual(whole, pieces, case.name)


class PipeliningTests(ClientSideTestCase):
    """
    Pipelined requests are handed over one at a time, in order, and
    answered in order (CVE-2023-46137, CVE-2024-41671).
    """

    def test_one_at_a_time(self) -> None:
        """
        A request pipelined behind another is handed to the handler only
        once the first is answered.
        """
        protocol, transport = self.connection()
        protocol.dataReceived(
            b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        self.assertEqual(self.handler.targets, [b"/1"])
        answer(self.handler.requests[0], b"one")
        self.assertEqual(self.handler.targets, [b"/1", b"/2"])
        answer(self.handler.requests[1], b"two")
        self.assertEqual([r.body for r in parse_responses(transport.value())], [b"one", b"two"])

    def test_answered_at_once(self) -> None:
        """
        Requests answered during C{handle} (lbproxy's own answers) let the
        next pipelined request through in the same read, in order.
        """
        self.handler = AnsweringHandler()
        protocol, transport = self.connection()
        protocol.dataReceived(
            b"".join(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(5))
        )
        bodies = [r.body for r in parse_responses(transport.value())]
        self.assertEqual(bodies, [b"/%d" % i for i in range(5)])

    def test_after_a_body(self) -> None:
        """
        A request pipelined right after a body is handled once that
        request is answered, with nothing of the body taken for it.
        """
        self.handler = AnsweringHandler()
        protocol, transport = self.connection()
        protocol.dataReceived(
            b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /2 HTTP/1.1\r\n"
            b"Host: a\r\n\r\n"
        )
        self.assertEqual(self.handler.targets, [b"/1", b"/2"])
        self.assertEqual(self.handler.bodies[b"/1"].value(), b"abc")
        self.assertEqual([r.status for r in parse_responses(transport.value())], [200, 200])

    def test_answered_when_body_ends(self) -> None:
        """
        A handler that finishes its answer as soon as it has the whole body
        (inside the body's end): the request pipelined after it is read
        whole, and its body, though it looks like a request, is a body.
        """
        self.handler = AnsweringHandler()
        protocol, transport = self.connection()
        inner = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
        protocol.dataReceived(b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n")
        protocol.dataReceived(
            b"abcPOST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\nX" % (len(inner) + 1)
        )
        protocol.dataReceived(inner)
        self.assertEqual(self.handler.targets, [b"/1", b"/2"])
        self.assertEqual(self.handler.bodies[b"/2"].value(), b"X" + inner)
        self.assertEqual([r.body for r in parse_responses(transport.value())], [b"/1", b"/2"])

    def test_closing_answer_when_body_ends(self) -> None:
        """
        A C{Connection: close} request answered as soon as its body is
        whole: nothing pipelined after it is read, however much of it
        came.
        """
        self.handler = AnsweringHandler()
        protocol, transport = self.connection()
        protocol.dataReceived(
            b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"
        )
        pipelined = b"GET /2 HTTP/1.1\r\nHost: a\r\n" + b"X: %s\r\n" % (b"a" * 4096) * 4 + b"\r\n"
        protocol.dataReceived(b"abc" + pipelined)
        self.assertEqual(self.handler.targets, [b"/1"])
        self.assertTrue(transport.disconnecting)


class AnswerFramingTests(ClientSideTestCase):
    """
    The answer's head is written as the handler gives it, with framing of
    the connection's own (RFC 9112 section 6.3).
    """

    def _answer(
        self, head: bytes, status: int = 200, body: bytes = b"hello"
    ) -> tuple[Any, StringTransport]:
        """
        Send C{head} and answer it with C{status} and C{body}, with no
        length.
        """
        protocol, transport = self.connection()
        protocol.dataReceived(head)
        [request] = self.handler.requests
        request.respond(status, b"Whatever", [(b"X-App", b"1")])
        request.write(body)
        request.finish()
        return protocol, transport

    def test_http10_delimited_by_close(self) -> None:
        """
        An answer without a length to an HTTP/1.0 client is never chunked:
        its body ends with the connection.
        """
        _, transport = self._answer(b"GET / HTTP/1.0\r\n\r\n")
        head, _, body = transport.value().partition(b"\r\n\r\n")
        self.assertNotIn(b"transfer-encoding", head.lower())
        self.assertIn(b"\r\nConnection: close", head)
        self.assertEqual(body, b"hello")
        self.assertTrue(transport.disconnecting)

    def test_http11_chunked(self) -> None:
        """
        An answer without a length to an HTTP/1.1 client is chunked, and
        the connection stays open.
        """
        _, transport = self._answer(_GET)
        head, _, body = transport.value().partition(b"\r\n\r\n")
        self.assertIn(b"\r\nTransfer-Encoding: chunked", head)
        self.assertNotIn(b"connection", head.lower())
        self.assertEqual(body, b"5\r\nhello\r\n0\r\n\r\n")
        self.assertFalse(transport.disconnecting)

    def test_length_kept(self) -> None:
        """
        An answer with a C{Content-Length} is written as it is: no chunks.
        """
        protocol, transport = self.connection()
        protocol.dataReceived(_GET)
        answer(self.handler.requests[0], b"hello")
        self.assertEqual(transport.value(), b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")

    def _assertNoFraming(self, transport: StringTransport) -> None:
        """
        What was written is a head alone, with neither body framing nor
        C{Connection: close}, and the connection stays open.
        """
        head = transport.value()
        self.assertTrue(head.endswith(b"\r\n\r\n"), head)
        self.assertNotIn(b"transfer-encoding", head.lower())
        self.assertNotIn(b"connection", head.lower())
        self.assertFalse(transport.disconnecting)

    def test_head_has_no_body_framing(self) -> None:
        """
        The answer to a HEAD request gets no body framing, and the
        connection stays open.
        """
        _, transport = self._answer(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n", body=b"")
        self._assertNoFraming(transport)

    def test_204_has_no_body_framing(self) -> None:
        """
        A 204 answer gets no body framing, and the connection stays open.
        """
        _, transport = self._answer(_GET, status=204, body=b"")
        self._assertNoFraming(transport)

    def test_304_has_no_body_framing(self) -> None:
        """
        A 304 answer gets no body framing, and the connection stays open.
        """
        _, transport = self._answer(_GET, status=304, body=b"")
        self._assertNoFraming(transport)

    def test_no_body_then_next_request(self) -> None:
        """
        After an answer without body framing, the next request on the
        connection is read.
        """
        protocol, _ = self._answer(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n", body=b"")
        protocol.dataReceived(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(self.handler.targets, [b"/", b"/next"])

    def test_write_after_finish_ignored(self) -> None:
        """
        Nothing is written for a request once its answer is finished.
        """
        protocol, transport = self.connection()
        protocol.dataReceived(_GET)
        request = self.handler.requests[0]
        answer(request, b"hello")
        written = transport.value()
        request.write(b"late")
        request.finish()
        self.assertEqual(transport.value(), written)

    def test_abort_resets(self) -> None:
        """
        An answer that cannot be completed resets the connection, so that
        the client cannot take it for a whole one.
        """
        protocol, transport = self.connection()
        protocol.dataReceived(_GET)
        request = self.handler.requests[0]
        request.respond(200, b"OK", [(b"Content-Length", b"100")])
        request.write(b"part")
        request.abort()
        self.assertTrue(transport.disconnected)


class ConnectionCloseTests(ClientSideTestCase):
    """
    C{Connection: close} from the client closes the connection after the
    answer (RFC 9112 section 9.6).
    """

    def test_close(self) -> None:
        """
        The answer says C{Connection: close}, and the connection closes
        after it.
        """
        protocol, transport = self.connection()
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        request = self.handler.requests[0]
        self.assertFalse(transport.disconnecting)
        answer(request)
        [response] = parse_responses(transport.value())
        self.assertEqual(response.header(b"connection"), [b"close"])
        self.assertTrue(transport.disconnecting)

    def test_close_in_any_connection_header(self) -> None:
        """
        C{close} counts in any of several C{Connection} headers, among
        other options.
        """
        protocol, transport = self.connection()
        protocol.dataReceived(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nConnection: x-a, Close\r\n\r\n"
        )
        answer(self.handler.requests[0])
        self.assertTrue(transport.disconnecting)

    def test_keep_alive_without_close(self) -> None:
        """
        C{Connection} headers without C{close} keep an HTTP/1.1 connection
        open.
        """
        protocol, transport = self.connection()
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, x-a\r\n\r\n")
        answer(self.handler.requests[0])
        self.assertFalse(transport.disconnecting)

    def test_nothing_after_close(self) -> None:
        """
        A request pipelined after one with C{Connection: close} is never
        handled.
        """
        protocol, transport = self.connection()
        protocol.dataReceived(
            b"GET /1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        answer(self.handler.requests[0])
        self.assertEqual(self.handler.targets, [b"/1"])
        self.assertEqual(len(parse_responses(transport.value())), 1)


class HTTPSPolicyTests(ClientSideTestCase):
    """
    HSTS on TLS answers, and plain requests redirected to https.
    """

    def _hsts(self, transport: StringTransport, headers: list[tuple[bytes, bytes]]) -> list[bytes]:
        """
        The C{Strict-Transport-Security} values of an answer with
        C{headers} on C{transport}, with C{hsts} configured.
        """
        protocol, transport = self.connection(transport, hsts=3600)
        protocol.dataReceived(_GET)
        request = self.handler.requests[-1]
        request.respond(200, b"OK", [*headers, (b"Content-Length", b"0")])
        request.finish()
        return parse_responses(transport.value())[0].header(b"strict-transport-security")

    def test_hsts_on_tls(self) -> None:
        """
        An answer on a TLS connection gets C{Strict-Transport-Security}.
        """
        self.assertEqual(self._hsts(TLSTransport(), []), [b"max-age=3600"])

    def test_no_hsts_on_plain(self) -> None:
        """
        An answer on a plain connection gets no C{Strict-Transport-Security}.
        """
        self.assertEqual(self._hsts(StringTransport(), []), [])

    def test_app_hsts_kept(self) -> None:
        """
        When the app server sent its own C{Strict-Transport-Security},
        lbproxy adds none.
        """
        ours = [(b"strict-transport-security", b"max-age=1")]
        self.assertEqual(self._hsts(TLSTransport(), ours), [b"max-age=1"])

    def test_secure(self) -> None:
        """
        A request on a TLS connection says it is secure; on TCP it does
        not.
        """
        protocol, _ = self.connection(TLSTransport())
        protocol.dataReceived(_GET)
        protocol, _ = self.connection()
        protocol.dataReceived(_GET)
        self.assertEqual([r.secure for r in self.handler.requests], [True, False])

    def test_redirect(self) -> None:
        """
        A plain request is answered 308 to the same target on https, on
        the configured port; the handler never sees it.
        """
        protocol, transport = self.connection(redirect_https=8443)
        protocol.dataReceived(b"GET /p?q=1 HTTP/1.1\r\nHost: app.example:8080\r\n\r\n")
        [response] = parse_responses(transport.value())
        self.assertEqual(response.status, 308)
        self.assertEqual(response.header(b"location"), [b"https://app.example:8443/p?q=1"])
        self.assertEqual(self.handler.requests, [])
        self.assertFalse(transport.disconnecting)

    def test_redirect_443(self) -> None:
        """
        A redirect to port 443 names no port.
        """
        protocol, transport = self.connection(redirect_https=443)
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: app.example\r\n\r\n")
        [response] = parse_responses(transport.value())
        self.assertEqual(response.header(b"location"), [b"https://app.example/"])

    def test_redirect_drops_the_body(self) -> None:
        """
        The body of a redirected request is read and dropped: the request
        pipelined after it is read as a request (and redirected too).
        """
        protocol, transport = self.connection(redirect_https=443)
        protocol.dataReceived(
            b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 26\r\n\r\n"
            b"GET /smuggled HTTP/1.1\r\n\r\n"
            b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        responses = parse_responses(transport.value())
        self.assertEqual(
            [r.header(b"location") for r in responses], [[b"https://a/1"], [b"https://a/2"]]
        )
        self.assertEqual(self.handler.requests, [])

    def test_redirect_without_host(self) -> None:
        """
        A request to redirect without a usable Host (HTTP/1.0) gets 400.
        """
        protocol, transport = self.connection(redirect_https=443)
        protocol.dataReceived(b"GET / HTTP/1.0\r\n\r\n")
        self.assertEqual([r.status for r in parse_responses(transport.value())], [400])

    def test_tls_not_redirected(self) -> None:
        """
        A request on TLS is handled, not redirected.
        """
        protocol, transport = self.connection(TLSTransport(), redirect_https=443)
        protocol.dataReceived(_GET)
        self.assertEqual(len(self.handler.requests), 1)
        self.assertEqual(transport.value(), b"")


class ExpectContinueTests(ClientSideTestCase):
    """
    C{Expect: 100-continue} (RFC 9110 section 10.1.1).
    """

    def test_continue_before_body(self) -> None:
        """
        A request with a body that expects 100-continue gets the 100 as
        soon as its head is in, before any of its body, and is handled.
        """
        protocol, transport = self.connection()
        protocol.dataReceived(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-Continue\r\n\r\n"
        )
        self.assertEqual(transport.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        self.assertEqual(len(self.handler.requests), 1)

    def test_no_continue_for_http10(self) -> None:
        """
        An HTTP/1.0 client, which knows no 1xx answer, gets no 100.
        """
        protocol, transport = self.connection()
        protocol.dataReceived(
            b"POST / HTTP/1.0\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        self.assertEqual(transport.value(), b"")

    def test_no_continue_without_body(self) -> None:
        """
        A request without a body gets no 100: there is nothing to
        continue.
        """
        protocol, transport = self.connection()
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n")
        self.assertEqual(transport.value(), b"")


class ClientGoneTests(ClientSideTestCase):
    """
    A client that disconnects in the middle of a request.
    """

    def test_exchange_told(self) -> None:
        """
        The request's exchange is told the client is gone.
        """
        protocol, _ = self.connection()
        protocol.dataReceived(_GET)
        self.handler.requests[0].exchange = exchange = RecordingExchange()
        protocol.connectionLost(Failure(ConnectionLost()))
        self.assertTrue(exchange.gone)

    def test_logged_499(self) -> None:
        """
        A request given up on before any answer is access-logged with
        status 499 (nginx's "client closed request").
        """
        protocol, _ = self.connection()
        protocol.dataReceived(b"GET /x HTTP/1.1\r\nHost: a\r\nUser-Agent: t\r\n\r\n")
        protocol.connectionLost(Failure(ConnectionLost()))
        [line] = self.logged()
        self.assertTrue(line.startswith("192.168.1.1 - - ["), line)
        self.assertTrue(line.endswith('"GET /x HTTP/1.1" 499 0 "-" "t"'), line)

    def test_logged_with_answer_status(self) -> None:
        """
        A request whose answer had begun is logged with that answer's
        status and the bytes sent.
        """
        protocol, _ = self.connection()
        protocol.dataReceived(_GET)
        request = self.handler.requests[0]
        request.respond(200, b"OK", [(b"Content-Length", b"100")])
        request.write(b"12345")
        protocol.connectionLost(Failure(ConnectionLost()))
        [line] = self.logged()
        self.assertIn('"GET / HTTP/1.1" 200 5 ', line)

    def test_body_stops(self) -> None:
        """
        The body of a request whose client went away takes nothing more
        and releases its app server.
        """
        protocol, _ = self.connection()
        protocol.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n12345")
        upstream = StringTransport()
        self.handler.requests[0].body.attach(upstream)
        protocol.connectionLost(Failure(ConnectionLost()))
        self.assertIsNone(upstream.producer)

    def test_between_requests_not_logged(self) -> None:
        """
        A client that leaves between requests has nothing to log.
        """
        protocol, _ = self.connection()
        protocol.dataReceived(_GET)
        answer(self.handler.requests[0])
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(self.logged()), 1)


class AccessLogTests(ClientSideTestCase):
    """
    Every answered request is access-logged once, when its answer is
    complete.
    """

    def test_logged_when_finished(self) -> None:
        """
        A request is logged once its answer is finished, with its status
        and body bytes, not before.
        """
        protocol, _ = self.connection()
        protocol.dataReceived(_GET)
        request = self.handler.requests[0]
        request.respond(200, b"OK", [(b"Content-Length", b"5")])
        request.write(b"hello")
        self.assertEqual(self.logged(), [])
        request.finish()
        [line] = self.logged()
        self.assertIn('"GET / HTTP/1.1" 200 5 "-" "-"', line)

    def test_chunk_framing_not_counted(self) -> None:
        """
        The bytes logged are the body's, without chunk framing.
        """
        protocol, _ = self.connection()
        protocol.dataReceived(_GET)
        request = self.handler.requests[0]
        request.respond(200, b"OK", [])
        request.write(b"hello")
        request.finish()
        [line] = self.logged()
        self.assertIn(" 200 5 ", line)

    def test_unix_client(self) -> None:
        """
        A client on a UNIX socket is logged as C{unix:}, as nginx logs
        C{$remote_addr} there.
        """
        transport = StringTransport(peerAddress=UNIXAddress(b"/run/lb.sock"))
        protocol, _ = self.connection(transport)
        protocol.dataReceived(_GET)
        answer(self.handler.requests[0])
        [line] = self.logged()
        self.assertTrue(line.startswith("unix: - - ["), line)


class RequestTests(ClientSideTestCase):
    """
    What a request says of itself and its connection.
    """

    def test_request_contract(self) -> None:
        """
        L{HTTP11Request} is what the handler is given.
        """
        protocol, _ = self.connection()
        protocol.dataReceived(_GET)
        self.assertIsInstance(self.handler.requests[0], HTTP11Request)

    def test_client_address(self) -> None:
        """
        The client's IP address, as C{X-Forwarded-For} needs it.
        """
        protocol, _ = self.connection()
        protocol.dataReceived(_GET)
        self.assertEqual(self.handler.requests[0].client_address, b"192.168.1.1")

    def test_default_host(self) -> None:
        """
        The C{Host} for a request without one (HTTP/1.0) is the listener's
        address and port.
        """
        protocol, _ = self.connection()
        protocol.dataReceived(b"GET / HTTP/1.0\r\n\r\n")
        self.assertEqual(self.handler.requests[0].default_host(), b"10.0.0.1:12345")

    def test_unsent_unknown_without_socket(self) -> None:
        """
        On a transport that is not a socket, how much of the answer waits
        cannot be known.
        """
        protocol, _ = self.connection()
        protocol.dataReceived(_GET)
        self.assertIsNone(self.handler.requests[0].unsent())


class CloseWhenIdleTests(ClientSideTestCase):
    """
    L{HTTP11Connection.close_when_idle} (a stop): closed now if idle, else
    after the answer in progress.
    """

    def test_idle(self) -> None:
        """
        An idle connection is closed at once.
        """
        protocol, transport = self.connection()
        protocol.close_when_idle()
        self.assertTrue(transport.disconnecting)

    def test_during_answer(self) -> None:
        """
        A connection whose answer is being written is closed once that
        answer is complete, not before, and reads no further request.
        """
        protocol, transport = self.connection()
        protocol.dataReceived(_GET + b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
        request = self.handler.requests[0]
        request.respond(200, b"OK", [(b"Content-Length", b"5")])
        protocol.close_when_idle()
        request.write(b"hello")
        self.assertFalse(transport.disconnecting)
        request.finish()
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.handler.targets, [b"/"])

    def test_before_answer(self) -> None:
        """
        An answer begun after the connection was told to close says
        C{Connection: close}.
        """
        protocol, transport = self.connection()
        protocol.dataReceived(_GET)
        protocol.close_when_idle()
        answer(self.handler.requests[0])
        [response] = parse_responses(transport.value())
        self.assertEqual(response.header(b"connection"), [b"close"])
        self.assertTrue(transport.disconnecting)


class EarlyAnswerTests(ClientSideTestCase):
    """
    An answer complete before its request's body (an early 413 from the app
    server): the rest of the body is read and dropped, then the next
    request is read.
    """

    def test_rest_of_body_dropped(self) -> None:
        """
        After an early answer the body goes nowhere, and the request
        pipelined after it is handled.
        """
        protocol, transport = self.connection()
        protocol.dataReceived(b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n12345")
        request = self.handler.requests[0]
        upstream = StringTransport()
        request.body.attach(upstream)
        answer(request, status=413)
        protocol.dataReceived(b"67890GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(upstream.value(), b"12345")
        self.assertEqual(self.handler.targets, [b"/1", b"/2"])
        self.assertFalse(transport.disconnecting)

    def test_not_handled_before_body_end(self) -> None:
        """
        The next request is not handled while the answered request's body
        is still coming.
        """
        protocol, _ = self.connection()
        protocol.dataReceived(b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n12345")
        answer(self.handler.requests[0], status=413)
        protocol.dataReceived(b"6789")
        self.assertEqual(self.handler.targets, [b"/1"])

    def test_logged_at_answer(self) -> None:
        """
        An early answer is logged when it is complete, not when the body
        ends.
        """
        protocol, _ = self.connection()
        protocol.dataReceived(b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n12345")
        answer(self.handler.requests[0], status=413)
        [line] = self.logged()
        self.assertIn('"POST /1 HTTP/1.1" 413 2 ', line)
