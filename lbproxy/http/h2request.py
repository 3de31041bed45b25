# -*- test-case-name: tests.http.test_h2 -*-
"""
An HTTP/2 stream's request: L{H2Request}, a twisted.web C{Request} that is
a L{lbproxy.http.request.ClientRequest}.

Twisted's C{H2Connection} (behind lbproxy's gate, L{lbproxy.http.h2}) makes
one per stream.  Proxying starts with the first DATA of a stream, or at its
end if it has no body: a request whose body never comes never reaches an
app server, and gets 408 after the site's body timeout, as on HTTP/1.1.
Twisted calls C{gotLength} in the middle of a head (at C{content-length},
or at the end with a guess), so the length it gives is not used: the body
has the C{content-length} the gate checked, or none (then it goes upstream
chunked).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast
from typing import Protocol as TypingProtocol

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.http_headers import Headers

from lbproxy.http.framing import REASONS
from lbproxy.http.ratelog import RateLimitedLog
from lbproxy.http.request import ExchangeRecord, Header, RequestExchange
from lbproxy.http.settings import AccessLog, ConnectionSettings
from lbproxy.upstream.body import StreamingBody

if TYPE_CHECKING:
    from twisted.web._http2 import H2Stream

__all__ = ["H2Request", "StreamSite"]


class StreamSite(TypingProtocol):
    """
    What an HTTP/2 stream's request and connection need of their site
    (L{lbproxy.http.site.ProxySite} is one).
    """

    reactor: Any
    resource: Any

    @property
    def settings(self) -> ConnectionSettings:
        """
        The limits, timeouts and HTTPS policies in force.
        """

    @property
    def access_log(self) -> AccessLog:
        """
        Where answered requests are logged.
        """

    @property
    def refusals(self) -> RateLimitedLog:
        """
        Where refused requests are logged.
        """

    def date(self) -> bytes:
        """
        The current C{Date} header value.
        """


class H2Request(server.Request):
    """
    One HTTP/2 stream's request, forwarded, never interpreted; see the
    module docstring.

    Its site (L{lbproxy.http.site.ProxySite}) gives it the handler (its
    C{resource}), the body timeout and HSTS (C{settings}), the access log
    and the refusals log.

    @ivar exchange: the exchange proxying this request, once it started.
    @ivar body: the body on its way upstream, if there is a body.
    @ivar headers: the header fields (the gate's, C{:authority} as Host).
    @ivar record: what the proxy did with it (set by the exchange).
    """

    # twisted.web would add "Content-Type: text/html" to answers without
    # one, and "Server"/"Date" of its own; the app server's pass through.
    defaultContentType = None
    # Twisted types a request's channel as an HTTP/1.1 HTTPChannel; on
    # HTTP/2 it is the stream, which makes the request and then calls
    # gotLength, where the site (lbproxy's) is set.
    channel: H2Stream  # type: ignore[assignment]
    # twisted.web types it as a Site; lbproxy's is one, seen through the
    # protocol of what streams use.
    site: StreamSite  # type: ignore[assignment]
    exchange: RequestExchange | None = None
    record: ExchangeRecord | None = None
    body: StreamingBody | None = None
    # HTTP/2 never upgrades (its extended CONNECT, RFC 8441, is not
    # proxied): the gate refuses an upgrade header.
    upgrade: bytes | None = None
    _waiting = False
    _refused = False
    _finish_waiting = False
    _body_received = False
    _timer: IDelayedCall | None = None
    _paused = False
    _last_read = 0.0
    _logged = False
    _log = Logger()

    # twisted.web's side

    def gotLength(self, length: int | None) -> None:
        """
        The head is (almost) in: wait for the first DATA or the end of the
        stream; the body timeout runs until then.
        """
        self.content = None
        self.site = self.channel.site
        if self._waiting:
            return  # called again by Twisted for the same head
        self._waiting = True
        self._last_read = self._clock().seconds()
        self._timer = self._clock().callLater(
            self.channel.site.settings.body_timeout, self._check_body
        )

    def handleContentChunk(self, data: bytes) -> None:
        """
        A piece of the body: on its way upstream at once.
        """
        if self._waiting:
            if not data:
                return
            self._start_with_body()
        else:
            self._last_read = self._clock().seconds()
        if self.body is not None:  # None only for a refused stream
            self.body.feed(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """
        The stream ended: proxy it now if it has no body, or tell the body
        it is complete.  (Unlike twisted.web, the query and a form body are
        not parsed: lbproxy forwards them untouched.)
        """
        if self._refused:
            return
        self._body_received = True
        self._waiting = False
        self._stop_timer()
        if self.body is not None:
            self.body.end()
            if self._finish_waiting:
                super().finish()
            return
        self._start()

    def finish(self) -> None:
        """
        Finish the answer, once the request body has been read whole (a
        stream answered early is reset by the connection afterwards).
        """
        self._log_once()
        # The exchange is over (it finishes the answer): it and this
        # request refer to each other, a cycle left to the collector.
        self.exchange = None
        if self.producer is not None:
            # The exchange, registered by respond(): done producing.
            self.unregisterProducer()
        if not self._body_received:
            self._finish_waiting = True
            return
        super().finish()

    def connectionLost(self, reason: Failure) -> None:
        """
        The stream was reset or the connection lost: abandon the upstream
        exchange too.
        """
        self._stop_timer()
        super().connectionLost(reason)
        # Over (DONE) once told: no cycle left with this request.
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.client_gone()
            if not self._logged:
                if not self.startedWriting:
                    self.code = 499  # nginx's "client closed request"
                self._log_once()

    def processingFailed(self, reason: Failure) -> Any:
        """
        An exception escaped while proxying (a bug in lbproxy): end the
        exchange, then answer 500 as twisted.web does, or reset the stream
        if its answer had begun.
        """
        if self.exchange is not None:
            self.exchange.client_gone()
        if self.body is not None:
            self.body.detach()
        if self.startedWriting:
            self._log.failure("lbproxy internal error while answering", failure=reason)
            self.abort()
            return reason
        return super().processingFailed(reason)

    # ClientRequest

    @property
    def target(self) -> bytes:
        """
        The stream's C{:path}, as the gate passed it.
        """
        return self.uri

    @property
    def version(self) -> bytes:
        """
        C{b"HTTP/2"}.
        """
        return b"HTTP/2"

    @property
    def headers(self) -> list[Header]:
        """
        The header fields, in order.
        """
        return [
            (name, value)
            for name, values in self.requestHeaders.getAllRawHeaders()
            for value in values
        ]

    @property
    def secure(self) -> bool:
        """
        Whether the stream's connection is TLS (always, in practice).
        """
        return self.isSecure()  # type: ignore[no-any-return]

    @property
    def client_address(self) -> bytes:
        """
        The client's IP address.
        """
        address = self.getClientAddress()
        if isinstance(address, (IPv4Address, IPv6Address)):
            return address.host.encode("ascii")
        return b"unix:"

    @property
    def answer_started(self) -> bool:
        """
        Whether the answer's head has been written.
        """
        return bool(self.startedWriting)

    @property
    def status(self) -> int:
        """
        The answer's status, for the access log.
        """
        return self.code

    @property
    def bytes_sent(self) -> int:
        """
        Body bytes written, for the access log.
        """
        return self.sentLength

    def header(self, name: bytes) -> bytes | None:
        """
        The last value of header C{name}, or L{None}.
        """
        values = self.requestHeaders.getRawHeaders(name)
        return values[-1] if values else None

    def default_host(self) -> bytes:
        """
        The listener's address (an HTTP/2 request always has a Host: the
        gate makes one of C{:authority}).
        """
        return self.getRequestHostname()  # type: ignore[no-any-return]

    def respond(
        self,
        status: int,
        reason: bytes,
        headers: list[Header],
        producer: IPushProducer | None = None,
    ) -> None:
        """
        Set the answer's status and headers (they go out with the first
        write), and its producer.
        """
        self.setResponseCode(status, reason)
        response_headers = self.responseHeaders = Headers()
        for name, value in headers:
            response_headers.addRawHeader(name, value)
        hsts = self.channel.site.settings.hsts
        if hsts is not None and not response_headers.hasHeader(b"strict-transport-security"):
            response_headers.setRawHeaders(b"Strict-Transport-Security", [hsts])
        if producer is not None:
            self.registerProducer(producer, True)

    def abort(self) -> None:
        """
        Reset this request's stream (not its connection) with INTERNAL_ERROR.
        """
        channel = getattr(self, "channel", None)
        if channel is not None:
            channel.abortConnection()

    def flush(self) -> None:
        """
        Nothing held back: Twisted's HTTP/2 connection sends by priority.
        """

    def unsent(self) -> int | None:
        """
        Unknown on a stream: its flow control resumes the exchange whenever
        the client takes data.
        """
        return None

    # Internals

    def _log_once(self) -> None:
        if not self._logged:
            self._logged = True
            self.site.access_log.request_done(self)

    def _clock(self) -> IReactorTime:
        return self.channel.site.reactor  # type: ignore[no-any-return]

    def _start_with_body(self) -> None:
        """
        The first DATA of the stream: proxying starts.
        """
        self._waiting = False
        lengths = self.requestHeaders.getRawHeaders(b"content-length")
        self.body = StreamingBody(_StreamReader(self), int(lengths[0]) if lengths else None)
        self._last_read = self._clock().seconds()
        self._start()

    def _start(self) -> None:
        stream = self.channel
        # The stream took them from :method and :path, which the gate
        # (lbproxy.http.h2gate) lets no head without; Twisted starts them
        # as None.
        self.method = cast(bytes, stream.command)
        self.uri = cast(bytes, stream.path)
        self.clientproto = b"HTTP/2"
        self.site = stream.site
        self.prepath = []
        self.postpath = []
        try:
            self.render(self.site.resource)
        except Exception:
            self.processingFailed(Failure())

    def _stop_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _check_body(self) -> None:
        """
        The body timeout: 408 if the client sent nothing for that long, 504
        if lbproxy stopped reading because the app server did (as on
        HTTP/1.1).
        """
        self._timer = None
        timeout = self.channel.site.settings.body_timeout
        now = self._clock().seconds()
        deadline = self._last_read + timeout
        if now < deadline:
            self._timer = self._clock().callLater(deadline - now, self._check_body)
            return
        if self._paused:
            self._refuse(504, "the app server stopped reading the request body")
        else:
            self._refuse(408, f"request body stalled for {timeout:g} s")

    def _refuse(self, status: int, detail: str) -> None:
        """
        Give up on a request whose body stalled: abandon its upstream
        exchange, and answer C{status} if no answer has begun (Twisted then
        resets the stream, as the client has not finished), else reset it.
        """
        self._waiting = False
        self._refused = True
        self.channel.site.refusals.refused(
            f"HTTP/2 {status} {REASONS[status].decode()}: {detail}",
            self.client_address.decode("ascii", "replace"),
            status,
        )
        if self.exchange is not None:
            self.exchange.client_gone()
        if self.body is not None:
            self.body.detach()
        self._body_received = True  # never coming: the answer may go out
        if self.startedWriting:
            self.abort()
            return
        text = b"%d %s: %s\n" % (status, REASONS[status], detail.encode("ascii", "replace"))
        self.respond(
            status,
            REASONS[status],
            [
                (b"Content-Type", b"text/plain; charset=utf-8"),
                (b"Content-Length", b"%d" % len(text)),
                (b"Date", self.channel.site.date()),
            ],
        )
        self.write(text)
        self.finish()


class _StreamReader:
    """
    An HTTP/2 stream as a L{StreamingBody} pauses and resumes it (the
    stream stops opening its flow-control window, so the client stops
    sending), noting it for the body timeout: a body held back because the
    app server reads slowly is not a client stalling.
    """

    __slots__ = ("_request",)

    def __init__(self, request: H2Request) -> None:
        self._request = request

    def pauseProducing(self) -> None:
        request = self._request
        request._paused = True
        if request.channel is not None:
            request.channel.pauseProducing()

    def resumeProducing(self) -> None:
        request = self._request
        request._paused = False
        if request.channel is not None:
            request._last_read = request._clock().seconds()
            request.channel.resumeProducing()
