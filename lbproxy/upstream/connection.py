# -*- test-case-name: tests.upstream.test_connection -*-
"""
One keep-alive HTTP/1.1 connection to an app server, and what it sends.

Why not L{twisted.web.client.Agent} over an C{HTTPConnectionPool}: measured
on this machine (see C{bench/RESULTS.md} and DESIGN.md), a proxy built on
C{Agent} reaches about half the throughput of the same proxy on a lean
client protocol, because every request goes through several Deferred chains,
a C{Headers} copy, an C{IResponse} and C{deliverBody} hand-offs.  This module
is that lean protocol: one exchange at a time per connection, the response
parsed by C{httptools} (the llhttp parser from Node.js: strict, fast, well
kept) rather than by hand, and bytes passed straight to an L{IResponseSink}.

Pieces: L{UpstreamConnection} (with its L{ConnectionState}) sends a
request head and body, parses the answer, enforces the read timeout, and is
an C{IPushProducer} so the client side can pause it (backpressure);
L{UpstreamRequest} and L{serialize_request_head} make what it sends.  A
C{101 Switching Protocols} to an upgrade request ends HTTP on the
connection, which becomes the upstream end of a tunnel
(L{lbproxy.proxy.tunnel}).  The
idle pool is L{lbproxy.upstream.client}; the failure kinds, L{lbproxy.errors}.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from enum import Enum, auto
from functools import partial
from typing import Protocol as TypingProtocol

import httptools
from twisted.internet import error as ierror
from twisted.internet import tcp
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    IHandshakeListener,
    INegotiated,
    IPushProducer,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from lbproxy.config.servers import ServerConfig
from lbproxy.errors import (
    ConnectFailed,
    InternalError,
    InvalidResponse,
    ReadTimeout,
    ResponseTruncated,
    StaleConnection,
    UpstreamError,
)
from lbproxy.interfaces import IStreamTransport, TunnelReceiver
from lbproxy.twistedinternals import close_after_fin, pass_fin_through, send_now
from lbproxy.upstream.body import StreamingBody
from lbproxy.upstream.tls import tls_failure_text
from lbproxy.upstream.upgrade import switch_refusal

__all__ = [
    "ConnectionState",
    "IResponseSink",
    "ConnectionOwner",
    "UpstreamConnection",
    "UpstreamServer",
    "response_framing_error",
    "UpstreamRequest",
    "serialize_request_head",
]

Header = tuple[bytes, bytes]


class _RefusedAnswer(Exception):
    """
    Raised inside a parser callback to refuse an answer that llhttp would
    accept (framing lbproxy does not relay, a head too large): the
    server's invalid response, unlike any other exception raised there.
    """


class UpstreamServer(TypingProtocol):
    """
    What the upstream side knows of a server: its configuration.  (The
    balancing layer's L{lbproxy.balancing.pool.Server} is one.)
    """

    config: ServerConfig

    @property
    def address(self) -> str:
        """
        C{host:port}, for log lines.
        """


class ConnectionOwner(TypingProtocol):
    """
    What an L{UpstreamConnection} asks of the client that made it (the
    L{lbproxy.upstream.client.UpstreamClient}): its current settings, and
    to take the connection back when an exchange ends cleanly or forget it
    when it closes.
    """

    clock: IReactorTime
    read_timeout: float
    max_headers_size: int

    def connection_idle(self, connection: UpstreamConnection) -> None:
        """
        C{connection}'s exchange ended cleanly: keep it for the next
        request to its server, or close it.
        """

    def connection_closed(self, connection: UpstreamConnection) -> None:
        """
        C{connection} closed: it must not be handed out again.
        """


class IResponseSink(TypingProtocol):
    """
    Where an L{UpstreamConnection} delivers one answer.

    Exactly one of C{response_done} or C{response_failed} ends an exchange.
    """

    def connection_ready(self) -> None:
        """
        The request goes out now, on a connection just made or a pooled one
        (for the access log's connect time: nginx's
        C{$upstream_connect_time}, 0 for a pooled connection).  Not called
        if no connection could be made.
        """

    def response_headers(
        self, status: int, reason: bytes, headers: list[Header], producer: IPushProducer
    ) -> None:
        """
        The status line and headers arrived (interim 1xx answers are skipped).

        @param producer: the connection, to register with the client side so
            that a slow client pauses reading from the app server.
        """

    def response_body(self, data: bytes) -> None:
        """
        A piece of the body arrived, already de-chunked.
        """

    def response_read_done(self) -> None:
        """
        What one read of the server's bytes held has been delivered, and
        the answer goes on: a moment to send on what was collected (the
        head and the first piece of the body go out together).
        """

    def response_done(self) -> None:
        """
        The answer is complete.
        """

    def response_failed(self, error: UpstreamError) -> None:
        """
        The exchange failed; C{error} says why.
        """

    def response_switched(
        self, reason: bytes, headers: list[Header], connection: UpstreamConnection
    ) -> None:
        """
        The server switched protocols (C{101}) as the request offered: the
        exchange is over for C{connection}, which is now the upstream end of
        a tunnel, waiting to be attached to one (or aborted).  Instead of
        C{response_done}; only for a request with C{upgrade}.
        """


def serialize_request_head(method: bytes, target: bytes, headers: list[Header]) -> bytes:
    """
    The bytes of an HTTP/1.1 request line and header section.

    @param method: e.g. C{b"GET"}.
    @param target: the request target, forwarded byte for byte.
    @param headers: C{(name, value)} pairs, framing headers included.
    @return: the head, ending with the blank line.
    """
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


class UpstreamRequest:
    """
    One request ready to send: its serialised head and its body.

    @ivar method: the request method, for retry decisions.
    @ivar head: request line and headers, framing included, ending in a
        blank line.
    @ivar body: the whole body as bytes (often empty), or a
        L{StreamingBody} that is still arriving from the client.
    @ivar head_only: the answer has no body whatever its headers say
        (the request is a C{HEAD}).
    @ivar upgrade: the protocols the request offers to switch to (its
        C{Upgrade} value), or L{None}: only then may a C{101} answer it.
    """

    __slots__ = ("method", "head", "body", "head_only", "upgrade")

    def __init__(
        self,
        method: bytes,
        head: bytes,
        body: bytes | StreamingBody,
        upgrade: bytes | None = None,
    ) -> None:
        self.method = method
        self.head = head
        self.body = body
        self.head_only = method == b"HEAD"
        self.upgrade = upgrade


class ConnectionState(Enum):
    """
    Where an L{UpstreamConnection} is in its life; its docstring shows the
    transitions.
    """

    CONNECTING = auto()
    HANDSHAKING = auto()
    IDLE = auto()
    AWAITING = auto()
    READING_HEAD = auto()
    READING_BODY = auto()
    READING_TO_CLOSE = auto()
    DONE = auto()
    CLOSING = auto()
    CLOSED = auto()
    TUNNEL = auto()


# The members as module globals, which each read compares the state with:
# reading one off the Enum class goes through EnumType's attribute hook
# (about 100 ns on CPython 3.11, a global 15 ns).  A test checks each name.
(
    CONNECTING,
    HANDSHAKING,
    IDLE,
    AWAITING,
    READING_HEAD,
    READING_BODY,
    READING_TO_CLOSE,
    DONE,
    CLOSING,
    CLOSED,
    TUNNEL,
) = ConnectionState
# Reading an answer, the most frequent first; no exchange in progress.
_READING = (READING_BODY, READING_HEAD, READING_TO_CLOSE)
_BETWEEN_EXCHANGES = (IDLE, CLOSING, CLOSED)


# IHalfCloseableProtocol on the class, not added once a tunnel opens: the
# endpoints that connect to app servers wrap the protocol in a
# _WrappingProtocol, which decides when it is built whether to pass a FIN on
# (and needs pass_fin_through to keep it, see connectionMade).
@implementer(IPushProducer, IHandshakeListener, IHalfCloseableProtocol)
class UpstreamConnection(Protocol):
    """
    One keep-alive HTTP/1.1 connection to an app server.

    It carries one exchange at a time (no pipelining to upstreams, as nginx
    and HAProxy).  Between exchanges it sits idle in its L{UpstreamClient}.

    Its life is one L{ConnectionState}, C{state}.  An arrow to a state is
    an assignment C{self.state = ...} in this class, and there are no
    others; an arrow to a failure kind fails the exchange, which leaves the
    connection CLOSING (dropped by lbproxy), or CLOSED if the server's close
    was the failure::

      CONNECTING  --connectionMade--> HANDSHAKING (TLS) or IDLE
      HANDSHAKING   the first request waits for TLS (which holds its head;
                    a streamed body waits here)
        --handshakeCompleted--> AWAITING, or IDLE if no request came yet
        --close--> ConnectFailed (nothing was sent: safe to retry)
      IDLE          no exchange: in the pool, or about to get a first request
        --send--> AWAITING;  --bytes--> lbproxy closes;  --close--> CLOSED
      AWAITING      request sent (its body may still be going up), no answer
        --a byte--> READING_HEAD
        --close--> StaleConnection if reused, else ResponseTruncated
      READING_HEAD  part of the head arrived (interim 1xx heads stay here)
        --final head--> READING_BODY, READING_TO_CLOSE, or DONE (HEAD request)
        --101 to a request that offered that upgrade--> TUNNEL
        --close, not HTTP, refused framing, head over max_headers_size,
          a 101 the request did not offer--> InvalidResponse
      READING_BODY  final head relayed; the body has a length or chunks
        --its end--> DONE;  --close--> ResponseTruncated;  --bad chunk-->
          InvalidResponse
      READING_TO_CLOSE  final head relayed; the body ends with the connection
        --close--> CLOSED, the answer complete
      DONE          answer complete, for the rest of the read that ended it
        --> IDLE (back to the pool) or CLOSING (not reusable)
      CLOSING       --connectionLost--> CLOSED
      TUNNEL        HTTP is over: the connection left its exchange (it is
                    never pooled again) and is a tunnel's upstream end;
                    bytes, a FIN and the close go to the tunnel, unparsed
        --connectionLost--> CLOSED (the tunnel is told)

    Any state with an exchange can also fail with L{ReadTimeout} (silence
    past the read timeout) or L{InternalError} (a bug in lbproxy, sending or
    in the sink).  A refused or timed-out connect fails before there is a
    connection (L{lbproxy.upstream.client.UpstreamClient.send_fresh}).

    @ivar state: the L{ConnectionState}; read it, never set it from outside.
    """

    _log = Logger()
    # Set by makeConnection before any other event (Twisted types it as an
    # optional ITransport).
    transport: IStreamTransport
    # The tunnel, once a 101 made this connection one of its ends (a class
    # default: no other connection pays for the slot).
    _receiver: TunnelReceiver | None = None
    # What followed the 101's head in its read: the tunnel's first bytes.
    _tunnel_rest = b""

    def __init__(self, client: ConnectionOwner, server: UpstreamServer) -> None:
        self._client = client
        self.server = server
        self._clock = client.clock
        self._parser = httptools.HttpResponseParser(self)
        self.state = CONNECTING
        # The exchange in progress, from send to its end.
        self._sink: IResponseSink | None = None
        self._request: UpstreamRequest | None = None
        self._body: StreamingBody | None = None
        # Facts about the exchange, not states, since they hold whatever the
        # state: whether the connection served one before (a close before any
        # byte is then StaleConnection), and whether it may go back to the
        # pool (Connection: close, bytes after the answer or an unsent body
        # rest say no), read when the exchange ends.
        self._reused = False
        self._reusable = True
        # The client side's backpressure: it comes and goes while the body is
        # relayed, and the end of the exchange undoes it.
        self._paused = False
        self._reason = b""
        self._headers: list[Header] = []
        # Bytes of the answer's head so far (interim answers included):
        # counted from the parsed pieces, and from the raw reads while the
        # head is incomplete, against the client's max_headers_size.
        self._head_size = 0
        self._head_read = 0
        self._timer: IDelayedCall | None = None
        self._last_read = 0.0
        self.idle_since = 0.0
        # Counts exchanges, so that abandoning one that is over (the
        # connection went back to the pool and serves another) does nothing.
        self._exchange = 0

    # Protocol

    def connectionMade(self) -> None:
        """
        Turn off Nagle: requests are small and latency matters.
        """
        # Over TLS (https upstreams) the handshake is still to come.
        self.state = HANDSHAKING if INegotiated.providedBy(self.transport) else IDLE
        if ITCPTransport.providedBy(self.transport):
            self.transport.setTcpNoDelay(True)
        # A tunnel's FIN must reach readConnectionLost through the
        # endpoint's wrapper (an HTTP connection then closes, as before).
        pass_fin_through(self.transport, self)

    def handshakeCompleted(self) -> None:
        """
        The TLS handshake succeeded: the server's certificate is verified,
        and a streamed request body waiting for it starts to flow.
        """
        if self.state is HANDSHAKING:
            self.state = IDLE if self._sink is None else AWAITING
        body = self._body
        if body is not None:
            # send() ran during the handshake and held the body back.
            body.attach(self.transport, self._body_sent)

    def dataReceived(self, data: bytes) -> None:
        """
        Parse answer bytes; finish the exchange when the answer is complete.
        """
        state = self.state
        if state is AWAITING:
            self.state = state = READING_HEAD
        elif state not in _READING:
            if state is TUNNEL:
                # (Without a receiver the sink is aborting it.)
                if self._receiver is not None:
                    self._receiver.tunnel_data(data)
                return
            # No answer expected (IDLE, CLOSING): the server broke the protocol.
            self._reusable = False
            self.transport.loseConnection()
            return
        self._last_read = self._clock.seconds()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            # An exception raised inside one of the callbacks below, which
            # httptools wraps: the server's fault only if it is a refusal
            # of the answer; anything else is a bug in lbproxy (the sink
            # runs inside these callbacks).
            cause = e.__context__
            if isinstance(cause, _RefusedAnswer):
                self._fail(InvalidResponse(str(cause)))
            else:
                self._internal_error(cause or e, "handling the answer")
            return
        except httptools.HttpParserError as e:
            self._fail(InvalidResponse(f"invalid HTTP response: {_parser_message(e)}"))
            return
        except httptools.HttpParserUpgrade as e:
            # llhttp stops at the end of a 101's head (on_headers_complete
            # accepted it as TUNNEL); what follows is not HTTP.
            if self.state is TUNNEL:
                self._switched(data[e.args[0] :])
            else:
                self._fail(InvalidResponse("invalid HTTP response: an unexpected protocol switch"))
            return
        if state is READING_HEAD and self.state is READING_HEAD:
            # Still in the head after this read, so all of it was head:
            # llhttp would buffer a header line of any length, so stop here.
            self._head_read += len(data)
            if self._head_read > self._client.max_headers_size:
                self._fail(InvalidResponse(self._too_big_header()))
        elif self.state is DONE:
            self._finish_exchange()
        elif self._sink is not None and self.state is not READING_HEAD:
            # The head, and maybe some body, went to the sink in this read;
            # more will come in later ones.
            self._sink.response_read_done()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Leave the idle pool at once; fail or end the exchange in progress.
        """
        state, self.state = self.state, CLOSED
        self._client.connection_closed(self)
        receiver, self._receiver = self._receiver, None
        if receiver is not None:
            # A tunnel's end, however it closed; nothing follows (and the
            # tunnel's side, which refers to this connection, is let go).
            receiver.tunnel_lost(reason)
            return
        if state is READING_TO_CLOSE:
            # The body was delimited by the end of the connection.
            self._reusable = False
            self._finish_exchange()
        elif state is AWAITING:
            why = _reason_text(reason)
            if self._reused:
                self._fail(StaleConnection(f"reused connection closed: {why}"))
            else:
                self._fail(ResponseTruncated(f"closed before answering: {why}"))
        elif state is READING_HEAD:
            self._fail(InvalidResponse("closed in the middle of the response headers"))
        elif state is READING_BODY:
            self._fail(ResponseTruncated("closed in the middle of the response body"))
        elif state is HANDSHAKING and self._sink is not None:
            # The request never left lbproxy (TLS buffers it until the
            # handshake is done): a failed connect, safe to try elsewhere.
            why = tls_failure_text(reason) or _reason_text(reason)
            self._fail(ConnectFailed(f"TLS handshake failed: {why}"))

    # Sending

    def send(
        self, request: UpstreamRequest, sink: IResponseSink, reused: bool
    ) -> Callable[[], None]:
        """
        Start an exchange on this (idle, connected) connection.

        @param request: what to send.
        @param sink: where the answer goes.
        @param reused: whether this connection served an exchange before,
            which decides between L{StaleConnection} and L{ResponseTruncated}
            if it closes before answering.
        @return: a function that abandons this exchange (the client went
            away): it drops the connection while the exchange is in
            progress, and does nothing once it is over, when the connection
            may already carry another client's request.
        """
        self._exchange += 1
        abandon = partial(self._abandon, self._exchange)
        self._sink = sink
        self._request = request
        self._reused = reused
        self._last_read = self._clock.seconds()
        self._timer = self._clock.callLater(self._client.read_timeout, self._check_read_timeout)
        if self.state is not HANDSHAKING:
            self.state = AWAITING
        body = request.body
        if isinstance(body, bytes):
            send_now(self.transport, request.head + body if body else request.head)
            return abandon
        send_now(self.transport, request.head)
        self._body = body
        if self.state is HANDSHAKING:
            # TLS holds what is written until its handshake is done, and a
            # failed handshake drops it.  The head is rebuilt for the next
            # server, but body bytes handed over now would count as sent and
            # be lost: the next server would get the Content-Length and no
            # body.  The body stays pending (and can fail over) until
            # handshakeCompleted.
            return abandon
        # The body follows as the client sends it; the transport pauses it
        # (and so the client) when the app server reads slowly.
        body.attach(self.transport, self._body_sent)
        return abandon

    def _body_sent(self) -> None:
        # The read timeout starts now, as nginx's proxy_read_timeout starts
        # once the request is sent; until now it was not running.
        self._last_read = self._clock.seconds()

    def _abandon(self, exchange: int) -> None:
        if exchange == self._exchange and self.state not in _BETWEEN_EXCHANGES:
            self.abort()

    def abort(self) -> None:
        """
        Abandon whatever exchange is in progress: drop the connection,
        which is never put back half-read.  (Callers outside this module
        use the function L{send} returns, bound to their exchange.)
        """
        self._sink = None
        # (Twisted's connector keeps this connection in a reference cycle
        # until the collector runs: it must not keep the request too.)
        self._request = None
        self._stop_body(keep=False)
        self._cancel_timer()
        if self.state is not CLOSED:
            self.state = CLOSING
            self.transport.abortConnection()

    # IPushProducer: the client side pauses us when it cannot keep up.

    def pauseProducing(self) -> None:
        """
        Stop reading from the app server until L{resumeProducing}.
        """
        if not self._paused and self.state is not CLOSED:
            self._paused = True
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        """
        Read from the app server again.
        """
        if self._paused and self.state is not CLOSED:
            self._paused = False
            self._last_read = self._clock.seconds()
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        """
        The consumer is gone: abandon the exchange.
        """
        self.abort()

    # The upstream end of a tunnel (lbproxy.interfaces.TunnelEnd)

    def _switched(self, rest: bytes) -> None:
        """
        A 101 ended HTTP on this connection: it leaves its exchange (and is
        never pooled again), and the sink makes it a tunnel's end.

        @param rest: what followed the 101's head in the same read.
        """
        sink = self._sink
        assert sink is not None
        self._sink = None
        self._request = None
        # The exchange's abandon() no longer applies: the tunnel owns it.
        self._exchange += 1
        # The tunnel has its own timeout.
        self._cancel_timer()
        self._tunnel_rest = rest
        reason, headers = self._reason, self._headers
        self._reset_answer()
        try:
            sink.response_switched(reason, headers, self)
        except Exception:
            self._sink = sink
            self.internal_error(sink, "opening the tunnel")

    @property
    def half_close(self) -> bool:
        """
        Whether the app server's FIN can be passed on, and one sent to it:
        on plain TCP (a TLS connection is a C{TLSMemoryBIOProtocol}).
        """
        return isinstance(self.transport, tcp.Connection)

    def attach(self, receiver: TunnelReceiver) -> None:
        """
        Report to C{receiver} from now on, starting with the bytes that
        followed the 101.
        """
        self._receiver = receiver
        rest, self._tunnel_rest = self._tunnel_rest, b""
        if rest:
            receiver.tunnel_data(rest)

    def readConnectionLost(self) -> None:
        """
        The app server sent a FIN: a tunnel passes it on; on an HTTP
        connection it is the close, as for a protocol that is not
        half-closeable.
        """
        if self._receiver is not None:
            self._receiver.tunnel_read_closed()
        else:
            close_after_fin(self.transport)

    def writeConnectionLost(self) -> None:
        """
        Our FIN went out; nothing more to do.
        """

    # httptools callbacks (called from inside feed_data)

    def on_message_begin(self) -> None:
        if self.state is DONE:
            # More bytes after a complete answer: unsolicited data.
            self._reusable = False

    def on_status(self, status: bytes) -> None:
        self._reason += status
        self._head_size += len(status)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        # The bytes of "Name: value\r\n".
        self._head_size += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        if self.state is not READING_HEAD:
            # An unsolicited answer after a complete one (DONE), or the sink
            # abandoned the exchange inside a callback (CLOSING): ignored.
            return
        # "HTTP/1.1 200 " and the CRLFs ending the status line and the head.
        self._head_size += 17
        if self._head_size > self._client.max_headers_size:
            # nginx's "upstream sent too big header" (past
            # proxy_buffer_size): 502.  nginx counts it as a failure of the
            # server (NGX_HTTP_UPSTREAM_FT_INVALID_HEADER marks the peer
            # failed for max_fails), and so does lbproxy, since it is an
            # InvalidResponse; like nginx's default proxy_next_upstream it
            # is not retried elsewhere.
            raise _RefusedAnswer(self._too_big_header())
        parser = self._parser
        status = parser.get_status_code()
        if status < 200:
            if status == 101:
                # RFC 9110 section 15.2.2: HTTP ends with this head, if the
                # request offered the switch.  llhttp then raises
                # HttpParserUpgrade, with where the tunnel's bytes start.
                assert self._request is not None
                refusal = switch_refusal(self._request.upgrade, self._headers)
                if refusal is not None:
                    raise _RefusedAnswer(f"invalid HTTP response: {refusal}")
                self.state = TUNNEL
                return
            # An interim answer (100 Continue, 103 Early Hints): skip it.
            # lbproxy holds the whole body already and sends no Expect.  The
            # state stays READING_HEAD, which its on_message_complete keeps.
            self._headers = []
            self._reason = b""
            return
        headers = self._headers
        framing_error = response_framing_error(headers)
        if framing_error is not None:
            # llhttp reads such an answer until EOF; refuse it (502).
            raise _RefusedAnswer(f"invalid HTTP response: {framing_error}")
        if not parser.should_keep_alive():
            self._reusable = False
        if self._request is not None and self._request.head_only:
            # llhttp cannot be told that a HEAD answer has no body: finish
            # here and give the next exchange a fresh parser.
            self.state = DONE
            self._parser = httptools.HttpResponseParser(self)
        elif _delimited_by_eof(status, headers):
            self.state = READING_TO_CLOSE
        else:
            self.state = READING_BODY
        assert self._sink is not None
        self._sink.response_headers(status, self._reason, headers, self)

    def on_body(self, body: bytes) -> None:
        state = self.state
        if state is READING_BODY or state is READING_TO_CLOSE:
            self._sink.response_body(body)  # type: ignore[union-attr]  # set while reading

    def on_message_complete(self) -> None:
        # (An interim answer's end leaves READING_HEAD as it is.)
        state = self.state
        if state is READING_BODY or state is READING_TO_CLOSE:
            self.state = DONE

    # Internals

    def _finish_exchange(self) -> None:
        sink = self._sink
        assert sink is not None
        self._sink = None
        self._request = None
        self._cancel_timer()
        if self._body is not None and not self._body.complete:
            # Answered before the body was all sent (an early 413, say):
            # the rest is dropped, and the connection cannot be reused.
            self._reusable = False
        self._stop_body(keep=False)
        self._reset_answer()
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()
        # (CLOSED: the server's close ended the answer.)
        if self.state is not CLOSED:
            if self._reusable:
                self.state = IDLE
                self._client.connection_idle(self)
            else:
                self.state = CLOSING
                self.transport.loseConnection()
        sink.response_done()

    def _fail(self, error: UpstreamError) -> None:
        sink = self._sink
        self._sink = None
        self._request = None
        self._reusable = False
        # A body none of which was sent is kept for another server.
        self._stop_body(keep=True)
        self._cancel_timer()
        if self.state is not CLOSED:
            self.state = CLOSING
            self.transport.abortConnection()
        if sink is not None:
            sink.response_failed(error)

    def internal_error(self, sink: IResponseSink, doing: str) -> None:
        """
        An exception escaped while sending on this connection for C{sink}:
        log it and fail the exchange with L{InternalError}; the connection
        is dropped.  Call from an C{except} block.

        @param doing: what was being done, for the log line.
        """
        self._log.failure(
            "lbproxy internal error {doing} for {server}", doing=doing, server=self.server.address
        )
        self._sink = sink
        self._fail(InternalError(f"lbproxy internal error {doing} (traceback logged)"))

    def _internal_error(self, error: BaseException, doing: str) -> None:
        self._log.failure(
            "lbproxy internal error {doing} from {server}",
            failure=Failure(error, type(error), error.__traceback__),
            doing=doing,
            server=self.server.address,
        )
        self._fail(InternalError(f"lbproxy internal error {doing} (traceback logged)"))

    def _too_big_header(self) -> str:
        return (
            f"upstream sent too big header (more than {self._client.max_headers_size} bytes, "
            "--max-upstream-headers-size)"
        )

    def _reset_answer(self) -> None:
        self._reason = b""
        self._headers = []
        self._head_size = 0
        self._head_read = 0

    def _stop_body(self, keep: bool) -> None:
        body, self._body = self._body, None
        if body is None:
            return
        if keep and not body.sent_any:
            body.release()
        else:
            body.detach()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _check_read_timeout(self) -> None:
        """
        Fire the read timeout lazily: activity only records the time, and
        the single timer re-arms itself for the remainder.  This keeps timer
        work off the per-chunk path.
        """
        self._timer = None
        if self.state in _BETWEEN_EXCHANGES:
            return
        now = self._clock.seconds()
        if self._paused or (self._body is not None and not self._body.complete):
            # Paused by a slow client (the send timeout of the client side
            # governs), or still sending the body (the app server may wait
            # for all of it, as nginx's proxy_read_timeout starts after
            # sending; a stalled body is the client's 408): the read timeout
            # is not running.  _body_sent and resumeProducing restart it
            # from their own moment.
            self._last_read = now
        timeout = self._client.read_timeout  # may change on reload
        remaining = self._last_read + timeout - now
        if remaining > 0:
            self._timer = self._clock.callLater(remaining, self._check_read_timeout)
            return
        self._fail(ReadTimeout(f"no answer for {timeout:g} s (read timeout)"))


def _delimited_by_eof(status: int, headers: list[Header]) -> bool:
    """
    Whether the body of an answer to a request other than C{HEAD} runs
    until the connection closes (RFC 9112 section 6.3, rule 8): no length,
    not chunked, and a status that has a body.
    """
    if status in (204, 304):
        return False
    for name, value in headers:
        lower = name.lower()
        if lower == b"content-length":
            return False
        if lower == b"transfer-encoding" and b"chunked" in value.lower():
            return False
    return True


def _parser_message(error: Exception) -> str:
    # An error raised in a callback comes wrapped as "User callback error".
    return str(error.__context__ or error) or type(error).__name__


def _reason_text(reason: Failure) -> str:
    if reason.check(ierror.ConnectionDone):
        return "closed by the server"
    if reason.check(ierror.ConnectionLost):
        return "connection reset"
    return reason.getErrorMessage()


def response_framing_error(headers: Iterable[Header]) -> str | None:
    """
    Why an app server's response framing is unacceptable, if it is.

    llhttp rejects conflicting lengths and bad chunks itself, but reads a
    response whose C{Transfer-Encoding} is not C{chunked} (C{gzip},
    C{chunked, gzip}, C{chunked} twice) until the connection closes
    (RFC 9112 section 6.3 rule 4) or de-chunks it while the coding before
    C{chunked} is lost.  lbproxy answers 502 instead.

    @param headers: the response headers.
    @return: a reason, or L{None} if the framing is acceptable.
    """
    codings: list[bytes] = []
    for name, value in headers:
        # The length test keeps this cheap: it runs for every response.
        if len(name) == 17 and name.lower() == b"transfer-encoding":
            codings.extend(coding.strip(b" \t").lower() for coding in value.split(b","))
    if not codings or codings == [b"chunked"]:
        return None
    return "Transfer-Encoding other than chunked"
