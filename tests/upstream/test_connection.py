"""
Unit tests for L{lbproxy.upstream.connection}: one upstream connection driven with a
L{StringTransport} and a L{Clock}, and the idle pool.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IHalfCloseableProtocol, INegotiated
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from lbproxy.balancing.pool import Server
from lbproxy.config.model import ServerConfig
from lbproxy.errors import (
    ConnectFailed,
    InternalError,
    InvalidResponse,
    ReadTimeout,
    ResponseTruncated,
    StaleConnection,
    UpstreamError,
)
from lbproxy.upstream import connection as connection_module
from lbproxy.upstream.body import StreamingBody
from lbproxy.upstream.client import UpstreamClient
from lbproxy.upstream.connection import (
    ConnectionState,
    UpstreamConnection,
    UpstreamRequest,
    serialize_request_head,
)


class RecordingSink:
    """
    An L{IResponseSink} that records what it is told.
    """

    def __init__(self) -> None:
        self.status: int | None = None
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.done = False
        self.error: UpstreamError | None = None
        self.producer: object = None
        self.ready = 0

    def connection_ready(self) -> None:
        self.ready += 1

    def response_headers(self, status, reason, headers, producer) -> None:
        self.status, self.reason, self.headers, self.producer = status, reason, headers, producer

    def response_body(self, data: bytes) -> None:
        self.body += data

    def response_read_done(self) -> None:
        self.reads = getattr(self, "reads", 0) + 1

    def response_done(self) -> None:
        self.done = True

    def response_failed(self, error: UpstreamError) -> None:
        self.error = error

    def response_switched(self, reason, headers, connection) -> None:
        self.switched = (reason, headers, connection)


class _CallsSink(RecordingSink):
    """
    A L{RecordingSink} that also records the order of what it is told.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[object] = []

    def response_headers(self, status, reason, headers, producer) -> None:
        self.calls.append(("headers", status))

    def response_body(self, data: bytes) -> None:
        self.calls.append(("body", data))

    def response_done(self) -> None:
        self.calls.append("done")

    def response_failed(self, error: UpstreamError) -> None:
        self.calls.append(("failed", error))


def _request(method: bytes = b"GET") -> UpstreamRequest:
    return UpstreamRequest(method, b"%s / HTTP/1.1\r\nHost: x\r\n\r\n" % method, b"")


