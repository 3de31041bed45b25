# -*- test-case-name: tests.http.test_site -*-
"""
The client-facing factory: L{ProxySite}.

Every connection starts as an L{lbproxy.http.h1.HTTP11Connection}, the lean
HTTP/1.1 path; on a TLS listener whose client picked C{h2} by ALPN, it
hands the connection to lbproxy's HTTP/2 connection (L{lbproxy.http.h2})
before its first byte, whose streams are L{lbproxy.http.h2request.H2Request}s.
Both give their requests to the same handler, the proxy resource.

The site holds what the connections share (L{ConnectionSettings}, replaced
whole on reload: a connection keeps the settings it started with), the
access log, the rate-limited log of refused requests, and the set of open
connections, which a graceful stop closes once their answers are sent.

It is a twisted.web C{Site} because Twisted's HTTP/2 code asks its
connection's site for a request factory and a resource.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web import server
from twisted.web.http import datetimeToString

from lbproxy.config.model import Config
from lbproxy.http.accesslog import FORMATS, AccessLog
from lbproxy.http.framing import FramingError, Limits
from lbproxy.http.h1 import HTTP11Connection
from lbproxy.http.h2request import H2Request
from lbproxy.http.ratelog import RateLimitedLog
from lbproxy.http.settings import ConnectionSettings, RequestHandler

__all__ = ["ProxySite", "limits_of"]


def limits_of(config: Config) -> Limits:
    """
    The framing gate's limits of a configuration.
    """
    return Limits(
        max_request_line=config.max_request_line,
        max_header_line=config.max_header_line,
        max_headers_size=config.max_headers_size,
        max_headers=config.max_headers,
        max_body_size=config.max_body_size or None,
    )


class ProxySite(server.Site):
    """
    The factory lbproxy listens with; see the module docstring.

    @ivar settings: what new connections share; replaced on reload.
    @ivar access_log: where answered requests are logged.
    @ivar refusals: where refused requests are logged, at most once a
        second per reason, for all of this site's connections.
    @ivar connections: the open client connections.
    """

    requestFactory = H2Request
    displayTracebacks = False
    noisy = False
    _log = Logger()

    def __init__(
        self,
        handler: RequestHandler,
        config: Config,
        access_log: AccessLog,
        reactor: IReactorTime,
    ) -> None:
        """
        @param handler: takes each request: the proxy resource.
        @param config: the limits, timeouts and HTTPS policies.
        @param access_log: where answered requests are logged.
        @param reactor: what times connections.
        """
        super().__init__(handler, reactor=reactor)
        self.handler = handler
        self.access_log = access_log
        self.refusals = RateLimitedLog(reactor)
        self.connections: set[HTTP11Connection] = set()
        self._all_closed: list[Deferred[None]] = []
        self._date_second = -1
        self._date = b""
        self.settings = self._settings(config)

    def _settings(self, config: Config) -> ConnectionSettings:
        return ConnectionSettings(
            self.handler,
            self.access_log,
            limits_of(config),
            date=self.date,
            client_timeout=config.client_timeout,
            header_timeout=config.client_header_timeout,
            body_timeout=config.client_body_timeout,
            redirect_https=config.redirect_https,
            hsts=config.hsts,
            on_refused=self._refused,
        )

    @property
    def limits(self) -> Limits:
        """
        The framing gate's limits for new connections.
        """
        return self.settings.limits

    def apply(self, config: Config) -> None:
        """
        Take a reloaded configuration: new connections get its limits,
        timeouts and HTTPS policies; the access log its format.
        """
        self.settings = self._settings(config)
        self.access_log.use_format(FORMATS[config.access_log_format])

    # Twisted types HTTPFactory.buildProtocol as building its HTTP channel;
    # lbproxy's connections are its own (the site is a twisted.web Site for
    # Twisted's HTTP/2 code only, see the module docstring).
    def buildProtocol(self, addr: Any) -> HTTP11Connection:  # type: ignore[override]
        """
        A new client connection.
        """
        connection = HTTP11Connection(self.settings, self.reactor, self)
        connection.factory = self
        return connection

    def date(self) -> bytes:
        """
        The C{Date} header value for lbproxy's own answers, made once a
        second.
        """
        now = int(self.reactor.seconds())
        if now != self._date_second:
            self._date_second = now
            self._date = datetimeToString(now)
        return self._date

    def _refused(self, error: FramingError, peer: str) -> None:
        self.refusals.refused(str(error), peer, error.status)

    # The connections' host (lbproxy.http.h1.ConnectionHost)

    def connection_opened(self, connection: HTTP11Connection) -> None:
        """
        A client connected.
        """
        self.connections.add(connection)

    def connection_closed(self, connection: HTTP11Connection) -> None:
        """
        A client connection closed; a stop waiting for the last one ends.
        """
        self.connections.discard(connection)
        if not self.connections and self._all_closed:
            waiters, self._all_closed = self._all_closed, []
            for waiter in waiters:
                waiter.callback(None)

    def http2_connection(self) -> Any:
        """
        A new HTTP/2 connection, behind lbproxy's gate, for a client that
        picked C{h2} by ALPN.
        """
        from lbproxy.http.h2 import ProxyH2Connection

        # Its own scheduling (callLater(0) to send queued data) needs the
        # real reactor, whatever clock times the site's timeouts in tests.
        connection = ProxyH2Connection(self.settings.limits)
        connection.requestFactory = self.requestFactory
        connection.site = self
        connection.factory = self
        # Twisted's TimeoutMixin annotates timeOut as int; it is seconds, and
        # HTTPFactory's own is int | float.
        connection.timeOut = self.settings.client_timeout  # type: ignore[assignment]
        # TimeoutMixin.callLater is the hook Twisted documents for replacing
        # its clock; mypy checks a bound method put in a method's place as if
        # it were to be bound again.
        connection.callLater = self.reactor.callLater  # type: ignore[method-assign, assignment]
        return connection

    def close_connections(self) -> Deferred[None]:
        """
        Close every client connection once its answer in progress, if any,
        is sent (on stop, after the drain); fires when all are closed.
        """
        if not self.connections:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._all_closed.append(waiter)
        for connection in list(self.connections):
            connection.close_when_idle()
        return waiter

    # twisted.web's HTTPFactory: lbproxy logs and times itself.

    def startFactory(self) -> None:
        """
        Nothing to open: the access log is lbproxy's own.
        """

    def stopFactory(self) -> None:
        """
        Write what the refusals log holds.
        """
        self.refusals.flush()

    def log(self, request: object) -> None:
        """
        Nothing: requests are logged by lbproxy's own access log.
        """
