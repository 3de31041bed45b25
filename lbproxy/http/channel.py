# -*- test-case-name: tests.http.test_site -*-
"""
The client connection's HTTP/1.1 channel: lbproxy's framing gate in front of
twisted.web's L{HTTPChannel}, with the client timeouts.

Every line of a request head goes to a L{HeadReader} (L{lbproxy.http.framing})
before Twisted sees it; only a head that passes is handed on, normalised,
and only then does proxying start, so no byte of a refused request reaches
an app server.  Chunked bodies are decoded by the strict
L{lbproxy.http.chunked.ChunkedDecoder}.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.http import HTTPChannel, _IdentityTransferDecoder, datetimeToString

from lbproxy.http.chunked import ChunkedDecoder
from lbproxy.http.framing import (
    DEFAULT_LIMITS,
    FramingError,
    HeadReader,
    Limits,
    RequestHead,
    error_response,
)
from lbproxy.http.ratelog import RateLimitedLog
from lbproxy.proxy.headers import connection_tokens

__all__ = ["ProxyChannel"]

#: Seconds a refused client may keep sending before its connection is
#: aborted (nginx's C{lingering_timeout} is 5 s).
_LINGER = 5.0


class ProxyChannel(HTTPChannel):
    """
    An L{HTTPChannel} behind lbproxy's framing gate, with client timeouts,
    that reads the C{Connection} header correctly.

    Every line of a request head goes to a L{HeadReader} (the gate of
    L{lbproxy.http.framing}) before Twisted sees it; only a head that passes is
    handed on, normalised, to C{HTTPChannel}, which then makes the request
    and starts proxying it.  Chunked bodies are decoded by the strict
    L{ChunkedDecoder}.  A refused request is answered with its status and
    C{Connection: close}, and the connection closes.

    Timeouts (nginx's): the whole head must arrive within
    C{header_timeout} of its first byte (slowloris), and a body may stall
    for at most C{body_timeout} between two reads; both answer 408 (504
    if lbproxy held the body back because the app server stopped reading).
    The idle timeout of C{HTTPChannel} only runs between requests.

    Twisted's C{checkPersistence} reads only the first C{Connection} header
    and splits it on spaces, so C{Connection: x-trace, close} keeps the
    connection open against the client's wish (RFC 9112 section 9.6).

    Reading from the client has one owner, a L{_ReadPauses}: nothing else
    pauses or resumes the transport.  C{HTTPChannel} pauses it for its own
    reasons (the client's write buffer is full; pipelined requests wait
    while one is answered) and L{pause_body} for the upload's (the app
    server is not reading it); it reads again only once no reason is left.
    Otherwise an answer draining to the client would resume reading an
    upload the app server is not taking, and lbproxy would buffer all of it.
    """

    # The gate enforces lbproxy's limits; Twisted's own must never fire
    # first (its 16 kB total would cut the 64 kB allowed).
    totalHeadersSize = sys.maxsize
    maxHeaders = sys.maxsize

    _host: object = None
    _secure: bool | None = None
    _rejected = False
    _head_started: float | None = None
    _body_reading = False
    _body_last_read = 0.0
    _timer: IDelayedCall | None = None
    _log = Logger()

    def __init__(
        self,
        limits: Limits = DEFAULT_LIMITS,
        header_timeout: float | None = 60.0,
        body_timeout: float | None = 60.0,
        clock: IReactorTime | None = None,
        refusals: RateLimitedLog | None = None,
    ) -> None:
        """
        @param limits: the size limits of the framing gate.
        @param header_timeout: seconds a request head may take to arrive
            from its first byte (nginx's C{client_header_timeout}); L{None}
            for no limit.
        @param body_timeout: seconds a request body may stall between two
            reads (nginx's C{client_body_timeout}); L{None} for no limit.
        @param clock: what tells the time; the global reactor if L{None}.
            Timers use C{callLater}, which the site sets to the same
            reactor's.
        @param refusals: where refused requests are logged, shared by the
            site's connections so that a scan is summed up; one of this
            connection's own if L{None}.
        """
        super().__init__()
        self.limits = limits
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[assignment]
        self._clock = clock
        self._refusals = refusals if refusals is not None else RateLimitedLog(clock)
        self._head_reader = HeadReader(limits)
        self.MAX_LENGTH = max(limits.max_request_line, limits.max_header_line)

    def connectionMade(self) -> None:
        """
        As C{HTTPChannel}, then put L{_ReadPauses} between it and the
        transport: Twisted's own pauses and resumes go through it.
        """
        super().connectionMade()
        self._reading = _ReadPauses(self._networkProducer)
        self._networkProducer = self._reading

    @property
    def _body_paused(self) -> bool:
        """
        Whether reading is paused for the body (the app server's stall, not
        the client's).
        """
        return self._reading.paused_for(_BODY)

    def getHost(self) -> object:
        """
        This connection's local address, asked of the socket once: Twisted
        calls it for every request, a C{getsockname} system call each time.
        """
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def isSecure(self) -> bool:
        """
        Whether this connection is TLS, looked up once per connection.
        """
        if self._secure is None:
            self._secure = super().isSecure()
        return self._secure

    # Reading: every line of a head goes through the gate first.

    def dataReceived(self, data: bytes) -> None:
        """
        Note when a head starts (for the header timeout), then parse.

        A head that arrives whole (the usual case) goes through the gate in
        one loop here, without C{LineReceiver} calling L{lineReceived} per
        line; the same L{HeadReader} checks it either way.  A bare LF left
        in an unfinished line is refused at once (RFC 9112 section 2.2)
        rather than after waiting for a CRLF.
        """
        while True:
            if self._rejected:
                return
            if not self.line_mode or self._handlingRequest:
                break
            if self._head_started is None:
                self._start_head()
            if (
                self._buffer
                or self._busyReceiving
                or not self.persistent
                or self._head_reader.in_head
            ):
                # Only a head that starts in this data, on a clean slate,
                # takes the short path.
                break
            end = data.find(b"\r\n\r\n")
            if end == -1:
                break
            line = self._head_reader.line
            try:
                for each in data[:end].split(b"\r\n"):
                    line(each)
                head = line(b"")
            except FramingError as error:
                self._reject(error)
                return
            # The final empty line ends the head (or raised): never None.
            assert head is not None
            self._hand_on(head)
            data = data[end + 4 :]
            if not data:
                return
        super().dataReceived(data)
        if (
            self.line_mode
            and not self._busyReceiving
            and not self._rejected
            and b"\n" in self._buffer
        ):
            self._reject(FramingError(400, "bare LF line ending"))

    def lineReceived(self, line: bytes) -> None:
        """
        One line of a request head, into the gate; a head that passes goes
        on to C{HTTPChannel}.
        """
        if self._rejected or not self.persistent:
            return
        try:
            head = self._head_reader.line(line)
        except FramingError as error:
            self._reject(error)
            return
        if head is not None:
            self._hand_on(head)

    def _hand_on(self, head: RequestHead) -> None:
        """
        Give C{HTTPChannel} the normalised head: the request line makes the
        request, the headers go straight into it, the body's decoder is
        ours, and the empty line ends the head (C{allHeadersReceived}, which
        starts proxying).
        """
        self._head_started = None
        super().lineReceived(head.request_line)
        if self._rejected:
            return  # Twisted refused what the gate passed (should not happen)
        request = self.requests[-1]
        add = request.requestHeaders.addRawHeader
        for name, value in head.headers:
            add(name, value)
        length = head.body_length
        if length != 0:
            if length is None:
                decoder: Any = ChunkedDecoder(
                    request.handleContentChunk, self._finishRequestBody, self.limits
                )
            else:
                decoder = _IdentityTransferDecoder(
                    length, request.handleContentChunk, self._finishRequestBody
                )
            self._transferDecoder = decoder
            self.length = length
            self._body_reading = True
            self._body_last_read = now = self._clock.seconds()
            if self.body_timeout is not None:
                self._arm(now, now + self.body_timeout)
        super().lineReceived(b"")

    def rawDataReceived(self, data: bytes) -> None:
        """
        Body bytes (or bytes of later requests, held while one is being
        answered); a chunked body breaking the rules is refused.
        """
        if self._rejected:
            return
        if self._body_reading:
            self._body_last_read = self._clock.seconds()
        try:
            super().rawDataReceived(data)
        except FramingError as error:
            self._reject(error)

    def allContentReceived(self) -> None:
        """
        The body is complete: its timeout stops, and so does its pause (it
        may have paused in the read that completed it), since what follows
        is the next request, which C{HTTPChannel} holds back itself.
        """
        if self._rejected:
            return
        self._body_reading = False
        self._reading.resume(_BODY)
        super().allContentReceived()

    def lineLengthExceeded(self, line: bytes) -> None:
        """
        A line longer than any limit: 414 for a request line, else 431.
        """
        self._reject(self._head_reader.line_too_long())

    def _respondToBadRequestAndDisconnect(self) -> None:
        """
        Twisted refused something itself (the gate should have first):
        answer as the gate does, not with Twisted's bare 400.
        """
        self._reject(FramingError(400, "bad request"))

    # Reading paused by the body stream (backpressure from the app server)

    def pause_body(self) -> None:
        """
        Stop reading the body: the app server is not keeping up.  Time
        paused does not count against the client.
        """
        self._reading.pause(_BODY)

    def resume_body(self) -> None:
        """
        Read the body again, once C{HTTPChannel} does not hold reading back
        for a reason of its own.
        """
        if self._reading.paused_for(_BODY):
            self._body_last_read = self._clock.seconds()
            self._reading.resume(_BODY)

    # Timeouts

    def _start_head(self) -> None:
        now = self._clock.seconds()
        self._head_started = now
        if self.timeOut is not None:
            # From the first byte of a head until its answer is sent, the
            # header and body timeouts govern; HTTPChannel.requestDone puts
            # the idle timeout back.
            self._savedTimeOut = self.setTimeout(None)
        if self.header_timeout is not None:
            self._arm(now, now + self.header_timeout)

    def _arm(self, now: float, deadline: float) -> None:
        """
        Make sure the connection's one timer fires by C{deadline}.
        """
        timer = self._timer
        if timer is None:
            self._timer = self.callLater(deadline - now, self._check_timeouts)
        elif timer.getTime() > deadline:
            timer.reset(deadline - now)

    def _check_timeouts(self) -> None:
        """
        Fire the header or body timeout if it is due, else sleep until it
        is.  Reads only record the time, so no timer is touched per read;
        between requests the timer lapses.
        """
        self._timer = None
        if self._rejected:
            return
        now = self._clock.seconds()
        if self._head_started is not None and self.header_timeout is not None:
            deadline = self._head_started + self.header_timeout
            if now >= deadline:
                detail = f"request head not complete within {self.header_timeout:g} s"
                self._reject(FramingError(408, detail))
                return
        elif self._body_reading and self.body_timeout is not None:
            deadline = self._body_last_read + self.body_timeout
            if now >= deadline:
                if self._body_paused:
                    # lbproxy stopped reading because the app server did:
                    # the stall is upstream's, as nginx's proxy_send_timeout.
                    detail = "the app server stopped reading the request body"
                    self._reject(FramingError(504, detail))
                else:
                    detail = f"request body stalled for {self.body_timeout:g} s"
                    self._reject(FramingError(408, detail))
                return
        else:
            return
        self._timer = self.callLater(deadline - now, self._check_timeouts)

    # Refusing

    def _reject(self, error: FramingError) -> None:
        """
        Refuse the request in progress: abandon its upstream exchange if it
        started (so nothing more of it reaches an app server), answer
        C{error} with C{Connection: close}, and close; or abort the
        connection if an answer has already begun.
        """
        if self._rejected:
            return
        self._rejected = True
        self._head_started = None
        self._body_reading = False
        self._cancel_timer()
        self.setTimeout(None)
        self._refusals.refused(str(error), _peer(self.transport))
        request = self.requests[-1] if self.requests else None
        if request is not None:
            exchange = getattr(request, "exchange", None)
            if exchange is not None:
                exchange.client_gone()
            body_stream = getattr(request, "body_stream", None)
            if body_stream is not None:
                body_stream.detach()
            if request.startedWriting:
                self.transport.abortConnection()
                return
        self._networkProducer.unregisterProducer()
        transport = self.transport
        transport.write(error_response(error, datetimeToString()))
        lose_write = getattr(transport, "loseWriteConnection", None)
        if lose_write is None:
            transport.loseConnection()
            return
        # Lingering close, as nginx's lingering_close: send the answer and a
        # FIN, and read (and drop) what the client still sends, so that
        # closing with unread input (a TCP reset) cannot destroy the answer
        # before the client reads it.
        lose_write()
        self._reading.release()
        self._timer = self.callLater(_LINGER, transport.abortConnection)

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def connectionLost(self, reason: Failure) -> None:
        """
        Stop the timers, then as C{HTTPChannel}.
        """
        self._cancel_timer()
        super().connectionLost(reason)

    def allHeadersReceived(self) -> None:
        """
        Give the request its method, target and version with its headers:
        twisted.web hands them over only with the whole body, but lbproxy
        starts proxying a request with a body as soon as its headers are in.
        """
        request = self.requests[-1]
        request.method = self._command
        request.uri = self._path
        request.clientproto = self._version
        super().allHeadersReceived()

    def checkPersistence(self, request: server.Request, version: bytes) -> bool:
        """
        Whether the connection stays open after answering C{request}.
        """
        if version != b"HTTP/1.1":
            # Twisted never keeps HTTP/1.0 connections (it cannot know yet
            # whether the answer will have a length).
            return False
        tokens = connection_tokens(request.requestHeaders.getRawHeaders(b"connection", ()))
        if b"close" in tokens:
            request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
            return False
        return True


#: The reason L{ProxyChannel.pause_body} pauses reading.
_BODY = "body"
#: The reason C{HTTPChannel} pauses reading (through C{_networkProducer}).
_TWISTED = "twisted"


class _ReadPauses:
    """
    The one owner of pausing a client transport: it is paused while any
    reason holds it and resumed when the last is gone.

    It stands in for the transport as C{HTTPChannel}'s C{_networkProducer},
    so Twisted's pauses and resumes are one reason, L{_TWISTED} (its own
    state keeps them consistent); the body's is L{_BODY}.  Registering
    producers goes straight to the transport.
    """

    __slots__ = ("_reasons", "_transport")

    def __init__(self, transport: Any) -> None:
        """
        @param transport: the client transport as an C{IPushProducer} (and
            C{IConsumer}): what C{HTTPChannel} made its C{_networkProducer}.
        """
        self._transport = transport
        self._reasons: set[str] = set()

    def pause(self, reason: str) -> None:
        """
        Hold reading back for C{reason}.
        """
        if not self._reasons:
            self._transport.pauseProducing()
        self._reasons.add(reason)

    def resume(self, reason: str) -> None:
        """
        C{reason} no longer holds reading back; read if nothing else does.
        """
        if reason in self._reasons:
            self._reasons.discard(reason)
            if not self._reasons:
                self._transport.resumeProducing()

    def paused_for(self, reason: str) -> bool:
        """
        Whether C{reason} holds reading back.
        """
        return reason in self._reasons

    def release(self) -> None:
        """
        Read whatever holds reading back (a refused connection reads and
        drops the rest, for a lingering close).
        """
        self._reasons.clear()
        self._transport.resumeProducing()

    # What HTTPChannel calls on its _networkProducer

    def pauseProducing(self) -> None:
        self.pause(_TWISTED)

    def resumeProducing(self) -> None:
        self.resume(_TWISTED)

    def stopProducing(self) -> None:
        self._transport.stopProducing()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._transport.unregisterProducer()


class _ClientReader:
    """
    The client connection as a L{StreamingBody} pauses and resumes it, by
    way of the channel, which must know: a body held back because the app
    server reads slowly is not a client stalling.
    """

    __slots__ = ("_channel",)

    def __init__(self, channel: ProxyChannel) -> None:
        self._channel = channel

    def pauseProducing(self) -> None:
        self._channel.pause_body()

    def resumeProducing(self) -> None:
        self._channel.resume_body()


def _peer(transport: Any) -> str:
    """
    The client's address for a log line.
    """
    try:
        address = transport.getPeer()
    except Exception:
        return "-"
    host = getattr(address, "host", None)
    return host if isinstance(host, str) else str(address)