class ConnectionTests(SynchronousTestCase):
    """
    L{UpstreamConnection} sends one request and parses its answer.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.client = UpstreamClient(None, self.clock, read_timeout=60.0, idle_timeout=4.0)
        self.server = Server(ServerConfig("127.0.0.1", 3000))
        self.transport = StringTransport()
        self.connection = UpstreamConnection(self.client, self.server)
        self.connection.makeConnection(self.transport)
        self.sink = RecordingSink()

    def _send(self, method: bytes = b"GET", reused: bool = False) -> None:
        self.connection.send(_request(method), self.sink, reused=reused)

    def test_serialize(self) -> None:
        """
        The head is the request line, the headers in order, a blank line.
        """
        head = serialize_request_head(b"GET", b"/a?b", [(b"Host", b"x"), (b"X-A", b"1")])
        self.assertEqual(head, b"GET /a?b HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\r\n")

    def test_answer_relayed_and_pooled(self) -> None:
        """
        Status, reason, headers in order and body reach the sink; the
        connection then waits in the pool.
        """
        self._send()
        self.assertEqual(self.transport.value(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.connection.dataReceived(
            b"HTTP/1.1 404 Not Here\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n"
            b"Content-Length: 4\r\n\r\nnope"
        )
        self.assertEqual((self.sink.status, self.sink.reason), (404, b"Not Here"))
        self.assertEqual(
            self.sink.headers,
            [(b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2"), (b"Content-Length", b"4")],
        )
        self.assertEqual((self.sink.body, self.sink.done), (b"nope", True))
        self.assertEqual(self.client.idle_count(self.server), 1)

    def test_answer_in_pieces(self) -> None:
        """
        An answer split anywhere, chunked, is reassembled.
        """
        self._send()
        data = (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        for index in range(len(data)):
            self.connection.dataReceived(data[index : index + 1])
        self.assertEqual((self.sink.body, self.sink.done), (b"hello world", True))

    def test_connection_close_not_pooled(self) -> None:
        """
        An answer with C{Connection: close} ends the connection after it.
        """
        self._send()
        self.connection.dataReceived(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
        )
        self.assertTrue(self.sink.done)
        self.assertEqual(self.client.idle_count(self.server), 0)
        self.assertTrue(self.transport.disconnecting)

    def test_garbage(self) -> None:
        """
        Bytes that are not HTTP fail the exchange with L{InvalidResponse}.
        """
        self._send()
        self.connection.dataReceived(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        self.assertIsInstance(self.sink.error, InvalidResponse)
        self.assertIsNone(self.sink.status)

    def test_head_has_no_body(self) -> None:
        """
        A HEAD answer ends with its headers whatever its Content-Length
        says, and the connection is reusable for the next exchange.
        """
        self._send(b"HEAD")
        self.connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        self.assertTrue(self.sink.done)
        self.assertEqual(self.client.idle_count(self.server), 1)
        second = RecordingSink()
        self.connection.send(_request(), second, reused=True)
        self.connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual((second.body, second.done), (b"ok", True))

    def test_interim_skipped(self) -> None:
        """
        Interim 1xx answers are skipped; the final one is relayed.
        """
        self._send()
        self.connection.dataReceived(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
            b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
        )
        self.assertEqual((self.sink.status, self.sink.headers), (201, [(b"Content-Length", b"0")]))
        self.assertTrue(self.sink.done)

    def test_body_until_close(self) -> None:
        """
        An answer without length or chunking ends when the connection
        closes, complete, and the connection is not pooled.
        """
        self._send()
        self.connection.dataReceived(b"HTTP/1.0 200 OK\r\n\r\nall of ")
        self.connection.dataReceived(b"it")
        self.assertFalse(self.sink.done)
        self.connection.connectionLost()
        self.assertEqual((self.sink.body, self.sink.done), (b"all of it", True))
        self.assertEqual(self.client.idle_count(self.server), 0)

    def test_truncated_body(self) -> None:
        """
        A close before the promised length is L{ResponseTruncated}.
        """
        self._send()
        self.connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        self.connection.connectionLost()
        self.assertIsInstance(self.sink.error, ResponseTruncated)
        self.assertFalse(self.sink.done)

    def test_stale_reused_connection(self) -> None:
        """
        A reused connection closed before any byte of an answer is
        L{StaleConnection} (may be retried); a new one is not.
        """
        self._send(reused=True)
        self.connection.connectionLost()
        self.assertIsInstance(self.sink.error, StaleConnection)
        fresh = UpstreamConnection(self.client, self.server)
        fresh.makeConnection(StringTransport())
        sink = RecordingSink()
        fresh.send(_request(), sink, reused=False)
        fresh.connectionLost()
        self.assertIsInstance(sink.error, ResponseTruncated)

    def test_read_timeout(self) -> None:
        """
        Silence for the read timeout fails with L{ReadTimeout} (a 504);
        any byte received restarts it.
        """
        self._send()
        self.clock.advance(59)
        self.connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
        self.clock.advance(59)
        self.assertIsNone(self.sink.error)
        self.clock.advance(2)
        self.assertIsInstance(self.sink.error, ReadTimeout)
        self.assertEqual(self.sink.error.status, 504)
        self.assertTrue(self.transport.disconnecting)

    def test_paused_does_not_time_out(self) -> None:
        """
        While the client side holds the connection paused (a slow reader)
        the read timeout does not run.
        """
        self._send()
        self.connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
        self.connection.pauseProducing()
        self.clock.advance(600)
        self.assertIsNone(self.sink.error)
        self.connection.resumeProducing()
        self.clock.advance(61)
        self.assertIsInstance(self.sink.error, ReadTimeout)

    def test_pause_resume_transport(self) -> None:
        """
        Pausing the connection (the client is slow) pauses reading from
        the app server; resuming resumes it; the sink got the producer.
        """
        self._send()
        self.connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
        self.assertIs(self.sink.producer, self.connection)
        self.connection.pauseProducing()
        self.assertEqual(self.transport.producerState, "paused")
        self.connection.resumeProducing()
        self.assertEqual(self.transport.producerState, "producing")

    def test_pooled_connection_resumed(self) -> None:
        """
        A connection paused at the end of its answer is resumed when pooled,
        so that a close by the app server is noticed.
        """
        self._send()
        self.connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
        self.connection.pauseProducing()
        self.connection.dataReceived(b"cde")
        self.assertEqual(self.transport.producerState, "producing")

    def test_abort(self) -> None:
        """
        Abandoning the exchange drops the connection; it is never pooled.
        """
        self._send()
        self.connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
        self.connection.abort()
        self.assertTrue(self.transport.disconnecting)
        self.connection.connectionLost()
        self.assertEqual(self.client.idle_count(self.server), 0)
        self.assertFalse(self.sink.done)
        self.assertIsNone(self.sink.error)

    def test_closed_while_idle_leaves_pool(self) -> None:
        """
        A pooled connection the app server closes leaves the pool at once.
        """
        self._send()
        self.connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(self.client.idle_count(self.server), 1)
        self.connection.connectionLost()
        self.assertEqual(self.client.idle_count(self.server), 0)


class StateTests(SynchronousTestCase):
    """
    L{UpstreamConnection.state} follows the transitions its docstring
    draws, and each way an exchange ends leaves the state it names.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.client = UpstreamClient(None, self.clock)
        self.server = Server(ServerConfig("127.0.0.1", 3000))
        self.transport = StringTransport()
        self.connection = UpstreamConnection(self.client, self.server)
        self.sink = RecordingSink()

    def _send(self, request: UpstreamRequest | None = None, reused: bool = False) -> None:
        self.connection.makeConnection(self.transport)
        self.connection.send(request or _request(), self.sink, reused=reused)

    def assertState(self, state: ConnectionState) -> None:
        """
        The connection is in C{state}.
        """
        self.assertIs(self.connection.state, state)

    def test_module_names(self) -> None:
        """
        Each module-level name the connection compares with is the member
        of that name.
        """
        for member in ConnectionState:
            self.assertIs(getattr(connection_module, member.name), member)

    def test_exchange_and_back_to_the_pool(self) -> None:
        """
        CONNECTING, IDLE once connected, AWAITING once sent, READING_HEAD
        from the first byte, READING_BODY after the head, and IDLE again,
        in the pool, once the body is complete.
        """
        self.assertState(ConnectionState.CONNECTING)
        self.connection.makeConnection(self.transport)
        self.assertState(ConnectionState.IDLE)
        self.connection.send(_request(), self.sink, reused=False)
        self.assertState(ConnectionState.AWAITING)
        self.connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-")
        self.assertState(ConnectionState.READING_HEAD)
        self.connection.dataReceived(b"Length: 4\r\n\r\nab")
        self.assertState(ConnectionState.READING_BODY)
        self.connection.dataReceived(b"cd")
        self.assertState(ConnectionState.IDLE)
        self.assertEqual((self.sink.body, self.sink.done), (b"abcd", True))
        self.assertEqual(self.client.idle_count(self.server), 1)

    def test_stale(self) -> None:
        """
        A reused connection closed before any byte of the answer fails
        with L{StaleConnection} and is CLOSED.
        """
        self._send(reused=True)
        self.connection.connectionLost()
        self.assertIsInstance(self.sink.error, StaleConnection)
        self.assertState(ConnectionState.CLOSED)

    def test_closed_in_head(self) -> None:
        """
        A close in the middle of the head is L{InvalidResponse}.
        """
        self._send(reused=True)
        self.connection.dataReceived(b"HTTP/1.1 200 OK\r\n")
        self.connection.connectionLost()
        self.assertIsInstance(self.sink.error, InvalidResponse)
        self.assertState(ConnectionState.CLOSED)

    def test_closed_in_body(self) -> None:
        """
        A close in the middle of a body of known length is
        L{ResponseTruncated}, after the head went to the sink.
        """
        self._send()
        self.connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\na")
        self.connection.connectionLost()
        self.assertEqual(self.sink.status, 200)
        self.assertIsInstance(self.sink.error, ResponseTruncated)
        self.assertState(ConnectionState.CLOSED)

    def test_body_to_close(self) -> None:
        """
        A body without length or chunks is READING_TO_CLOSE, and the close
        completes the answer.
        """
        self._send()
        self.connection.dataReceived(b"HTTP/1.1 200 OK\r\n\r\nall")
        self.assertState(ConnectionState.READING_TO_CLOSE)
        self.connection.connectionLost()
        self.assertEqual((self.sink.body, self.sink.done, self.sink.error), (b"all", True, None))
        self.assertState(ConnectionState.CLOSED)
        self.assertEqual(self.client.idle_count(self.server), 0)

    def test_head_request(self) -> None:
        """
        The answer to a HEAD request is complete with its head: the
        connection is IDLE again in the same read.
        """
        self._send(_request(b"HEAD"))
        self.connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n")
        self.assertTrue(self.sink.done)
        self.assertState(ConnectionState.IDLE)

    def test_interim_answer(self) -> None:
        """
        An interim 1xx answer leaves the connection READING_HEAD; the final
        head moves it on.
        """
        self._send()
        self.connection.dataReceived(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.assertState(ConnectionState.READING_HEAD)
        self.assertIsNone(self.sink.status)
        self.connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n")
        self.assertState(ConnectionState.READING_BODY)
        self.assertEqual(self.sink.status, 200)

    def test_answered_before_the_body_was_sent(self) -> None:
        """
        An answer complete while the request body is still going up (an
        early 413) is relayed, and the connection is CLOSING, not pooled:
        the rest of the body would reach the next request.
        """
        body = StreamingBody(StringTransport(), 10)
        body.feed(b"12345")
        self._send(UpstreamRequest(b"POST", b"POST / HTTP/1.1\r\n\r\n", body))
        self.connection.dataReceived(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual((self.sink.status, self.sink.done), (413, True))
        self.assertState(ConnectionState.CLOSING)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.client.idle_count(self.server), 0)

    def test_not_reusable(self) -> None:
        """
        A complete answer with C{Connection: close} leaves the connection
        CLOSING, then CLOSED when it is lost.
        """
        self._send()
        self.connection.dataReceived(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        )
        self.assertState(ConnectionState.CLOSING)
        self.connection.connectionLost()
        self.assertState(ConnectionState.CLOSED)
        self.assertEqual((self.sink.done, self.sink.error), (True, None))

    def test_failure_then_close(self) -> None:
        """
        A failure (here an invalid answer) leaves the connection CLOSING;
        its loss then tells the sink nothing more.
        """
        self._send()
        self.connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n")
        self.assertIsInstance(self.sink.error, InvalidResponse)
        self.assertState(ConnectionState.CLOSING)
        self.sink.error = None
        self.connection.connectionLost()
        self.assertIsNone(self.sink.error)
        self.assertState(ConnectionState.CLOSED)

    def test_read_timeout(self) -> None:
        """
        A read timeout fails the exchange and leaves the connection CLOSING.
        """
        self._send()
        self.clock.advance(self.client.read_timeout)
        self.assertIsInstance(self.sink.error, ReadTimeout)
        self.assertState(ConnectionState.CLOSING)

    def test_abort(self) -> None:
        """
        Abandoning the exchange leaves the connection CLOSING.
        """
        self._send()
        self.connection.abort()
        self.assertState(ConnectionState.CLOSING)
        self.assertTrue(self.transport.disconnecting)

    def test_bytes_while_idle(self) -> None:
        """
        Bytes while IDLE close the connection; it leaves the pool, CLOSED,
        when the close is done.
        """
        self._send()
        self.connection.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.connection.dataReceived(b"surprise")
        self.assertTrue(self.transport.disconnecting)
        self.connection.connectionLost()
        self.assertState(ConnectionState.CLOSED)
        self.assertEqual(self.client.idle_count(self.server), 0)


class IdlePoolTests(SynchronousTestCase):
    """
    The idle pool: LIFO reuse, idle timeout, keepalive trimming.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.server = Server(ServerConfig("127.0.0.1", 3000))

    def _client(self, keepalive: int) -> UpstreamClient:
        return UpstreamClient(None, self.clock, keepalive=keepalive, idle_timeout=4.0)

    def _pooled(self, client: UpstreamClient) -> UpstreamConnection:
        connection = UpstreamConnection(client, self.server)
        connection.makeConnection(StringTransport())
        connection.send(_request(), RecordingSink(), reused=False)
        connection.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
        return connection

    def test_most_recent_first(self) -> None:
        """
        The most recently used idle connection is taken first.
        """
        client = self._client(32)
        first = self._pooled(client)
        self.clock.advance(1)
        second = self._pooled(client)
        self.assertIs(client._take_idle(self.server), second)
        self.assertIs(client._take_idle(self.server), first)

    def test_expired_not_used(self) -> None:
        """
        A connection idle longer than the idle timeout is closed, not used.
        """
        client = self._client(32)
        old = self._pooled(client)
        self.clock.advance(4.5)
        self.assertIsNone(client._take_idle(self.server))
        self.assertTrue(old.transport.disconnecting)

    def test_sweep_trims_to_keepalive(self) -> None:
        """
        A burst may leave more than C{keepalive} idle connections; the
        sweep closes the oldest beyond it, and the expired.
        """
        client = self._client(2)
        connections = []
        for _ in range(4):
            connections.append(self._pooled(client))
            self.clock.advance(0.1)
        client.sweep_idle()
        self.assertEqual(client.idle_count(self.server), 2)
        self.assertEqual(
            [c.transport.disconnecting for c in connections], [True, True, False, False]
        )
        self.clock.advance(5)
        client.sweep_idle()
        self.assertEqual(client.idle_count(self.server), 0)

    def test_keepalive_zero(self) -> None:
        """
        With C{keepalive} 0 every connection closes after its exchange.
        """
        client = self._client(0)
        connection = self._pooled(client)
        self.assertEqual(client.idle_count(self.server), 0)
        self.assertTrue(connection.transport.disconnecting)


class ReloadedTimeoutTests(SynchronousTestCase):
    """
    A pooled connection times its reads with the client's current read
    timeout, so a reload that changes it applies to kept connections too.
    """

    def test_new_read_timeout_applies(self) -> None:
        """
        After the client's read timeout drops from 60 s to 5 s, the next
        exchange on an already pooled connection times out after 5 s.
        """
        clock = Clock()
        client = UpstreamClient(None, clock, read_timeout=60.0)
        server = Server(ServerConfig("127.0.0.1", 3000))
        connection = UpstreamConnection(client, server)
        connection.makeConnection(StringTransport())
        connection.send(_request(), RecordingSink(), reused=False)
        connection.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
        client.read_timeout = 5.0
        sink = RecordingSink()
        connection.send(_request(), sink, reused=True)
        clock.advance(5.1)
        self.assertIsInstance(sink.error, ReadTimeout)
        self.assertIn("5 s", str(sink.error))


@implementer(INegotiated)
class _TLSStringTransport(StringTransport):
    """
    A L{StringTransport} that looks like a TLS transport (L{INegotiated}, a
    TCP transport underneath).
    """

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


class HandshakeTests(SynchronousTestCase):
    """
    Over TLS a streamed body waits for the handshake, so that a failed
    handshake loses none of it.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.client = UpstreamClient(None, self.clock)
        self.server = Server(ServerConfig("127.0.0.1", 3000, scheme="https"))

    def _tls_connection(self) -> tuple[UpstreamConnection, StringTransport]:
        transport = _TLSStringTransport()
        connection = UpstreamConnection(self.client, self.server)
        connection.makeConnection(transport)
        return connection, transport

    def _post(self, body: StreamingBody) -> UpstreamRequest:
        return UpstreamRequest(b"POST", b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n", body)

    def test_body_waits_for_the_handshake(self) -> None:
        """
        During the handshake only the head is written; the body follows
        once the handshake completed.
        """
        connection, transport = self._tls_connection()
        body = StreamingBody(StringTransport(), 5)
        body.feed(b"12345")
        body.end()
        connection.send(self._post(body), RecordingSink(), reused=False)
        self.assertFalse(body.sent_any)
        self.assertTrue(transport.value().endswith(b"\r\n\r\n"))
        connection.handshakeCompleted()
        self.assertTrue(transport.value().endswith(b"\r\n\r\n12345"))
        self.assertTrue(body.sent_any)

    def test_states(self) -> None:
        """
        A TLS connection is HANDSHAKING until the handshake completes, with
        its first request sent meanwhile; then AWAITING the answer.
        """
        connection, _ = self._tls_connection()
        self.assertIs(connection.state, ConnectionState.HANDSHAKING)
        connection.send(_request(), RecordingSink(), reused=False)
        self.assertIs(connection.state, ConnectionState.HANDSHAKING)
        connection.handshakeCompleted()
        self.assertIs(connection.state, ConnectionState.AWAITING)

    def test_failed_handshake_keeps_the_body(self) -> None:
        """
        A handshake that fails is a L{ConnectFailed} (another server may
        be tried) and the body, none of it sent, goes whole to the next
        connection.
        """
        connection, _ = self._tls_connection()
        body = StreamingBody(StringTransport(), 5)
        body.feed(b"123")
        sink = RecordingSink()
        connection.send(self._post(body), sink, reused=False)
        body.feed(b"45")
        body.end()
        connection.connectionLost(Failure(SSL.Error([("SSL", "", "certificate verify failed")])))
        self.assertIsInstance(sink.error, ConnectFailed)
        self.assertIs(connection.state, ConnectionState.CLOSED)
        self.assertFalse(body.sent_any)
        plain = StringTransport()
        second = UpstreamConnection(self.client, Server(ServerConfig("127.0.0.1", 3001)))
        second.makeConnection(plain)
        second.send(self._post(body), RecordingSink(), reused=False)
        self.assertTrue(plain.value().endswith(b"\r\n\r\n12345"))


class _BrokenBody(StreamingBody):
    """
    A request body whose C{attach} raises: an lbproxy bug on the way out.
    """

    def attach(self, transport: object, sent: object = None) -> None:
        raise RuntimeError("bug in attach")


class ExchangeBoundaryTests(SynchronousTestCase):
    """
    What happens at the edges of an exchange: a bug while sending on a
    pooled connection, a bug inside a parser callback, a late abandon.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.client = UpstreamClient(None, self.clock)
        self.server = Server(ServerConfig("127.0.0.1", 3000))

    def _pooled(self) -> UpstreamConnection:
        connection = UpstreamConnection(self.client, self.server)
        connection.makeConnection(StringTransport())
        connection.send(_request(), RecordingSink(), reused=False)
        connection.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertEqual(self.client.idle_count(self.server), 1)
        return connection

    def test_bug_sending_on_pooled_connection(self) -> None:
        """
        An exception while sending on a pooled connection costs one 502
        that does not blame the server, with a traceback in the log; the
        connection is dropped.
        """
        connection = self._pooled()
        sink = RecordingSink()
        body = _BrokenBody(StringTransport(), 1)
        request = UpstreamRequest(b"POST", b"POST / HTTP/1.1\r\n\r\n", body)
        self.client.send(self.server, request, sink)
        self.assertIsInstance(sink.error, InternalError)
        self.assertEqual(sink.error.status, 502)
        self.assertFalse(sink.error.server_fault)
        self.assertTrue(connection.transport.disconnecting)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_bug_in_a_response_callback(self) -> None:
        """
        An exception raised by the sink inside a parser callback (httptools
        wraps it as C{HttpParserCallbackError}) is lbproxy's internal
        error, logged with its traceback, not the server's invalid answer.
        """

        class BrokenSink(RecordingSink):
            def response_headers(self, status, reason, headers, producer) -> None:
                raise ZeroDivisionError("bug in response_headers")

        connection = UpstreamConnection(self.client, self.server)
        connection.makeConnection(StringTransport())
        sink = BrokenSink()
        connection.send(_request(), sink, reused=False)
        connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertIsInstance(sink.error, InternalError)
        self.assertNotIsInstance(sink.error, InvalidResponse)
        self.assertFalse(sink.error.server_fault)
        self.assertTrue(connection.transport.disconnecting)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_framing_refusal_is_the_servers(self) -> None:
        """
        An answer lbproxy refuses for its framing is still the server's
        invalid response (it counts against the server).
        """
        connection = UpstreamConnection(self.client, self.server)
        connection.makeConnection(StringTransport())
        sink = RecordingSink()
        connection.send(_request(), sink, reused=False)
        connection.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n")
        self.assertIsInstance(sink.error, InvalidResponse)
        self.assertTrue(sink.error.server_fault)

    def test_ready_on_a_pooled_connection(self) -> None:
        """
        A request sent on a pooled connection tells its sink the connection
        is ready at once, before the answer.
        """
        connection = self._pooled()
        sink = RecordingSink()
        self.client.send(self.server, _request(), sink)
        self.assertEqual((sink.ready, sink.status), (1, None))
        connection.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertEqual((sink.ready, sink.status), (1, 204))

    def test_ready_once_connected(self) -> None:
        """
        A request on a new connection tells its sink the connection is
        ready once it is made, not before; a connection that cannot be made
        never does.
        """
        attempts: list[Deferred[Any]] = []

        class Endpoint:
            def connect(self, factory: Any) -> Deferred[Any]:
                self.factory = factory
                attempts.append(Deferred())
                return attempts[-1]

        endpoint = Endpoint()
        client = UpstreamClient(None, self.clock, endpoint_factory=lambda server: endpoint)
        sink = RecordingSink()
        client.send(self.server, _request(), sink)
        self.assertEqual(sink.ready, 0)
        connection = endpoint.factory.buildProtocol(None)
        connection.makeConnection(StringTransport())
        attempts[0].callback(connection)
        self.assertEqual(sink.ready, 1)
        refused = RecordingSink()
        client.send(self.server, _request(), refused)
        attempts[1].errback(ConnectionRefusedError())
        self.assertEqual(refused.ready, 0)
        self.assertIsNotNone(refused.error)

    def test_late_abandon_is_a_no_op(self) -> None:
        """
        Abandoning an exchange after it ended, once its connection went
        back to the pool and carries another client's request, leaves that
        request alone.
        """
        connection = self._pooled()
        first = RecordingSink()
        abandon_first = self.client.send(self.server, _request(), first)
        connection.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertTrue(first.done)
        second = RecordingSink()
        self.client.send(self.server, _request(), second)
        abandon_first()
        self.assertFalse(connection.transport.disconnecting)
        connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual((second.body, second.done, second.error), (b"ok", True, None))

    def test_unsolicited_answer_in_the_same_read(self) -> None:
        """
        A second answer in the same read as a complete one is not relayed
        (the sink gets one head and one end); the connection is not pooled.
        """
        connection = UpstreamConnection(self.client, self.server)
        connection.makeConnection(StringTransport())
        sink = _CallsSink()
        connection.send(_request(), sink, reused=False)
        connection.dataReceived(
            b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nxy"
        )
        self.assertEqual(sink.calls, [("headers", 204), "done"])
        self.assertIs(connection.state, ConnectionState.CLOSING)
        self.assertEqual(self.client.idle_count(self.server), 0)

    def test_abandoned_inside_a_callback(self) -> None:
        """
        A sink that abandons the exchange from inside C{response_headers}
        hears nothing more of it, and nothing raises.
        """
        connection = UpstreamConnection(self.client, self.server)
        connection.makeConnection(StringTransport())

        class AbandoningSink(_CallsSink):
            def response_headers(self, status, reason, headers, producer) -> None:
                super().response_headers(status, reason, headers, producer)
                abandon()

        sink = AbandoningSink()
        abandon = connection.send(_request(), sink, reused=False)
        connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(sink.calls, [("headers", 200)])
        self.assertIs(connection.state, ConnectionState.CLOSING)
        self.assertTrue(connection.transport.disconnecting)

    def test_abandon_in_flight(self) -> None:
        """
        Abandoning an exchange still in flight drops its connection.
        """
        connection = self._pooled()
        sink = RecordingSink()
        abandon = self.client.send(self.server, _request(), sink)
        abandon()
        self.assertTrue(connection.transport.disconnecting)
        self.assertEqual(self.client.idle_count(self.server), 0)


class HeadLimitTests(SynchronousTestCase):
    """
    An answer's head larger than the client's C{max_headers_size} is the
    server's invalid response (nginx's "upstream sent too big header").
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.client = UpstreamClient(None, self.clock, max_headers_size=100)
        self.server = Server(ServerConfig("127.0.0.1", 3000))
        self.transport = StringTransport()
        self.connection = UpstreamConnection(self.client, self.server)
        self.connection.makeConnection(self.transport)
        self.sink = RecordingSink()
        self.connection.send(_request(), self.sink, reused=False)

    def _head(self, size: int) -> bytes:
        """
        A complete head of exactly C{size} bytes, and a body of 2.
        """
        start = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Pad: "
        end = b"\r\n\r\n"
        return start + b"p" * (size - len(start) - len(end)) + end

    def test_at_the_limit(self) -> None:
        """
        A head of exactly the limit is relayed.
        """
        self.connection.dataReceived(self._head(100) + b"ok")
        self.assertEqual((self.sink.status, self.sink.body, self.sink.done), (200, b"ok", True))

    def test_over_the_limit(self) -> None:
        """
        A head one byte over the limit, arriving whole with its body, fails
        the exchange as the server's invalid response and drops the
        connection; nothing was relayed.
        """
        self.connection.dataReceived(self._head(101) + b"ok")
        self.assertIsInstance(self.sink.error, InvalidResponse)
        self.assertTrue(self.sink.error.server_fault)
        self.assertIn("upstream sent too big header (more than 100 bytes", str(self.sink.error))
        self.assertIsNone(self.sink.status)
        self.assertTrue(self.transport.disconnecting)

    def test_endless_header_line(self) -> None:
        """
        A head that keeps coming fails as soon as more than the limit has
        arrived, without waiting for its end (llhttp would buffer it).
        """
        self.connection.dataReceived(b"HTTP/1.1 200 OK\r\nX-Pad: " + b"p" * 50)
        self.assertIsNone(self.sink.error)
        self.connection.dataReceived(b"p" * 50)
        self.assertIsInstance(self.sink.error, InvalidResponse)
        self.assertIn("too big header", str(self.sink.error))

    def test_body_does_not_count(self) -> None:
        """
        Only the head counts: a large body after a small head is relayed.
        """
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
        self.connection.dataReceived(head + b"b" * 500)
        self.connection.dataReceived(b"b" * 500)
        self.assertEqual((len(self.sink.body), self.sink.done), (1000, True))

    def test_limit_per_answer(self) -> None:
        """
        The count starts again for the next answer on a pooled connection,
        and follows the client's current limit (a reload changes it).
        """
        self.connection.dataReceived(self._head(100) + b"ok")
        self.client.max_headers_size = 200
        sink = RecordingSink()
        self.connection.send(_request(), sink, reused=True)
        self.connection.dataReceived(self._head(200) + b"ok")
        self.assertEqual((sink.status, sink.done), (200, True))


class ReadTimeoutAfterBodyTests(SynchronousTestCase):
    """
    The read timeout starts once the request body has been sent whole (as
    nginx's C{proxy_read_timeout}): a slow upload is not the server's
    silence.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.client = UpstreamClient(None, self.clock, read_timeout=60.0)
        self.connection = UpstreamConnection(self.client, Server(ServerConfig("127.0.0.1", 3000)))
        self.connection.makeConnection(StringTransport())
        self.body = StreamingBody(StringTransport(), 10)
        self.sink = RecordingSink()
        request = UpstreamRequest(
            b"POST", b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n", self.body
        )
        self.connection.send(request, self.sink, reused=False)

    def test_not_running_while_body_incomplete(self) -> None:
        """
        However long the body takes, the read timeout does not fire.
        """
        self.body.feed(b"12345")
        self.clock.advance(600)
        self.assertIsNone(self.sink.error)

    def test_starts_when_body_complete(self) -> None:
        """
        The read timeout counts from the moment the body was sent whole,
        not from an earlier check: a body completed at 100 s times out at
        160 s, not at the timer's next check (120 s).
        """
        self.body.feed(b"12345")
        self.clock.advance(60)
        self.clock.advance(40)
        self.body.feed(b"67890")
        self.body.end()
        self.clock.advance(59)
        self.assertIsNone(self.sink.error)
        self.clock.advance(2)
        self.assertIsInstance(self.sink.error, ReadTimeout)


class RecordingReceiver:
    """
    A tunnel's side (L{lbproxy.interfaces.TunnelReceiver}) that records
    what its end reports.
    """

    def __init__(self) -> None:
        self.data = b""
        self.read_closed = False
        self.lost: Failure | None = None

    def tunnel_data(self, data: bytes) -> None:
        self.data += data

    def tunnel_read_closed(self) -> None:
        self.read_closed = True

    def tunnel_lost(self, reason: Failure) -> None:
        self.lost = reason


_SWITCH = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: abc\r\n\r\n"
)


def _upgrade_request() -> UpstreamRequest:
    return UpstreamRequest(
        b"GET",
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"",
        upgrade=b"websocket",
    )


class SwitchTests(SynchronousTestCase):
    """
    A C{101} to an upgrade request ends HTTP on the connection: it becomes a
    tunnel's upstream end (TUNNEL), and its bytes are no longer parsed.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.client = UpstreamClient(None, self.clock, read_timeout=60.0)
        self.server = Server(ServerConfig("127.0.0.1", 3000))
        self.transport = StringTransport()
        self.connection = UpstreamConnection(self.client, self.server)
        self.connection.makeConnection(self.transport)
        self.sink = RecordingSink()

    def _switch(self, answer: bytes = _SWITCH) -> RecordingReceiver:
        """
        Send an upgrade request, answer it with C{answer} (a 101 and maybe
        tunnel bytes) and attach a receiver to the connection.
        """
        self.abandon = self.connection.send(_upgrade_request(), self.sink, reused=True)
        self.connection.dataReceived(answer)
        receiver = RecordingReceiver()
        self.connection.attach(receiver)
        return receiver

    def test_switched(self) -> None:
        """
        The sink hears of the switch with the reason, the headers and the
        connection; bytes after the head in the same read are the
        tunnel's, given on attach; the connection is not pooled.
        """
        receiver = self._switch(_SWITCH + b"\x81\x02hi")
        reason, headers, connection = self.sink.switched
        self.assertEqual(reason, b"Switching Protocols")
        self.assertEqual(
            headers,
            [
                (b"Upgrade", b"websocket"),
                (b"Connection", b"Upgrade"),
                (b"Sec-WebSocket-Accept", b"abc"),
            ],
        )
        self.assertIs(connection, self.connection)
        self.assertIs(self.connection.state, ConnectionState.TUNNEL)
        self.assertEqual(receiver.data, b"\x81\x02hi")
        self.assertEqual((self.sink.status, self.sink.done, self.sink.error), (None, False, None))
        self.assertEqual(self.client.idle_count(self.server), 0)
        self.assertFalse(self.transport.disconnecting)

    def test_bytes_not_parsed(self) -> None:
        """
        Later reads go to the tunnel as they are, even when they look like
        HTTP (no answer is parsed out of them).
        """
        receiver = self._switch()
        self.connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.connection.dataReceived(b"\x00garbage")
        self.assertEqual(receiver.data, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n\x00garbage")
        self.assertIsNone(self.sink.status)
        self.assertFalse(self.transport.disconnecting)

    def test_no_read_timeout(self) -> None:
        """
        The read timeout stops with HTTP (the tunnel has its own).
        """
        self._switch()
        self.clock.advance(3600)
        self.assertFalse(self.transport.disconnecting)
        self.assertIsNone(self.sink.error)

    def test_late_abandon_is_a_no_op(self) -> None:
        """
        The exchange's abandon no longer applies: the tunnel owns the
        connection.
        """
        self._switch()
        self.abandon()
        self.assertFalse(self.transport.disconnecting)

    def test_close_told(self) -> None:
        """
        The connection's close, and the server's FIN, go to the tunnel.
        """
        receiver = self._switch()
        self.connection.readConnectionLost()
        self.assertTrue(receiver.read_closed)
        self.connection.connectionLost(Failure(ConnectionDone()))
        self.assertIsInstance(receiver.lost, Failure)
        self.assertIs(self.connection.state, ConnectionState.CLOSED)

    def test_after_interim_and_in_pieces(self) -> None:
        """
        A 101 after a 100, its head split over reads, switches as well.
        """
        self.connection.send(_upgrade_request(), self.sink, reused=False)
        answer = b"HTTP/1.1 100 Continue\r\n\r\n" + _SWITCH + b"tail"
        for i in range(0, len(answer), 7):
            self.connection.dataReceived(answer[i : i + 7])
        receiver = RecordingReceiver()
        self.connection.attach(receiver)
        self.assertEqual(receiver.data, b"tail")
        self.assertEqual(self.sink.switched[0], b"Switching Protocols")

    def test_not_asked(self) -> None:
        """
        A 101 to a request that did not offer an upgrade is an invalid
        answer (502, the server's fault), and the connection is dropped.
        """
        self.connection.send(_request(), self.sink, reused=False)
        self.connection.dataReceived(_SWITCH)
        self.assertIsInstance(self.sink.error, InvalidResponse)
        self.assertTrue(self.sink.error.server_fault)
        self.assertIn("did not ask to upgrade", str(self.sink.error))
        self.assertFalse(hasattr(self.sink, "switched"))
        self.assertIs(self.connection.state, ConnectionState.CLOSING)

    def test_bare_101(self) -> None:
        """
        A 101 without C{Upgrade} and C{Connection: upgrade} does not switch.
        """
        self.connection.send(_upgrade_request(), self.sink, reused=False)
        self.connection.dataReceived(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
        self.assertIsInstance(self.sink.error, InvalidResponse)
        self.assertIn("without Upgrade", str(self.sink.error))

    def test_other_answer_relayed(self) -> None:
        """
        Any other answer to an upgrade request is relayed as usual, and
        the connection goes back to the pool.
        """
        self.connection.send(_upgrade_request(), self.sink, reused=False)
        self.connection.dataReceived(
            b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 2\r\n\r\nno"
        )
        self.assertEqual((self.sink.status, self.sink.body, self.sink.done), (426, b"no", True))
        self.assertEqual(self.client.idle_count(self.server), 1)

    def test_half_close_on_tcp_only(self) -> None:
        """
        Only a plain TCP connection passes a FIN on; another transport
        (here a L{StringTransport}) does not declare it can.  (The class
        provides C{IHalfCloseableProtocol}, for the endpoints' wrapper,
        which looks once; L{test_fin_closes_http} says what a FIN does
        outside a tunnel.)
        """
        self._switch()
        self.assertFalse(self.connection.half_close)
        self.assertTrue(IHalfCloseableProtocol.providedBy(self.connection))

    def test_fin_closes_http(self) -> None:
        """
        Outside a tunnel, the app server's FIN closes the connection, as
        for a protocol that is not half-closeable.
        """
        self.connection.readConnectionLost()
        self.assertTrue(self.transport.disconnecting)

    def test_bug_opening_the_tunnel(self) -> None:
        """
        A sink that raises while taking the switch costs the exchange an
        internal error (logged), and the connection is dropped.
        """

        class BrokenSink(RecordingSink):
            def response_switched(self, reason, headers, connection) -> None:
                raise ZeroDivisionError("bug in response_switched")

        sink = BrokenSink()
        self.connection.send(_upgrade_request(), sink, reused=False)
        self.connection.dataReceived(_SWITCH)
        self.assertIsInstance(sink.error, InternalError)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
