# -*- test-case-name: tests.proxy.test_proxy -*-
"""
The proxy resource: L{BalancingProxyResource}, a L{ReverseProxyResource}
(as our user asked) that hands each request to a
L{lbproxy.proxy.exchange.ProxyExchange}.

HTTP/1.1 connections hand it their requests directly (L{handle});
HTTP/2 streams, twisted.web requests, reach it through C{render}, as any
twisted.web resource.  It keeps the routes and pools in force, the upstream
client, the send timeout, and the exchanges in flight (for a graceful
stop).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.web.http import datetimeToString
from twisted.web.proxy import ReverseProxyResource
from twisted.web.server import NOT_DONE_YET

from lbproxy.balancing.pool import Pool
from lbproxy.balancing.routes import Router
from lbproxy.http.request import ClientRequest
from lbproxy.proxy.exchange import ProxyExchange
from lbproxy.upstream.client import UpstreamClient

__all__ = ["BalancingProxyResource"]


class BalancingProxyResource(ReverseProxyResource):
    """
    A reverse proxy over L{Pool}s: each request goes to the pool its route
    names, and there to the server the pool's balancer picks.

    It subclasses L{ReverseProxyResource} for its place in C{twisted.web}
    but replaces its one-connection-per-request HTTP/1.0 client with
    L{UpstreamClient}.

    @ivar router: chooses the pool; replaced whole on reload, while
        requests in flight keep the pool they started with.
    @ivar client: the pooled upstream client.
    @ivar exchanges: the requests being proxied now.
    @ivar send_timeout: seconds a client may take no byte of its answer
        while lbproxy holds some for it (nginx's C{send_timeout}); changed
        on reload.
    @ivar tunnel_timeout: seconds a new tunnel may carry no byte either
        way (HAProxy's C{timeout tunnel}); changed on reload, for new
        tunnels.
    """

    isLeaf = True

    def __init__(
        self,
        router: Router[Pool],
        client: UpstreamClient,
        send_timeout: float = 60.0,
        tunnel_timeout: float = 3600.0,
    ) -> None:
        """
        @param router: the routes and pools.
        @param client: the pooled upstream client; its clock times the
            send timeout and tunnels too.
        @param send_timeout: see L{send_timeout}.
        @param tunnel_timeout: see L{tunnel_timeout}.
        """
        first = next(iter(router.pools.values())).servers[0].config
        super().__init__(first.host, first.port, b"")
        self.router = router
        self.client = client
        self.send_timeout = send_timeout
        self.tunnel_timeout = tunnel_timeout
        self.exchanges: set[ProxyExchange] = set()
        self._drain_waiters: list[Deferred[None]] = []
        self._date_second = -1
        self._date = b""

    def handle(self, request: ClientRequest) -> None:
        """
        Start proxying C{request}; the answer is written as it arrives.
        """
        ProxyExchange(self, request).start()

    def render(self, request: ClientRequest) -> int:
        """
        Start proxying a twisted.web request (an HTTP/2 stream).
        """
        self.handle(request)
        return NOT_DONE_YET

    def getChild(self, path: bytes, request: object) -> BalancingProxyResource:
        """
        Every path is ours: the whole target is forwarded as it came.
        """
        return self

    @property
    def in_flight(self) -> int:
        """
        How many requests are being proxied now.
        """
        return len(self.exchanges)

    def exchange_started(self, exchange: ProxyExchange) -> None:
        """
        C{exchange} is in flight.
        """
        self.exchanges.add(exchange)

    def exchange_ended(self, exchange: ProxyExchange) -> None:
        """
        C{exchange} is over; a drain waiting for the last one ends.
        """
        self.exchanges.discard(exchange)
        if not self.exchanges and self._drain_waiters:
            waiters, self._drain_waiters = self._drain_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def abort_all(self) -> None:
        """
        Abort every request in flight (the drain timeout ran out).
        """
        for exchange in list(self.exchanges):
            exchange.abort()

    def drained(self) -> Deferred[None]:
        """
        A Deferred that fires once no request is in flight.
        """
        if not self.in_flight:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._drain_waiters.append(waiter)
        return waiter

    def date(self) -> bytes:
        """
        The C{Date} header value for lbproxy's own answers, made once a
        second.
        """
        now = int(self.client.clock.seconds())
        if now != self._date_second:
            self._date_second = now
            self._date = datetimeToString(now)
        return self._date
