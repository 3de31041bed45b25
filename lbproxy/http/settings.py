# -*- test-case-name: tests.http.test_site -*-
"""
What the connections of a site share (L{ConnectionSettings}), and the
small protocols the client side is handed: the handler that takes its
requests (the proxy), the access log, and the site that hosts its
connections.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from typing import Protocol as TypingProtocol

from lbproxy.http.framing import FramingError, Limits
from lbproxy.http.request import ClientRequest

__all__ = ["AccessLog", "ConnectionHost", "ConnectionSettings", "RequestHandler"]


class RequestHandler(TypingProtocol):
    """
    What takes a request once its head has passed the gate: the proxy.
    """

    def handle(self, request: ClientRequest) -> None:
        """
        Start answering C{request}: eventually call its C{respond},
        C{write} and C{finish}, or C{abort}.
        """


class ConnectionHost(TypingProtocol):
    """
    What a connection tells its site (L{lbproxy.http.site.ProxySite}), and
    where its HTTP/2 twin comes from.
    """

    def connection_opened(self, connection: Any) -> None:
        """
        C{connection} is open.
        """

    def connection_closed(self, connection: Any) -> None:
        """
        C{connection} closed.
        """

    def http2_connection(self) -> Any:
        """
        A new HTTP/2 connection (a protocol), for a client that picked
        C{h2} by ALPN.
        """


class AccessLog(TypingProtocol):
    """
    Where answered requests are logged, one line each.
    """

    def request_done(self, request: Any) -> None:
        """
        C{request} was answered, or given up on (status 499).
        """

    def tunnel_done(self, request: Any, seconds: float, bytes_received: int) -> None:
        """
        The tunnel C{request} opened (status 101) closed after C{seconds},
        with C{bytes_received} from the client through it.
        """


class ConnectionSettings:
    """
    What every HTTP/1.1 connection of a site shares: limits, timeouts, the
    handler, the access log and the HTTPS policies.  Replaced whole on
    reload; a connection keeps the settings it started with.

    @ivar handler: takes each request (the proxy resource).
    @ivar access_log: logs each answered request.
    @ivar limits: the framing gate's size limits.
    @ivar client_timeout: seconds an idle keep-alive connection stays open.
    @ivar header_timeout: seconds a head may take from its first byte.
    @ivar body_timeout: seconds a body may stall between two reads.
    @ivar redirect_https: answer plain requests with 308 to https on this
        port; 0 for off.
    @ivar hsts: the C{Strict-Transport-Security} value for TLS answers, or
        L{None}.
    @ivar on_refused: told of every refused request and the client's
        address (a rate-limited log).
    @ivar date: the current C{Date} header value.
    """

    __slots__ = (
        "handler",
        "access_log",
        "limits",
        "client_timeout",
        "header_timeout",
        "body_timeout",
        "redirect_https",
        "hsts",
        "on_refused",
        "date",
    )

    def __init__(
        self,
        handler: RequestHandler,
        access_log: AccessLog,
        limits: Limits,
        *,
        date: Callable[[], bytes],
        client_timeout: float = 60.0,
        header_timeout: float = 60.0,
        body_timeout: float = 60.0,
        redirect_https: int = 0,
        hsts: int = 0,
        on_refused: Callable[[FramingError, str], None] | None = None,
    ) -> None:
        self.handler = handler
        self.access_log = access_log
        self.limits = limits
        self.date = date
        self.client_timeout = client_timeout
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.redirect_https = redirect_https
        self.hsts = b"max-age=%d" % hsts if hsts else None
        self.on_refused = on_refused
