# -*- test-case-name: tests.upstream.test_connection -*-
"""
The upstream client: where connections to app servers come from and wait.

Per server, L{UpstreamClient} keeps a stack of idle keep-alive connections
(nginx's C{keepalive N}) and the endpoint that makes new ones; it hands a
request to an idle connection that is still fresh, or to a new one.  The
connections themselves are L{lbproxy.upstream.connection.UpstreamConnection}s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import error as ierror
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from lbproxy.errors import ConnectFailed
from lbproxy.upstream.connection import (
    IResponseSink,
    UpstreamConnection,
    UpstreamRequest,
    UpstreamServer,
)
from lbproxy.upstream.tls import UpstreamTLS, tls_failure_text

__all__ = ["UpstreamClient", "connect_failure_text"]


class _ConnectionFactory(Factory):
    """
    Builds connections to one server for its L{UpstreamClient}.

    @ivar tls: the client's TLS settings when this factory was made, which
        its endpoint's connections are verified with.
    """

    noisy = False

    def __init__(self, client: UpstreamClient, server: UpstreamServer) -> None:
        self._client = client
        self._server = server
        self.tls = client.tls

    def buildProtocol(self, addr: object) -> UpstreamConnection:
        connection = UpstreamConnection(self._client, self._server)
        # As Factory.buildProtocol does: the connection knows where it came
        # from (the client checks its TLS settings when it is released).
        connection.factory = self
        return connection


class UpstreamClient:
    """
    Sends requests to app servers over pooled keep-alive connections.

    Per server it keeps at most C{keepalive} idle connections, most recently
    used first (nginx's C{keepalive 32}; LIFO keeps the fewest connections
    warm).  An idle connection leaves the pool the moment it closes, and one
    idle longer than C{idle_timeout} is closed instead of used, so lbproxy
    closes before the app server does (Node's default is 5 s): that avoids
    the race where a server closes a connection as a request goes out.
    """

    def __init__(
        self,
        reactor: object,
        clock: IReactorTime,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        keepalive: int = 32,
        idle_timeout: float = 4.0,
        endpoint_factory: Callable[[UpstreamServer], object] | None = None,
        tls: UpstreamTLS | None = None,
        max_headers_size: int = 65536,
    ) -> None:
        """
        @param reactor: what makes connections (C{IReactorTCP} and a name
            resolver, for L{HostnameEndpoint}).
        @param clock: what times things; a L{twisted.internet.task.Clock}
            in tests.
        @param connect_timeout: seconds to wait for a connection.
        @param read_timeout: seconds the app server may stay silent.
        @param keepalive: idle connections kept per server.
        @param idle_timeout: seconds an idle connection may be reused for.
        @param endpoint_factory: makes the C{IStreamClientEndpoint} for a
            server; defaults to a L{HostnameEndpoint}, wrapped in TLS for
            C{https} servers.
        @param tls: the TLS settings for C{https} servers; platform trust
            and full verification if L{None}.
        @param max_headers_size: the largest response head (status line
            and headers) accepted from a server; 502 beyond, as nginx's
            "upstream sent too big header".
        """
        self._reactor = reactor
        self.clock = clock
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keepalive = keepalive
        self.idle_timeout = idle_timeout
        self.max_headers_size = max_headers_size
        self._endpoint_factory = endpoint_factory or self._hostname_endpoint
        self._idle: dict[UpstreamServer, list[UpstreamConnection]] = {}
        self._endpoints: dict[UpstreamServer, tuple[object, _ConnectionFactory]] = {}
        self.tls = tls

    def _hostname_endpoint(self, server: UpstreamServer) -> Any:
        endpoint = self._tcp_endpoint(server)
        if server.config.scheme != "https":
            return endpoint
        if self.tls is None:
            self.tls = UpstreamTLS()
        # The certificate is verified against the configured host name
        # (service-identity), whatever address it resolved to.  The
        # transport is then a TLSMemoryBIOProtocol, which _send_now leaves
        # to its plain write.
        return wrapClientTLS(self.tls.creator(server.config.host), endpoint)

    def _tcp_endpoint(self, server: UpstreamServer) -> Any:
        host = server.config.host
        if isIPAddress(host):
            # No name to resolve: skip HostnameEndpoint's resolver thread
            # hop, which cost a third of the throughput under connection
            # churn (bench/RESULTS.md, scaling).
            return TCP4ClientEndpoint(
                self._reactor, host, server.config.port, timeout=self.connect_timeout
            )
        if isIPv6Address(host):
            return TCP6ClientEndpoint(
                self._reactor, host, server.config.port, timeout=self.connect_timeout
            )
        # HostnameEndpoint resolves the name for each new connection and
        # tries every address (IPv6 and IPv4), so "localhost" works whether
        # the app listens on ::1 or 127.0.0.1.
        return HostnameEndpoint(
            self._reactor,
            server.config.host,
            server.config.port,
            timeout=self.connect_timeout,
        )

    def send(
        self, server: UpstreamServer, request: UpstreamRequest, sink: IResponseSink
    ) -> Callable[[], None]:
        """
        Send C{request} to C{server}, on an idle connection if one is fresh,
        else on a new one.

        @return: a function that abandons the exchange (the client went
            away); calling it after the exchange ended does nothing.
        """
        connection = self._take_idle(server)
        if connection is not None:
            sink.connection_ready()
            try:
                return connection.send(request, sink, reused=True)
            except Exception:
                # A bug must cost one 502, not a request that hangs forever.
                connection.internal_error(sink, "sending")
                return _nothing
        return self.send_fresh(server, request, sink)

    def send_fresh(
        self, server: UpstreamServer, request: UpstreamRequest, sink: IResponseSink
    ) -> Callable[[], None]:
        """
        Send C{request} to C{server} on a new connection.

        @return: as for L{send}.
        """
        endpoint_and_factory = self._endpoints.get(server)
        if endpoint_and_factory is None:
            endpoint_and_factory = (
                self._endpoint_factory(server),
                _ConnectionFactory(self, server),
            )
            self._endpoints[server] = endpoint_and_factory
        endpoint, factory = endpoint_and_factory
        connecting: Deferred[UpstreamConnection] = endpoint.connect(factory)  # type: ignore[attr-defined]
        # Until connected, abandoning cancels the connection attempt (a
        # no-op once it failed); then it is the exchange's own abandon.
        state: dict[str, Callable[[], None]] = {"abandon": connecting.cancel}

        def connected(connection: UpstreamConnection) -> None:
            sink.connection_ready()
            try:
                state["abandon"] = connection.send(request, sink, reused=False)
            except Exception:
                # A bug must cost one 502, not a request that hangs forever.
                state["abandon"] = _nothing
                connection.internal_error(sink, "sending")

        def failed(reason: Failure) -> None:
            state["abandon"] = _nothing
            if reason.check(CancelledError, ierror.ConnectingCancelledError):
                return  # abandoned by the caller
            sink.response_failed(ConnectFailed(connect_failure_text(reason)))

        connecting.addCallbacks(connected, failed)

        def abandon() -> None:
            state["abandon"]()

        return abandon

    def reconfigure(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        keepalive: int,
        idle_timeout: float,
        tls: UpstreamTLS | None,
    ) -> None:
        """
        Take reloaded settings (see L{__init__}): new connections use them,
        exchanges in flight finish with theirs.

        The endpoints kept per server hold the connect timeout and the TLS
        settings they were made with, so they are made anew.  When the TLS
        settings change (another object), connections to C{https} servers
        verified under the old ones are not used again: the idle ones are
        closed, and those in flight are closed when their exchange ends.
        """
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keepalive = keepalive
        self.idle_timeout = idle_timeout
        self._endpoints.clear()
        if tls is self.tls:
            return
        self.tls = tls
        for server, idle in self._idle.items():
            if server.config.scheme == "https":
                for connection in idle:
                    connection.transport.loseConnection()
                idle.clear()

    def _take_idle(self, server: UpstreamServer) -> UpstreamConnection | None:
        idle = self._idle.get(server)
        if not idle:
            return None
        oldest_usable = self.clock.seconds() - self.idle_timeout
        while idle:
            connection = idle.pop()
            if connection.idle_since >= oldest_usable:
                return connection
            connection.transport.loseConnection()
        return None

    def connection_idle(self, connection: UpstreamConnection) -> None:
        """
        Put a connection whose exchange ended cleanly back in its pool.

        The pool may hold more than C{keepalive} connections for a moment:
        under a burst many exchanges end in one reactor turn and as many
        requests follow in the next, and closing the excess only to open it
        again halved throughput at 256 clients.  L{sweep_idle} (every
        second) trims the pool back to C{keepalive}.
        """
        factory = connection.factory
        stale = isinstance(factory, _ConnectionFactory) and factory.tls is not self.tls
        if self.keepalive == 0 or (stale and connection.server.config.scheme == "https"):
            # (A stale one was verified under TLS settings since reloaded.)
            connection.transport.loseConnection()
            return
        connection.idle_since = self.clock.seconds()
        self._idle.setdefault(connection.server, []).append(connection)

    def connection_closed(self, connection: UpstreamConnection) -> None:
        """
        Remove a closed connection from its pool, if it is there.
        """
        idle = self._idle.get(connection.server)
        if idle and connection in idle:
            idle.remove(connection)

    def idle_count(self, server: UpstreamServer) -> int:
        """
        How many idle connections to C{server} are pooled now.
        """
        return len(self._idle.get(server, ()))

    def forget_server(self, server: UpstreamServer) -> None:
        """
        A server left the configuration: close its idle connections and
        drop its endpoint (exchanges in flight finish on theirs).
        """
        for connection in self._idle.pop(server, []):
            connection.transport.loseConnection()
        self._endpoints.pop(server, None)

    def close_idle(self) -> None:
        """
        Close every idle connection (on shutdown).
        """
        for idle in self._idle.values():
            for connection in list(idle):
                connection.transport.loseConnection()
            idle.clear()

    def sweep_idle(self) -> None:
        """
        Close idle connections older than C{idle_timeout}, and the oldest
        beyond C{keepalive}; called every second so that idle sockets do not
        linger.
        """
        oldest_usable = self.clock.seconds() - self.idle_timeout
        for idle in self._idle.values():
            # Oldest first; the expired ones and any beyond keepalive go.
            excess = max(len(idle) - self.keepalive, 0)
            closing = [
                c for index, c in enumerate(idle) if index < excess or c.idle_since < oldest_usable
            ]
            for connection in closing:
                idle.remove(connection)
                connection.transport.loseConnection()


def _nothing() -> None:
    """
    Abandon an exchange that is already over.
    """


def connect_failure_text(reason: Failure) -> str:
    """
    A short reason why a connection to a server failed, for log lines (the
    proxy's and the health checks'): refused, timed out, name not found,
    or what the TLS handshake objected to.
    """
    tls = tls_failure_text(reason)
    if tls is not None:
        return f"TLS handshake failed: {tls}"
    if reason.check(ierror.ConnectionRefusedError):
        return "connection refused"
    if reason.check(ierror.TimeoutError):
        return "connect timed out"
    if reason.check(ierror.DNSLookupError):
        return f"host name not found: {reason.getErrorMessage()}"
    return reason.getErrorMessage()
