# -*- test-case-name: tests.test_proxy -*-
"""
The client-facing side: a C{twisted.web} L{Site} and L{Request} tuned for
proxying.

L{ProxyRequest} skips what a proxy never needs on its hot path: parsing the
query string and form bodies into C{args} (the body is forwarded, not
read) and walking the resource tree (the resource is a leaf that takes
every path).  It tells its L{lbproxy.resource.ProxyExchange} when the client
goes away, so the upstream exchange is abandoned at once.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from twisted.web import server

# Twisted picks HTTP/1.1 or HTTP/2 (by ALPN) per connection in this wrapper;
# it is private, but the only way to give HTTP/1.1 connections our channel
# while keeping that negotiation.
from twisted.web.http import HTTPChannel, _GenericHTTPChannelProtocol

from lbproxy.body import StreamingBody
from lbproxy.headers import connection_tokens

if TYPE_CHECKING:
    from lbproxy.resource import ProxyExchange

__all__ = ["ProxyChannel", "ProxyRequest", "ProxySite", "combined_log_line"]

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


class ProxyChannel(HTTPChannel):
    """
    An L{HTTPChannel} that reads the C{Connection} header correctly.

    Twisted's C{checkPersistence} reads only the first C{Connection} header
    and splits it on spaces, so C{Connection: x-trace, close} keeps the
    connection open against the client's wish (RFC 9112 section 9.6).
    """

    _host: object = None
    _secure: bool | None = None

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


class ProxyRequest(server.Request):
    """
    A request whose body and target are forwarded, never interpreted.

    Proxying starts as soon as the headers are complete: a request with a
    body gets a L{StreamingBody} that carries it upstream as it arrives
    (twisted.web would collect the whole body first).  The response may
    then be complete before the request body is; C{finish} waits for the
    body, as the channel can only move on once the request is read.

    @ivar exchange: the exchange proxying this request, once it started.
    @ivar body_stream: the body on its way upstream, if there is a body.
    """

    exchange: ProxyExchange | None = None
    body_stream: StreamingBody | None = None
    _body_received = False
    _finish_waiting = False

    def gotLength(self, length: int | None) -> None:
        """
        The headers are complete; C{length} is the body's C{Content-Length}
        (L{None} if chunked, 0 if there is no body).  A request with a body
        starts proxying now.
        """
        self.content = None
        if length == 0:
            return
        self.body_stream = StreamingBody(self.transport, length)
        self._proxy()

    def handleContentChunk(self, data: bytes) -> None:
        """
        A piece of the body: on its way upstream at once.
        """
        assert self.body_stream is not None
        self.body_stream.feed(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """
        The whole request is here: proxy it now if it has no body, or tell
        the body stream it is complete.

        Unlike C{twisted.web.http.Request.requestReceived} this does not
        parse the query or a form body into C{args}: lbproxy forwards them
        untouched.
        """
        self._body_received = True
        if self.body_stream is not None:
            self.body_stream.end()
            if self._finish_waiting:
                super().finish()
            return
        self.method = command
        self.uri = path
        self.clientproto = version
        self._proxy()

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

    def connectionLost(self, reason: Failure) -> None:
        """
        The client went away: abandon the upstream exchange too.
        """
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
        return _GenericHTTPChannelProtocol(ProxyChannel())

    def __init__(self, resource: object, client_timeout: float, access_log: str = "-") -> None:
        """
        @param resource: the proxy resource.
        @param client_timeout: seconds an idle client connection is kept
            open (nginx's C{keepalive_timeout} is 75 s).
        @param access_log: C{"-"} for the twistd log, C{"off"} for none, or
            a file path (opened, line-buffered, by twisted.web's C{logPath}
            support: one C{write} per line, like nginx's C{access_log}).
        """
        log_path = None if access_log in ("-", "off") else access_log
        super().__init__(
            resource,
            logPath=log_path,
            timeout=client_timeout,
            logFormatter=combined_log_line,
        )
        self._access_log = access_log != "off"

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
        log_file = open(path, "a", buffering=64 * 1024, encoding="utf-8", newline="\n")  # noqa: SIM115
        self._flusher = LoopingCall(log_file.flush)
        self._flusher.clock = self.reactor
        self._flusher.start(1.0, now=False)
        return log_file

    def stopFactory(self) -> None:
        """
        Stop flushing the access log; closing it (Twisted's part) flushes it.
        """
        if self._flusher is not None and self._flusher.running:
            self._flusher.stop()
        super().stopFactory()

    def log(self, request: object) -> None:
        """
        Write the access line, if access logging is on.
        """
        if self._access_log:
            super().log(request)
