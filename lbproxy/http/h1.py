# -*- test-case-name: tests.http.test_h1 -*-
"""
The lean HTTP/1.1 server side: one L{HTTP11Connection} per client
connection, one L{HTTP11Request} per request.

Why not twisted.web's C{HTTPChannel} and C{Request}: a twisted.web C{Site}
answering a constant body tops out at about 13k requests/s on our
benchmark machine (bench/RESULTS.md), below what the proxy must reach;
its per-request cost (a C{Request} with C{Headers} objects both ways, the
resource traversal, several producer hand-offs, the access log through the
logging system) is the ceiling.  A proxy needs far less: the head is
checked and normalised by the framing gate (L{lbproxy.http.framing}, the
one authority on where a request ends), the body streams to the app server,
and the answer's head and body are written as they come.  HTTP/2 keeps
Twisted's C{H2Connection} (L{lbproxy.http.negotiate}).

What a connection does, in order:

  - reads a request head and passes it through the gate (414, 431, 400,
    501, 505 are answered here with C{Connection: close}, then a lingering
    close, as nginx);
  - hands the request to its L{RequestHandler} (the proxy), and streams the
    body (identity or strict chunked decoding) into the request's
    L{StreamingBody};
  - writes the answer the handler gives: head, then body (chunked when the
    app's answer had no length and the client speaks HTTP/1.1, else until
    the connection closes), and an access log line;
  - answers pipelined requests one at a time, in order;
  - after a C{101 Switching Protocols} to an upgrade request, stops
    speaking HTTP: the connection is the client end of a tunnel
    (L{lbproxy.proxy.tunnel}), and what it reads is not parsed.

Reading is paused for one of several reasons at once (the app server is
slow to take the body, pipelined requests are waiting): the connection is
the one owner of its transport's pause and resumes only when no reason is
left.  Writing is paced by the client: when its buffer is full the
answer's producer (the exchange, which pauses the app server and runs the
send timeout) is paused.

Timeouts, all on one timer per connection (nginx's): idle between requests
(C{client_timeout}), the whole head from its first byte
(C{header_timeout}), and a body stalled between two reads
(C{body_timeout}).  A connection closed for idleness whose client does not
take the last bytes is aborted after L{ABORT_AFTER} seconds.
"""

from __future__ import annotations

import enum
from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from lbproxy.http.chunked import ChunkedDecoder, IdentityDecoder
from lbproxy.http.framing import (
    FramingError,
    HeadReader,
    RequestHead,
    connection_tokens,
    error_response,
)
from lbproxy.http.h1request import HTTP11Request
from lbproxy.http.settings import ConnectionHost, ConnectionSettings
from lbproxy.interfaces import IStreamTransport, TunnelReceiver
from lbproxy.twistedinternals import close_after_fin, send_now, unsent_bytes
from lbproxy.upstream.body import StreamingBody
from lbproxy.upstream.upgrade import upgrade_offer

__all__ = ["HTTP11Connection"]

#: Seconds a refused client may keep sending before its connection is
#: aborted (nginx's C{lingering_timeout} is 5 s).
LINGER = 5.0

#: Seconds a connection being closed may take to send its last bytes
#: before it is aborted (twisted.web's C{HTTPChannel.abortTimeout}).
ABORT_AFTER = 15.0

_NO_PAUSES: frozenset[str] = frozenset()

#: Bytes of pipelined requests read while an answer is in progress before
#: reading pauses (twisted.web's C{_optimisticEagerReadSize}): reading a
#: little keeps a client's disconnect visible during a long answer.
EAGER_READ = 16 * 1024


class _Reading(enum.Enum):
    """
    Where a connection is in reading its current request.

    IDLE -> HEAD -> BODY -> DONE -> IDLE (next request), or HEAD -> DONE
    for a request without a body; CLOSING from anywhere (refused, closing
    after an answer, idle timeout), after which input is dropped; DONE ->
    TUNNEL when an upgrade request is answered with 101.
    """

    #: Between requests: the idle timeout runs.
    IDLE = "idle"
    #: A head has begun: the header timeout runs.
    HEAD = "head"
    #: The body is arriving: the body timeout runs.
    BODY = "body"
    #: The request is read whole; its answer is in progress.
    DONE = "done"
    #: Refused or closing: input is dropped.
    CLOSING = "closing"
    #: Answered with 101: HTTP is over, the connection is a tunnel's end.
    TUNNEL = "tunnel"


