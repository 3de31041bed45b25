# -*- test-case-name: tests.proxy.test_proxy -*-
"""
The client-facing side: a C{twisted.web} L{Site} and L{Request} tuned for
proxying.

L{ProxyRequest} skips what a proxy never needs on its hot path: parsing the
query string and form bodies into C{args} (the body is forwarded, not
read) and walking the resource tree (the resource is a leaf that takes
every path).  It tells its L{RequestExchange} when the client
goes away, so the upstream exchange is abandoned at once.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from typing import Protocol as TypingProtocol

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python import log as twisted_log
from twisted.python.failure import Failure
from twisted.web import server

# Twisted picks HTTP/1.1 or HTTP/2 (by ALPN) per connection in this wrapper;
# it is private, but the only way to give HTTP/1.1 connections our channel
# while keeping that negotiation.
from twisted.web.http import (
    H2_ENABLED,
    _GenericHTTPChannelProtocol,
    datetimeToString,
)
from twisted.web.http_headers import Headers

from lbproxy.http.channel import ProxyChannel, _ClientReader, _peer
from lbproxy.http.framing import (
    REASONS,
    Limits,
)
from lbproxy.http.ratelog import RateLimitedLog
from lbproxy.upstream.body import StreamingBody

if TYPE_CHECKING:
    from lbproxy.config.model import Config

__all__ = ["ProxyChannel", "ProxyRequest", "ProxySite", "client_settings", "combined_log_line"]

_log = Logger()


#: Bytes that need escaping in a log field: non-printables, C{"} and C{\}.
_NEEDS_ESCAPE = re.compile(rb'[^\x20-\x7e]|["\\]')


def _log_field(value: bytes) -> str:
    r"""
    A request field as nginx logs it: printable ASCII as is, everything
    else (and C{"} and C{\}) as C{\xHH}, so a line cannot be forged.
    """
    if _NEEDS_ESCAPE.search(value) is None:
        return value.decode("ascii")
    return "".join(
        chr(b) if 0x20 <= b < 0x7F and b not in (0x22, 0x5C) else f"\\x{b:02X}" for b in value
    )


def combined_log_line(timestamp: str, request: server.Request) -> str:
    """
    One access log line in nginx's C{combined} format::

        127.0.0.1 - - [25/Nov/2026:12:00:00 +0000] "GET / HTTP/1.1" 200 9 "-" "curl/8"

    Twisted's C{combinedLogFormatter} quotes the address and escapes every
    field through C{repr}; this one matches nginx byte for byte and takes a
    fast path for the common all-printable fields (it runs per request).

    @param timestamp: the bracketed time, as C{HTTPFactory} caches it.
    @param request: the finished request.
    @return: the line, without its newline.
    """
    address = request.getClientAddress()
    if isinstance(address, (IPv4Address, IPv6Address)):
        client = address.host
    else:
        client = "-"
    headers = request.requestHeaders
    referrer = headers.getRawHeaders(b"referer")
    agent = headers.getRawHeaders(b"user-agent")
    method = _log_field(request.method)
    target = _log_field(request.uri)
    version = _log_field(request.clientproto)
    referrer_field = _log_field(referrer[-1]) if referrer else "-"
    agent_field = _log_field(agent[-1]) if agent else "-"
    return (
        f'{client} - - {timestamp} "{method} {target} {version}" '
        f'{request.code} {request.sentLength} "{referrer_field}" "{agent_field}"'
    )


class RequestExchange(TypingProtocol):
    """
    What the client side tells the exchange proxying one of its requests
    (L{lbproxy.proxy.resource.ProxyExchange} is one).
    """

    def client_gone(self) -> None:
        """
        The client went away or its request was refused: abandon the
        upstream side, nothing more of the request will come.
        """

    def processing_failed(self) -> None:
        """
        twisted.web caught an exception while the request was processed:
        end the exchange (it answers 500 itself).
        """


class ProxyRequest(server.Request):
    """
    A request whose body and target are forwarded, never interpreted.

    Proxying starts as soon as the headers are complete: a request with a
    body gets a L{StreamingBody} that carries it upstream as it arrives
    (twisted.web would collect the whole body first).  The response may
    then be complete before the request body is; C{finish} waits for the
    body, as the channel can only move on once the request is read.

    An HTTP/2 stream (whose head passed L{lbproxy.http.http2}'s gate) starts
    proxying with the first byte of its body, or at its end if it has none:
    a request whose body never comes never reaches an app server, and gets
    408 after the site's C{body_timeout}, as on HTTP/1.1.

    @ivar exchange: the exchange proxying this request, once it started.
    @ivar body_stream: the body on its way upstream, if there is a body.
    """

    exchange: RequestExchange | None = None
    body_stream: StreamingBody | None = None
    _body_received = False
    _finish_waiting = False
    _h2_waiting = False
    _h2_refused = False
    _h2_timer: IDelayedCall | None = None
    _h2_paused = False
    _h2_last_read = 0.0

    def gotLength(self, length: int | None) -> None:
        """
        The headers are complete; C{length} is the body's C{Content-Length}
        (L{None} if chunked, 0 if there is no body).  A request with a body
        starts proxying now.
        """
        self.content = None
        channel = self.channel
        if not isinstance(channel, ProxyChannel):
            self._h2_headers()
            return
        if length == 0:
            return
        self.body_stream = StreamingBody(_ClientReader(channel), length)
        self._proxy()

    def handleContentChunk(self, data: bytes) -> None:
        """
        A piece of the body: on its way upstream at once.
        """
        if self._h2_waiting:
            if not data:
                return
            self._h2_start_body()
        elif self._h2_timer is not None:
            self._h2_last_read = self._h2_clock().seconds()
        body_stream = self.body_stream
        if body_stream is not None:  # None only for a refused HTTP/2 stream
            body_stream.feed(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """
        The whole request is here: proxy it now if it has no body, or tell
        the body stream it is complete.

        Unlike C{twisted.web.http.Request.requestReceived} this does not
        parse the query or a form body into C{args}: lbproxy forwards them
        untouched.
        """
        if self._h2_refused:
            return
        self._body_received = True
        self._h2_waiting = False
        self._h2_stop_timer()
        if self.body_stream is not None:
            self.body_stream.end()
            if self._finish_waiting:
                super().finish()
            return
        self.method = command
        self.uri = path
        self.clientproto = version
        self._proxy()

    # HTTP/2 streams

    def _h2_headers(self) -> None:
        """
        An HTTP/2 stream's head is in.  Twisted calls C{gotLength} in the
        middle of it (at C{content-length}, or at the end with a guess), so
        the length it gives is not used: the body, if DATA follows, has the
        C{content-length} the gate checked, or none (then it goes upstream
        chunked).  Nothing starts until the first DATA or the end of the
        stream; the body timeout runs until then.
        """
        if self._h2_waiting:
            return  # called again by Twisted for the same head
        self._h2_waiting = True
        timeout = getattr(self.channel.site, "body_timeout", None)
        if timeout is not None:
            self._h2_last_read = self._h2_clock().seconds()
            self._h2_timer = self._h2_clock().callLater(timeout, self._h2_check_body)

    def _h2_clock(self) -> IReactorTime:
        return self.channel.site.reactor  # type: ignore[no-any-return]

    def _h2_start_body(self) -> None:
        """
        The first DATA of an HTTP/2 request: proxying starts.
        """
        self._h2_waiting = False
        lengths = self.requestHeaders.getRawHeaders(b"content-length")
        length = int(lengths[0]) if lengths else None
        self.body_stream = StreamingBody(_H2BodyReader(self), length)
        self._h2_last_read = self._h2_clock().seconds()
        self._start_h2()

    def _start_h2(self) -> None:
        stream = self.channel
        self.method = stream.command
        self.uri = stream.path
        self.clientproto = b"HTTP/2"
        self._proxy()

    def _h2_stop_timer(self) -> None:
        timer, self._h2_timer = self._h2_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _h2_check_body(self) -> None:
        """
        The body timeout of an HTTP/2 stream: 408 if the client sent
        nothing for that long, 504 if lbproxy stopped reading because the
        app server did (as L{ProxyChannel} answers on HTTP/1.1).
        """
        self._h2_timer = None
        timeout = self.channel.site.body_timeout
        now = self._h2_clock().seconds()
        deadline = self._h2_last_read + timeout
        if now < deadline:
            self._h2_timer = self._h2_clock().callLater(deadline - now, self._h2_check_body)
            return
        if self._h2_paused:
            self._h2_refuse(504, "the app server stopped reading the request body")
        else:
            self._h2_refuse(408, f"request body stalled for {timeout:g} s")

    def _h2_refuse(self, status: int, detail: str) -> None:
        """
        Give up on an HTTP/2 request whose body stalled: abandon its
        upstream exchange, and answer C{status} if no answer has begun
        (Twisted then resets the stream, as the client has not finished),
        else reset the stream.
        """
        self._h2_waiting = False
        self._h2_refused = True
        _log.info(
            "refused an HTTP/2 request from {peer}: {status} {reason}: {detail}",
            peer=_peer(self.channel),
            status=status,
            reason=REASONS[status].decode(),
            detail=detail,
        )
        exchange = self.exchange
        if exchange is not None:
            exchange.client_gone()
        if self.body_stream is not None:
            self.body_stream.detach()
        self._body_received = True  # never coming: the answer may go out
        if self.startedWriting:
            self.abort_client()
            return
        body = b"%d %s: %s\n" % (status, REASONS[status], detail.encode("ascii", "replace"))
        self.setResponseCode(status)
        headers = self.responseHeaders = Headers()
        headers.addRawHeader(b"Content-Type", b"text/plain; charset=utf-8")
        headers.addRawHeader(b"Content-Length", b"%d" % len(body))
        headers.addRawHeader(b"Date", datetimeToString())
        self.write(body)
        self.finish()

    def abort_client(self) -> None:
        """
        End the client's side without completing the answer, so that a
        truncated answer is never taken for a whole one: abort the
        connection (HTTP/1.1), or reset this request's stream (HTTP/2,
        whose transport is the stream).
        """
        transport = self.transport
        if transport is not None:
            transport.abortConnection()
            return
        channel = getattr(self, "channel", None)
        if channel is not None:
            channel.abortConnection()

    def _proxy(self) -> None:
        self.args = {}
        self.path = self.uri.split(b"?", 1)[0]
        self.process()

    def finish(self) -> None:
        """
        Finish the response, once the request body has been read whole.
        """
        if not self._body_received:
            self._finish_waiting = True
            return
        super().finish()

    def process(self) -> None:
        """
        Render the site's (leaf) resource without walking the tree.
        """
        self.site = self.channel.site
        self.prepath = []
        self.postpath = []
        try:
            self.render(self.site.resource)
        except BaseException:
            self.processingFailed(Failure())

    def processingFailed(self, reason: Failure) -> Any:
        """
        An exception escaped while proxying (a bug in lbproxy): end the
        exchange, so that it neither lingers in flight (a graceful stop
        waits for it) nor reaches this request again, then answer 500 as
        twisted.web does, or abort the client if its answer had begun.
        """
        exchange = self.exchange
        if exchange is not None:
            exchange.processing_failed()
        elif self.body_stream is not None:
            self.body_stream.detach()
        if self.startedWriting:
            self._log.failure("lbproxy internal error while answering", failure=reason)
            transport: Any = self.transport
            if transport is not None:
                transport.abortConnection()
            return reason
        return super().processingFailed(reason)

    def connectionLost(self, reason: Failure) -> None:
        """
        The client went away: abandon the upstream exchange too.
        """
        self._h2_stop_timer()
        super().connectionLost(reason)
        exchange = self.exchange
        if exchange is not None:
            exchange.client_gone()

    def client_host(self) -> bytes:
        """
        The client's IP address for C{X-Forwarded-For}; C{b"unix:"} on a
        UNIX socket, as nginx's C{$remote_addr}.
        """
        address = self.getClientAddress()
        if isinstance(address, (IPv4Address, IPv6Address)):
            return address.host.encode("ascii")
        return b"unix:"

    def default_host(self) -> bytes:
        """
        A C{Host} for clients that sent none (HTTP/1.0): this listener's
        own address, as C{Request.getRequestHostname} would give.
        """
        return self.getRequestHostname()

    def had_body_framing(self) -> bool:
        """
        Whether the client framed a body (C{Content-Length} or
        C{Transfer-Encoding}), even an empty one.
        """
        headers = self.requestHeaders
        return headers.hasHeader(b"content-length") or headers.hasHeader(b"transfer-encoding")


class _H2BodyReader:
    """
    An HTTP/2 stream as a L{StreamingBody} pauses and resumes it (the
    stream stops opening its flow-control window, so the client stops
    sending), noting it for the body timeout: a body held back because the
    app server reads slowly is not a client stalling.
    """

    __slots__ = ("_request",)

    def __init__(self, request: ProxyRequest) -> None:
        self._request = request

    def pauseProducing(self) -> None:
        request = self._request
        request._h2_paused = True
        if request.channel is not None:
            request.channel.pauseProducing()

    def resumeProducing(self) -> None:
        request = self._request
        request._h2_paused = False
        if request.channel is not None:
            request._h2_last_read = request._h2_clock().seconds()
            request.channel.resumeProducing()


class _SiteConnection(_GenericHTTPChannelProtocol):
    """
    One client connection, HTTP/1.1 or HTTP/2, known to its site.

    Twisted wraps every connection in this protocol and, when ALPN picks
    h2, swaps the HTTP/1.1 channel inside for an HTTP/2 one without
    closing the first; so the site counts connections here, where the
    whole life of the connection is seen.
    """

    def makeConnection(self, transport: Any) -> None:
        """
        Register with the site, then start as Twisted does.
        """
        self.connection_transport = transport
        self.connection_site = self.factory
        self.connection_site.connection_opened(self)
        super().makeConnection(transport)

    def connectionLost(self, reason: Failure) -> None:
        """
        As Twisted does, then leave the site's count.
        """
        super().connectionLost(reason)
        self.connection_site.connection_closed(self)

    def dataReceived(self, data: bytes) -> None:
        """
        As Twisted does; but when ALPN picked h2, the connection becomes
        lbproxy's L{ProxyH2Connection}, behind the gate, rather than
        Twisted's own.
        """
        if self._negotiatedProtocol is None and H2_ENABLED:
            protocol = getattr(self._channel.transport, "negotiatedProtocol", None)
            if protocol == b"h2":
                self._start_h2()
        super().dataReceived(data)

    def _start_h2(self) -> None:
        """
        Swap the HTTP/1.1 channel for a L{ProxyH2Connection}, step for step
        as C{_GenericHTTPChannelProtocol.dataReceived} swaps in Twisted's
        C{H2Connection} (private names of Twisted's, as that class is).
        """
        from lbproxy.http.http2 import ProxyH2Connection

        old = self._channel
        network = old._networkProducer
        network.unregisterProducer()
        old.setTimeout(None)
        channel = ProxyH2Connection(self.connection_site.limits)
        channel.requestFactory = self._requestFactory
        channel.site = self._site
        channel.factory = self._factory
        channel.timeOut = self._timeOut
        channel.callLater = self._callLater
        self._channel = channel
        self._negotiatedProtocol = b"h2"
        channel.makeConnection(old.transport)
        network.registerProducer(channel, True)


def _log_path(access_log: str) -> str | None:
    """
    The access log file for an C{access_log} setting: none for C{"-"} (the
    twistd log) and C{"off"}.
    """
    return None if access_log in ("-", "off") else access_log


def _open_log(path: str) -> Any:
    """
    Open an access log file for appending, with a 64 KiB buffer.
    """
    return open(path, "a", buffering=64 * 1024, encoding="utf-8", newline="\n")  # noqa: SIM115


def client_settings(config: Config) -> dict[str, Any]:
    """
    The keyword arguments of L{ProxySite.configure_clients} that C{config}
    gives (at start and on reload).
    """
    return {
        "header_timeout": config.client_header_timeout,
        "body_timeout": config.client_body_timeout,
        "max_body_size": config.max_body_size,
        "max_request_line": config.max_request_line,
        "max_header_line": config.max_header_line,
        "max_headers_size": config.max_headers_size,
        "max_headers": config.max_headers,
    }


class ProxySite(server.Site):
    """
    The Site lbproxy listens with: L{ProxyRequest}s, an idle timeout for
    keep-alive clients, and an access log line per request in combined log
    format (as nginx writes it), to the twistd log or a file, or nowhere.
    """

    requestFactory = ProxyRequest
    displayTracebacks = False
    _flusher: LoopingCall | None = None

    def protocol(self) -> _GenericHTTPChannelProtocol:  # type: ignore[override]
        """
        A connection's protocol: L{ProxyChannel} for HTTP/1.x.
        """
        channel = ProxyChannel(
            self.limits, self.header_timeout, self.body_timeout, self.reactor, self.refusals
        )
        return _SiteConnection(channel)

    def __init__(
        self,
        resource: object,
        client_timeout: float,
        access_log: str = "-",
        *,
        header_timeout: float | None = 60.0,
        body_timeout: float | None = 60.0,
        max_body_size: int = 0,
        max_request_line: int = 8192,
        max_header_line: int = 8192,
        max_headers_size: int = 65536,
        max_headers: int = 100,
        reactor: IReactorTime | None = None,
    ) -> None:
        """
        @param resource: the proxy resource.
        @param client_timeout: seconds an idle client connection is kept
            open (nginx's C{keepalive_timeout} is 75 s).
        @param access_log: C{"-"} for the twistd log, C{"off"} for none, or
            a file path (opened, line-buffered, by twisted.web's C{logPath}
            support: one C{write} per line, like nginx's C{access_log}).
        @param reactor: what times client connections; the global reactor
            if L{None}.

        The other parameters are those of L{configure_clients}.
        """
        super().__init__(
            resource,
            logPath=_log_path(access_log),
            timeout=client_timeout,
            logFormatter=combined_log_line,
            reactor=reactor,
        )
        #: Where refused requests are logged, at most once a second per
        #: reason, for all of this site's connections.
        self.refusals = RateLimitedLog(self.reactor)
        self.channels: set[_SiteConnection] = set()
        self._all_closed: list[Deferred[None]] = []
        self._stop_when_closed = False
        self._access_log = access_log != "off"
        self.configure_clients(
            header_timeout=header_timeout,
            body_timeout=body_timeout,
            max_body_size=max_body_size,
            max_request_line=max_request_line,
            max_header_line=max_header_line,
            max_headers_size=max_headers_size,
            max_headers=max_headers,
        )

    def configure_clients(
        self,
        *,
        header_timeout: float | None,
        body_timeout: float | None,
        max_body_size: int,
        max_request_line: int,
        max_header_line: int,
        max_headers_size: int,
        max_headers: int,
    ) -> None:
        """
        Set the framing limits and timeouts of new client connections.

        @param header_timeout: seconds a request head may take from its
            first byte (408 after); L{None} for no limit.
        @param body_timeout: seconds a request body may stall (408 after);
            L{None} for no limit.
        @param max_body_size: largest request body in bytes (413 beyond);
            0 for no limit.
        @param max_request_line: longest request line (414 beyond).
        @param max_header_line: longest header line (431 beyond).
        @param max_headers_size: most bytes of headers (431 beyond).
        @param max_headers: most header lines (431 beyond).
        @raise ValueError: if a limit is below 1.
        """
        self.limits = Limits(
            max_request_line=max_request_line,
            max_header_line=max_header_line,
            max_headers_size=max_headers_size,
            max_headers=max_headers,
            max_body_size=max_body_size or None,
        )
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout

    def _openLogFile(self, path: str) -> Any:
        """
        Open the access log for appending, buffered, flushed every second.

        twisted.web's C{Site} uses C{twisted.python.logfile.LogFile}, which
        rotates at 1 MB and keeps every old file; nginx appends to one file
        and leaves rotation to logrotate, and so does lbproxy.  Lines are
        buffered and written at least once a second (nginx's C{access_log
        ... buffer=64k flush=1s}): a C{write} per request cost 8% of the
        CPU at 10k requests/s.
        """
        return self._flushed(_open_log(path))

    def _flushed(self, log_file: Any) -> Any:
        self._flusher = LoopingCall(log_file.flush)
        self._flusher.clock = self.reactor
        self._flusher.start(1.0, now=False)
        return log_file

    def open_access_log(self, access_log: str) -> Any:
        """
        Open the file of an C{access_log} setting for L{apply}, so that a
        reload fails on it before anything changes.

        @return: the open file; L{None} for C{"-"} and C{"off"}, or while
            the site has not started (it opens its log when it starts).
        @raise OSError: if the file cannot be opened.
        """
        path = _log_path(access_log)
        if path is None or self._logFile is None:
            return None
        return _open_log(path)

    def connection_opened(self, channel: _SiteConnection) -> None:
        """
        A client connected.
        """
        self.channels.add(channel)

    def connection_closed(self, channel: _SiteConnection) -> None:
        """
        A client connection closed.
        """
        self.channels.discard(channel)
        if not self.channels and self._stop_when_closed:
            self._stop_when_closed = False
            self.stopFactory()
        if not self.channels and self._all_closed:
            waiters, self._all_closed = self._all_closed, []
            for waiter in waiters:
                waiter.callback(None)

    def close_connections(self) -> Deferred[None]:
        """
        Close every client connection once what is written to it has been
        sent (on stop, after the drain); fires when all are closed.
        """
        if not self.channels:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._all_closed.append(waiter)
        for channel in list(self.channels):
            channel.connection_transport.loseConnection()
        return waiter

    def apply(self, config: Config, log_file: Any = None) -> None:
        """
        Take a reloaded configuration: the idle timeout and framing limits
        (for new connections) and the access log, reopened even if its
        path is the same, so that logrotate can move it away and then send
        SIGHUP.

        @param log_file: the access log file from L{open_access_log}; it
            is opened here if L{None} and the setting names a file.
        """
        self.timeOut = config.client_timeout
        self.configure_clients(**client_settings(config))
        self._access_log = config.access_log != "off"
        path = _log_path(config.access_log)
        self.logPath = path
        if self._logFile is None:
            return  # not listening yet: startFactory opens it
        if path is not None and log_file is None:
            log_file = _open_log(path)
        if self._flusher is not None and self._flusher.running:
            self._flusher.stop()
        if self._logFile is not twisted_log.logfile:
            self._logFile.close()
        self._logFile = self._flushed(log_file) if path else twisted_log.logfile

    def stopFactory(self) -> None:
        """
        Close the access log (flushing it) once the last client connection
        has closed: the listening ports stop first, on SIGTERM, while the
        requests in flight still have access lines to write.
        """
        if self.channels:
            self._stop_when_closed = True
            return
        if self._flusher is not None and self._flusher.running:
            self._flusher.stop()
        self.refusals.flush()
        super().stopFactory()

    def log(self, request: object) -> None:
        """
        Write the access line, if access logging is on.
        """
        if self._access_log:
            super().log(request)