class _BodyReader:
    """
    The connection as a request body pauses and resumes it (backpressure
    from the app server): one reason among the connection's pauses.
    """

    __slots__ = ("_connection",)

    def __init__(self, connection: HTTP11Connection) -> None:
        self._connection = connection

    def pauseProducing(self) -> None:
        self._connection.pause_reading("body")

    def resumeProducing(self) -> None:
        self._connection.resume_reading("body")


# IHalfCloseableProtocol on the class, not added once a tunnel opens: a
# wrapping protocol decides when it is built whether to pass a FIN on.
@implementer(IPushProducer, IHalfCloseableProtocol)
class HTTP11Connection(Protocol):
    """
    One HTTP/1.x client connection; see the module docstring.

    It is the transport's producer (told when the client's buffer is full,
    which pauses the answer's producer) and the one owner of the
    transport's reading pause.

    @ivar settings: the site's settings when the connection opened.
    @ivar secure: whether the transport is TLS.
    @ivar client_address: the client's IP address.
    @ivar local_host: the listener's address, as a C{Host} value.
    @ivar closing_after_answer: the connection closes after the current
        answer (lbproxy is stopping).
    """

    _log = Logger()
    # Set by makeConnection before any other event; read only while
    # _connected (Twisted types it as an optional ITransport).
    transport: IStreamTransport
    # The tunnel, once a 101 made this connection one of its ends (a class
    # default: an HTTP connection pays nothing for it).
    _tunnel: TunnelReceiver | None = None

    def __init__(
        self, settings: ConnectionSettings, clock: IReactorTime, host: ConnectionHost | None = None
    ) -> None:
        """
        @param settings: limits, timeouts, handler, access log.
        @param clock: what tells the time and schedules the timer.
        @param host: the site, told when the connection opens and closes.
        """
        self.settings = settings
        self.secure = False
        self._host = host
        self._h2: Any = None
        self.closing_after_answer = False
        self.client_address = b"-"
        self.local_host = b"localhost"
        self._clock = clock
        self._reader = HeadReader(settings.limits)
        self._buffer = b""
        self._head_offset = 0
        self._reading = _Reading.IDLE
        self._request: HTTP11Request | None = None
        self._decoder: Any = None
        # Reasons reading is paused for; a shared empty set while there is
        # none (an idle connection allocates nothing for it).
        self._pauses: frozenset[str] = _NO_PAUSES
        self._write_paused = False
        self._producer: IPushProducer | None = None
        self._in_loop = False
        self._timer: IDelayedCall | None = None
        self._idle_since = 0.0
        self._head_started = 0.0
        self._body_last_read = 0.0
        self._connected = False

    # Connection life

    def connectionMade(self) -> None:
        """
        Learn the addresses, register as the transport's producer and start
        the idle timeout.
        """
        transport = self.transport
        self._connected = True
        if self._host is not None:
            self._host.connection_opened(self)
        if ISSLTransport.providedBy(transport):
            self.secure = True
            # ALPN is settled by the client's first bytes' arrival: look
            # then, once (the plain path pays nothing for it).
            self.dataReceived = self._first_tls_data  # type: ignore[method-assign]
        peer = transport.getPeer()
        host = getattr(peer, "host", None)
        self.client_address = host.encode("ascii") if isinstance(host, str) else b"unix:"
        local = transport.getHost()
        local_host = getattr(local, "host", None)
        if isinstance(local_host, str):
            name = f"[{local_host}]" if ":" in local_host else local_host
            self.local_host = f"{name}:{local.port}".encode("ascii")
        if ITCPTransport.providedBy(transport):
            transport.setTcpNoDelay(True)
        transport.registerProducer(self, True)
        self._idle_since = self._clock.seconds()
        self._arm(self._idle_since + self.settings.client_timeout)

    def _first_tls_data(self, data: bytes) -> None:
        """
        The first bytes over TLS: if the client picked C{h2} by ALPN, the
        connection becomes an HTTP/2 one (this object passes it the
        transport's events); else it is HTTP/1.1 as usual.
        """
        del self.dataReceived  # back to the class's
        if getattr(self.transport, "negotiatedProtocol", None) == b"h2" and self._host is not None:
            self._cancel_timer()
            self._reading = _Reading.CLOSING
            transport = self.transport
            transport.unregisterProducer()
            h2 = self._h2 = self._host.http2_connection()
            h2.makeConnection(transport)
            transport.registerProducer(h2, True)
            self.dataReceived = h2.dataReceived  # type: ignore[method-assign]
            self.pauseProducing = h2.pauseProducing  # type: ignore[method-assign]
            self.resumeProducing = h2.resumeProducing  # type: ignore[method-assign]
            self.stopProducing = h2.stopProducing  # type: ignore[method-assign]
        self.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Stop the timer; a request in progress is given up on (its exchange
        is told, and it is logged with status 499 if no answer began).
        """
        self._connected = False
        if self._host is not None:
            self._host.connection_closed(self)
        if self._h2 is not None:
            self._h2.connectionLost(reason)
            return
        self._reading = _Reading.CLOSING
        self._cancel_timer()
        tunnel, self._tunnel = self._tunnel, None
        if tunnel is not None:
            # Nothing follows; the tunnel's side refers to this connection.
            tunnel.tunnel_lost(reason)
            return
        request, self._request = self._request, None
        if request is None or request.finished:
            return
        request.finished = True
        if request.body is not None:
            request.body.detach()
        if request.exchange is not None:
            request.exchange.client_gone()
            # Over (DONE): the exchange and this request refer to each other.
            request.exchange = None
        if not request.answer_started:
            request.status = 499  # nginx's "client closed request"
        self.settings.access_log.request_done(request)

    def abort(self) -> None:
        """
        Drop the connection at once (a reset): an answer that cannot be
        completed, a client that stopped reading, a drain that ran out.
        """
        self._reading = _Reading.CLOSING
        if self._connected:
            self.transport.abortConnection()

    def close_when_idle(self) -> None:
        """
        Close after the current answer, or now if there is none (stopping).
        """
        self.closing_after_answer = True
        if self._h2 is not None:
            if self._connected:
                self.transport.unregisterProducer()
                self.transport.loseConnection()
            return
        if self._request is None:
            self._close()

    def _close(self) -> None:
        """
        Close once what was written is sent; abort if that takes longer
        than L{ABORT_AFTER} (a client that no longer reads).
        """
        self._reading = _Reading.CLOSING
        if not self._connected:
            return
        # A TLS transport closes only once its producer is gone.
        self.transport.unregisterProducer()
        self.transport.loseConnection()
        self._cancel_timer()
        self._timer = self._clock.callLater(ABORT_AFTER, self.abort)

    def unsent(self) -> int | None:
        """
        Bytes written to the client that wait in lbproxy for its socket.
        """
        return unsent_bytes(self.transport) if self._connected else None

    # Reading

    def dataReceived(self, data: bytes) -> None:
        """
        Bytes from the client: body bytes to the decoder, the rest to the
        head parser (or held while an answer is in progress).
        """
        reading = self._reading
        if reading is _Reading.BODY:
            self._body_last_read = self._clock.seconds()
            try:
                self._decoder.dataReceived(data)
            except FramingError as error:
                self._reject(error)
            return
        if reading is _Reading.CLOSING:
            return
        self._buffer = self._buffer + data if self._buffer else data
        if reading is _Reading.DONE:
            if len(self._buffer) > EAGER_READ:
                self.pause_reading("pipeline")
            return
        self._read_requests()

    def _read_requests(self) -> None:
        """
        Start every complete request in the buffer, one at a time: the next
        starts only once the current one is answered (which may happen at
        once, for lbproxy's own answers).
        """
        if self._in_loop:
            return
        self._in_loop = True
        try:
            while self._request is None and self._buffer and self._reading is not _Reading.CLOSING:
                head = self._next_head()
                if head is None:
                    return
                self._start(head)
        finally:
            self._in_loop = False

    def _next_head(self) -> RequestHead | None:
        """
        The next complete head in the buffer, through the gate; L{None} if
        it is not complete yet.  The complete lines of an unfinished head
        go through the gate as they arrive, so limits apply before the head
        ends and nothing unbounded is held.
        """
        data = self._buffer
        if self._reading is _Reading.IDLE:
            self._reading = _Reading.HEAD
            self._head_started = self._clock.seconds()
            self._arm(self._head_started + self.settings.header_timeout)
        start = self._head_offset
        end = data.find(b"\r\n\r\n", max(start - 2, 0))
        line = self._reader.line
        try:
            if end == -1:
                last = data.rfind(b"\r\n")
                if last >= start:
                    for each in data[start:last].split(b"\r\n"):
                        line(each)
                    self._head_offset = start = last + 2
                limits = self.settings.limits
                if len(data) - start > max(limits.max_request_line, limits.max_header_line):
                    raise self._reader.line_too_long()
                if data.find(b"\n", start) != -1:
                    # RFC 9112 section 2.2: a bare LF is refused at once,
                    # not after waiting for a CRLF.
                    raise FramingError(400, "bare LF line ending")
                return None
            if end >= start:
                for each in data[start:end].split(b"\r\n"):
                    line(each)
            head = line(b"")
            if head is None:
                raise FramingError(400, "malformed request line")
        except FramingError as error:
            self._reject(error)
            return None
        self._buffer = data[end + 4 :]
        self._head_offset = 0
        return head

    def _start(self, head: RequestHead) -> None:
        """
        A head passed the gate: make the request, set up its body, and hand
        it to the handler (or redirect it to https).
        """
        now = self._clock.seconds()
        request = HTTP11Request(self, head, now)
        self._request = request
        if request.keep_alive:
            values = [v for n, v in head.headers if len(n) == 10 and n.lower() == b"connection"]
            if values:
                tokens = connection_tokens(values)
                if b"close" in tokens:
                    # RFC 9112 section 9.6; every Connection header counts.
                    request.keep_alive = False
                if b"upgrade" in tokens and head.body_length == 0:
                    # RFC 9110 section 7.8, on HTTP/1.1 only (keep_alive
                    # started true), without a body (lbproxy's choice).
                    request.upgrade = upgrade_offer(head.headers)
        redirect = bool(self.settings.redirect_https) and not self.secure
        length = head.body_length
        if length != 0:
            body = StreamingBody(_BodyReader(self), length)
            feed = _drop if redirect else body.feed
            if not redirect:
                request.body = body
            if length is None:
                self._decoder = ChunkedDecoder(feed, self._body_done, self.settings.limits)
            else:
                self._decoder = IdentityDecoder(length, feed, self._body_done)
            self._reading = _Reading.BODY
            self._body_last_read = now
            self._arm(now + self.settings.body_timeout)
            expect = request.header(b"expect")
            if (
                expect is not None
                and expect.lower() == b"100-continue"
                and head.version == b"HTTP/1.1"
            ):
                # RFC 9110 section 10.1.1: lbproxy reads the body at once.
                self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        else:
            self._reading = _Reading.DONE
        try:
            if redirect:
                request.redirect_to_https(self.settings.redirect_https)
            else:
                self.settings.handler.handle(request)
        except Exception:
            self._log.failure("lbproxy internal error while starting a request")
            if request.exchange is not None:
                request.exchange.client_gone()
            if request.body is not None:
                request.body.detach()
            if not request.answer_started:
                request.respond_text(500, b"Internal Server Error", b"internal error\n")
            else:
                request.abort()
        if self._reading is _Reading.BODY and self._buffer:
            rest, self._buffer = self._buffer, b""
            self.dataReceived(rest)

    def _body_done(self, rest: bytes) -> None:
        """
        The body is complete; C{rest} is what followed it (pipelined).
        """
        request = self._request
        self._decoder = None
        self._reading = _Reading.DONE
        self._buffer = rest
        # The body's pause ends with it: the read that completed it may
        # also have paused it (the app server's buffer filled), and
        # nothing resumes a complete body.  What follows is pipelined
        # requests, held by their own reason.
        self.resume_reading("body")
        answered = request is None or request.finished
        if request is not None and request.body is not None:
            # This may finish the answer (a handler that answers once it
            # has the whole body), which goes on to the next request: that
            # must not be done twice.
            request.body.end()
        if answered:
            self._next_request()
        elif request is not None and not request.finished and len(rest) > EAGER_READ:
            self.pause_reading("pipeline")

    def pause_reading(self, reason: str) -> None:
        """
        Stop reading from the client for C{reason} (C{"body"}: the app
        server is slow to take it; C{"pipeline"}: requests wait behind an
        answer).
        """
        if not self._pauses and self._connected:
            self.transport.pauseProducing()
        if reason not in self._pauses:
            self._pauses = self._pauses | {reason}

    def resume_reading(self, reason: str) -> None:
        """
        C{reason} is gone; read again if it was the last one.
        """
        if reason not in self._pauses:
            return
        self._pauses = self._pauses - {reason} if len(self._pauses) > 1 else _NO_PAUSES
        if reason == "body":
            # Time paused by the app server does not count against the client.
            self._body_last_read = self._clock.seconds()
        if not self._pauses and self._connected:
            self.transport.resumeProducing()

    # Writing

    def write(self, data: bytes) -> None:
        """
        Write to the client, straight to its socket when nothing waits.
        """
        if self._connected:
            send_now(self.transport, data)

    def answer_producer(self, producer: IPushProducer) -> None:
        """
        The current answer's body comes from C{producer}: paused while the
        client's buffer is full.
        """
        self._producer = producer
        if self._write_paused:
            producer.pauseProducing()

    def answer_done(self, request: HTTP11Request) -> None:
        """
        C{request}'s answer is complete: log it, and go on to the next
        request once its body is read too.
        """
        self._producer = None
        self.settings.access_log.request_done(request)
        # The exchange is over: without this link the request and its
        # exchange (which refer to each other) are freed by reference
        # counting, not left to the cyclic garbage collector, whose full
        # collections stalled the reactor for tens of milliseconds at
        # c=1024 (bench/RESULTS.md).
        request.exchange = None
        if not request.keep_alive:
            if request.body is not None:
                request.body.detach()
            self._close()
            return
        if self._reading is _Reading.BODY:
            # Answered before the body was read whole (an early 413): the
            # rest is read and dropped, then the next request is read.
            if request.body is not None:
                request.body.detach()
            return
        self._next_request()

    def _next_request(self) -> None:
        self._request = None
        if self.closing_after_answer:
            self._close()
            return
        self._reading = _Reading.IDLE
        self._idle_since = self._clock.seconds()
        self._arm(self._idle_since + self.settings.client_timeout)
        self.resume_reading("pipeline")
        if self._buffer:
            self._read_requests()

    # The client end of a tunnel (lbproxy.interfaces.TunnelEnd)

    def switch_protocols(self, head: bytes) -> HTTP11Connection:
        """
        The current request is answered with C{head}, a C{101}: HTTP ends
        here (RFC 9110 section 15.2.2), and the connection becomes a
        tunnel's client end, for the tunnel to L{attach}.  What the client
        sent after the request waits for the tunnel.
        """
        self._reading = _Reading.TUNNEL
        self._request = None
        self._producer = None
        # Tunnels have their own timeout; none of HTTP's applies now.
        self._cancel_timer()
        self.write(head)
        if self._connected:
            # The tunnel registers its own producer.
            self.transport.unregisterProducer()
        return self

    @property
    def half_close(self) -> bool:
        """
        Whether the client's FIN can be passed on, and one sent to it: on
        plain TCP and UNIX sockets (not TLS, nor a PROXY protocol wrapper,
        which reports a FIN as the close).
        """
        return isinstance(self.transport, tcp.Connection)

    def attach(self, receiver: TunnelReceiver) -> None:
        """
        Report to C{receiver} from now on, starting with what the client
        sent after its upgrade request.
        """
        self._tunnel = receiver
        if not self._connected:
            receiver.tunnel_lost(connectionDone)
            return
        # As _first_tls_data: reads go straight to the tunnel, past HTTP.
        self.dataReceived = receiver.tunnel_data  # type: ignore[method-assign]
        if self._pauses:
            # Paused for pipelined bytes, which are the tunnel's.
            self._pauses = _NO_PAUSES
            self.transport.resumeProducing()
        pending, self._buffer = self._buffer, b""
        if pending:
            receiver.tunnel_data(pending)

    def readConnectionLost(self) -> None:
        """
        The client sent a FIN: a tunnel passes it on; an HTTP connection
        closes, as one that is not half-closeable.
        """
        if self._tunnel is not None:
            self._tunnel.tunnel_read_closed()
        else:
            close_after_fin(self.transport)

    def writeConnectionLost(self) -> None:
        """
        Our FIN went out; nothing more to do.
        """

    # IPushProducer: the transport tells us when the client's buffer is full.

    def pauseProducing(self) -> None:
        """
        The client is not reading: pause the answer's producer.
        """
        self._write_paused = True
        if self._producer is not None:
            self._producer.pauseProducing()

    def resumeProducing(self) -> None:
        """
        The client caught up: resume the answer's producer.
        """
        self._write_paused = False
        if self._producer is not None:
            self._producer.resumeProducing()

    def stopProducing(self) -> None:
        """
        The transport is going away; L{connectionLost} follows.
        """

    # Timeouts

    def _arm(self, deadline: float) -> None:
        """
        Make sure the timer fires by C{deadline}.
        """
        timer = self._timer
        delay = max(deadline - self._clock.seconds(), 0.0)
        if timer is None:
            self._timer = self._clock.callLater(delay, self._check_timeouts)
        elif timer.getTime() > deadline:
            timer.reset(delay)

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _check_timeouts(self) -> None:
        """
        Fire whichever timeout is due, else sleep until it is.  Reads only
        record the time; no timer is touched per read.
        """
        self._timer = None
        now = self._clock.seconds()
        settings = self.settings
        reading = self._reading
        if reading is _Reading.IDLE:
            deadline = self._idle_since + settings.client_timeout
            if now >= deadline:
                self._close()
                return
        elif reading is _Reading.HEAD:
            deadline = self._head_started + settings.header_timeout
            if now >= deadline:
                detail = f"request head not complete within {settings.header_timeout:g} s"
                self._reject(FramingError(408, detail))
                return
        elif reading is _Reading.BODY:
            deadline = self._body_last_read + settings.body_timeout
            if now >= deadline:
                if "body" in self._pauses:
                    # lbproxy stopped reading because the app server did:
                    # the stall is the app server's (nginx's
                    # proxy_send_timeout).
                    error = FramingError(504, "the app server stopped reading the request body")
                else:
                    detail = f"request body stalled for {settings.body_timeout:g} s"
                    error = FramingError(408, detail)
                self._reject(error)
                return
        else:
            return
        self._arm(deadline)

    # Refusing

    def _reject(self, error: FramingError) -> None:
        """
        Refuse the request in progress: abandon its exchange (nothing more
        of it reaches an app server), answer C{error} with C{Connection:
        close} and close; or reset the connection if an answer has begun.
        """
        if self._reading is _Reading.CLOSING:
            return
        self._reading = _Reading.CLOSING
        self._cancel_timer()
        on_refused = self.settings.on_refused
        if on_refused is not None:
            on_refused(error, self.client_address.decode("ascii", "replace"))
        request, self._request = self._request, None
        if request is not None:
            request.finished = True
            if request.exchange is not None:
                request.exchange.client_gone()
            if request.body is not None:
                request.body.detach()
            if request.answer_started:
                self.abort()
                return
        if not self._connected:
            return
        transport = self.transport
        transport.unregisterProducer()
        transport.write(error_response(error, self.settings.date()))
        lose_write = getattr(transport, "loseWriteConnection", None)
        if lose_write is None or self.secure:
            # Over TLS the attribute is the TCP transport's below it: a FIN
            # there would cut the TLS stream; close it as TLS does.
            self._close()
            return
        # Lingering close, as nginx's lingering_close: send the answer and a
        # FIN, and read (and drop) what the client still sends, so that
        # closing with unread input (a TCP reset) cannot destroy the answer
        # before the client reads it.
        lose_write()
        self._pauses = _NO_PAUSES
        transport.resumeProducing()
        self._timer = self._clock.callLater(LINGER, self.abort)


def _drop(data: bytes) -> None:
    """
    Drop a piece of a body nobody will take.
    """
