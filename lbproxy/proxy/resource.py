# -*- test-case-name: tests.proxy.test_proxy -*-
"""
The proxy resource: picks a server for each request and relays the answer.

L{BalancingProxyResource} is a L{ReverseProxyResource} (as our user asked)
whose C{render} hands each request to a L{ProxyExchange}.  The exchange is
the L{IResponseSink} for the upstream client: it copies status, reason,
headers and body to the client as they arrive, registers the upstream
connection as the client's producer (so a slow client pauses the upstream),
and decides what happens when an attempt fails:

  - nothing reached the server (connection refused, connect timeout): try
    the next server of the pool, for every method (nginx's
    C{proxy_next_upstream error timeout});
  - a reused keep-alive connection closed before any byte of the answer: an
    idempotent request is sent again on a fresh connection; a
    non-idempotent one gets 502, as in nginx, since the server may have
    seen it (lbproxy's idle timeout, below Node's, makes this rare);
  - anything else before the answer started: 502, or 504 for the read
    timeout;
  - anything after the answer started: the client connection is aborted,
    so a truncated body never looks complete.

A client that takes no byte of its answer for C{send_timeout} seconds
(nginx's C{send_timeout 60s}) is closed, and the upstream connection with
it: the exchange is the client side's producer, so it knows when the client
holds the answer back, and it watches the client's socket (or, on HTTP/2,
the stream's flow control) for progress; an HTTP/2 stream is reset, not its
whole connection.

Only the server's failures count towards its C{max-fails}
(L{lbproxy.upstream.connection.UpstreamError.server_fault}): not a stale pooled
connection, not a bug in lbproxy (502, traceback logged), not a client
that stalls or leaves.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.logger import Logger
from twisted.web.http import datetimeToString
from twisted.web.http_headers import Headers
from twisted.web.proxy import ReverseProxyResource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from lbproxy.balancing.pool import Pool, Server
from lbproxy.balancing.routes import Router
from lbproxy.errors import ConnectFailed, StaleConnection, UpstreamError
from lbproxy.proxy.headers import end_to_end, upstream_request_headers
from lbproxy.upstream.body import StreamingBody
from lbproxy.upstream.client import UpstreamClient
from lbproxy.upstream.connection import UpstreamRequest, serialize_request_head

if TYPE_CHECKING:
    from lbproxy.http.site import ProxyRequest

__all__ = ["BalancingProxyResource", "ProxyExchange"]

Header = tuple[bytes, bytes]

#: Names this process in the C{Via} header it adds (RFC 9110 section 7.6.3),
#: so that a request coming back to it is recognised as a loop (508) rather
#: than forwarded until its headers overflow; other lbproxy processes in a
#: chain have other names.
VIA_TOKEN = b"lbproxy-" + secrets.token_hex(4).encode("ascii")
_VIA = b"1.1 " + VIA_TOKEN

#: RFC 9110 section 9.2.2.
IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})

#: Methods whose requests carry a body by definition: they get a
#: Content-Length even when it is 0, as many app servers require one.
_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})


class BalancingProxyResource(ReverseProxyResource):
    """
    A reverse proxy over L{Pool}s: each request goes to the pool its route
    names, and there to the server the pool's balancer picks.

    It subclasses L{ReverseProxyResource} for its place in C{twisted.web}
    but replaces its one-connection-per-request HTTP/1.0 client with
    L{UpstreamClient}.

    @ivar router: chooses the pool; replaced whole on reload, while
        requests in flight keep the pool they started with.
    @ivar exchanges: the requests being proxied now.
    @ivar send_timeout: seconds a client may take no byte of its answer
        while lbproxy holds some for it (nginx's C{send_timeout}); changed
        on reload.
    """

    isLeaf = True
    _log = Logger()

    def __init__(
        self, router: Router[Pool], client: UpstreamClient, send_timeout: float = 60.0
    ) -> None:
        """
        @param router: the routes and pools.
        @param client: the pooled upstream client; its clock times the
            send timeout too.
        @param send_timeout: see L{send_timeout}.
        """
        first = next(iter(router.pools.values())).servers[0].config
        super().__init__(first.host, first.port, b"")
        self.router = router
        self.client = client
        self.send_timeout = send_timeout
        self.exchanges: set[ProxyExchange] = set()
        self._drain_waiters: list[Deferred[None]] = []

    @property
    def in_flight(self) -> int:
        """
        How many requests are being proxied now.
        """
        return len(self.exchanges)

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

    def _exchange_ended(self, exchange: ProxyExchange) -> None:
        self.exchanges.discard(exchange)
        if not self.exchanges and self._drain_waiters:
            waiters, self._drain_waiters = self._drain_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def getChild(self, path: bytes, request: object) -> BalancingProxyResource:
        """
        Every path is ours: the whole target is forwarded as it came.
        """
        return self

    def render(self, request: ProxyRequest) -> int:  # type: ignore[override]
        """
        Start proxying C{request}; the answer is written as it arrives.
        """
        ProxyExchange(self, request).start()
        return NOT_DONE_YET


def _origin_form(target: bytes) -> bytes:
    """
    The request target to send upstream: unchanged, except that an
    absolute-form target (C{http://host/path}) becomes its path and query
    (RFC 9112 section 3.2.2; servers need only accept absolute-form from
    proxies).
    """
    if target[:1] == b"/":
        return target
    lower = target[:8].lower()
    if lower.startswith(b"http://") or lower.startswith(b"https://"):
        slash = target.find(b"/", target.find(b"//") + 2)
        return target[slash:] if slash != -1 else b"/"
    return target


@implementer(IPushProducer)
class ProxyExchange:
    """
    One client request's way through the proxy: attempts, relay, failure.

    It implements L{lbproxy.upstream.connection.IResponseSink}, and is the producer of
    the client's response (an C{IPushProducer}): it passes pauses on to the
    upstream connection and times how long the client takes nothing (the
    send timeout).
    """

    __slots__ = (
        "_resource",
        "_pool",
        "_request",
        "_upstream_request",
        "_tried",
        "_server",
        "_abandon",
        "_started",
        "_finished",
        "_retried_stale",
        "_producer",
        "_paused",
        "_send_timer",
        "_stalled_since",
        "_unsent",
    )
    _log = Logger()

    def __init__(self, resource: BalancingProxyResource, request: ProxyRequest) -> None:
        self._resource = resource
        self._request = request
        self._upstream_request = _build_upstream_request(request)
        self._tried: list[Server] = []
        self._server: Server | None = None
        self._abandon: Callable[[], None] | None = None
        self._started = False
        self._finished = False
        self._retried_stale = False
        self._pool: Pool | None = None
        self._producer: IPushProducer | None = None
        self._paused = False
        self._send_timer: IDelayedCall | None = None
        self._stalled_since = 0.0
        self._unsent: int | None = None

    def start(self) -> None:
        """
        Route the request to its pool and send it to the server the pool
        picks; 404 if no route matches.
        """
        request = self._request
        request.exchange = self
        resource = self._resource
        resource.exchanges.add(self)
        via = request.requestHeaders.getRawHeaders(b"via")
        if via is not None and any(VIA_TOKEN in value for value in via):
            # This request already passed through this very process: the
            # configuration points lbproxy at itself.
            self._respond_error(508, b"Loop Detected", b"request loops through this proxy")
            return
        router = resource.router
        self._pool = router.only or router.route(
            request.requestHeaders.getRawHeaders(b"host", [None])[0], request.uri
        )
        if self._pool is None:
            self._respond_error(404, b"Not Found", b"no route for this host and path")
            return
        self._attempt()

    def _end(self) -> None:
        """
        The exchange is over (answered, failed or abandoned); once only.
        """
        self._finished = True
        self._cancel_send_timer()
        self._resource._exchange_ended(self)

    def abort(self) -> None:
        """
        Give up on this request: drop the upstream connection, and the
        client's connection (HTTP/1.x) or stream (HTTP/2).
        """
        if not self._finished:
            self._end()
            if self._abandon is not None:
                self._abandon()
            self._request.abort_client()

    def _attempt(self) -> None:
        resource = self._resource
        pool = self._pool
        assert pool is not None
        server = pool.pick(self._tried) if len(self._tried) < pool.max_tries else None
        if server is None:
            if self._tried:
                self._respond_error(502, b"Bad Gateway", b"no upstream server could be reached")
            else:
                if pool.first_with_none_up():
                    self._log.warn("pool {pool}: no server is up", pool=pool.name)
                self._respond_error(503, b"Service Unavailable", b"no healthy upstream")
            return
        self._tried.append(server)
        self._server = server
        self._abandon = resource.client.send(server, self._upstream_request, self)

    def client_gone(self) -> None:
        """
        The client disconnected: abandon the upstream exchange.
        """
        if not self._finished:
            self._end()
            if self._abandon is not None:
                self._abandon()

    def processing_failed(self) -> None:
        """
        An exception escaped while this request was being proxied (a bug
        in lbproxy; the request answers 500): end the exchange, abandon
        its upstream side without blaming the server, and let the client
        finish sending a body that nothing will take.
        """
        if not self._finished:
            self._end()
            if self._abandon is not None:
                self._abandon()
        if self._request.body_stream is not None:
            self._request.body_stream.detach()

    # IResponseSink

    def response_headers(
        self, status: int, reason: bytes, headers: list[Header], producer: IPushProducer
    ) -> None:
        """
        Copy the status line and end-to-end headers to the client.
        """
        if self._finished:
            return
        request = self._request
        request.setResponseCode(status, reason)
        # Keep only what the channel decided about this connection
        # ("Connection: close"); twisted.web's other defaults (Server, Date,
        # Content-Type) would hide the app server's own.
        closing = request.responseHeaders.getRawHeaders(b"connection")
        response_headers = Headers()
        add = response_headers.addRawHeader
        for name, value in end_to_end(headers):
            add(name, value)
        if closing:
            response_headers.setRawHeaders(b"Connection", closing)
        request.responseHeaders = response_headers
        self._producer = producer
        request.registerProducer(self, True)
        # The answer has started: a later failure aborts the client.  (A
        # failure above, a bug, still gets the client a plain 502.)
        self._started = True
        if getattr(request.channel, "_waitingForTransport", False):
            # The client's buffer is already full (an earlier answer on this
            # connection): start paused, as the channel will not tell us.
            self.pauseProducing()

    def response_body(self, data: bytes) -> None:
        """
        Relay a piece of the body.
        """
        if not self._finished:
            self._request.write(data)

    def response_done(self) -> None:
        """
        The answer is complete: finish the client's response.
        """
        if self._finished:
            return
        self._end()
        request = self._request
        request.unregisterProducer()
        request.finish()

    def response_failed(self, error: UpstreamError) -> None:
        """
        Retry, answer 502/503/504, or abort the client, as the module
        docstring describes.
        """
        if self._finished:
            return
        request = self._request
        server = self._server
        assert server is not None
        self._log.warn(
            "upstream {server} failed: {reason} ({method} {target})",
            server=server.address,
            reason=str(error),
            method=request.method.decode("latin-1"),
            target=request.uri.decode("latin-1"),
        )
        # Registered if relaying the headers failed half-way (a bug).
        request.unregisterProducer()
        if self._started:
            self._end()
            request.unregisterProducer()
            # The connection, or on HTTP/2 the stream (whose transport is None).
            request.abort_client()
            return
        if error.server_fault:
            # nginx's max_fails counts errors, timeouts and invalid answers
            # before the answer started; a stale pooled connection or a bug
            # in lbproxy is not the server's.
            self._pool.attempt_failed(server, str(error))  # type: ignore[union-attr]
        if isinstance(error, ConnectFailed):
            self._attempt()
        elif (
            isinstance(error, StaleConnection)
            and not self._retried_stale
            and request.method in IDEMPOTENT_METHODS
            and not _body_sent(self._upstream_request)
        ):
            self._retried_stale = True
            self._abandon = self._resource.client.send_fresh(server, self._upstream_request, self)
        elif error.status == 504:
            self._respond_error(504, b"Gateway Timeout", b"upstream timed out")
        else:
            self._respond_error(502, b"Bad Gateway", b"bad answer from upstream")

    # IPushProducer, registered with the client's request

    def pauseProducing(self) -> None:
        """
        The client takes no more for now: stop reading from the app server
        (its read timeout stops too) and start the send timeout.
        """
        if self._paused or self._finished:
            return
        self._paused = True
        if self._producer is not None:
            self._producer.pauseProducing()
        clock = self._resource.client.clock
        now = clock.seconds()
        self._stalled_since = now
        self._unsent = _unsent(self._request.transport)
        self._send_timer = clock.callLater(
            self._resource.send_timeout / 4, self._check_send_timeout
        )

    def resumeProducing(self) -> None:
        """
        The client took what was waiting: read from the app server again.
        """
        if not self._paused:
            return
        self._paused = False
        self._cancel_send_timer()
        if self._producer is not None and not self._finished:
            self._producer.resumeProducing()

    def stopProducing(self) -> None:
        """
        The client connection is going away: abandon the upstream exchange.
        """
        self.client_gone()

    def _check_send_timeout(self) -> None:
        """
        Close a client that took no byte for C{send_timeout} seconds while
        paused.  A client that takes some, slowly, is not stalled: Twisted
        resumes a producer only once the client's write buffer is empty,
        which a slow reader may take longer than the timeout to reach, so
        the buffer is looked at every quarter of the timeout and any byte
        taken counts as progress (nginx's send_timeout also runs "between
        two successive write operations", not for the whole answer).
        """
        self._send_timer = None
        if self._finished or not self._paused:
            return
        clock = self._resource.client.clock
        now = clock.seconds()
        unsent = _unsent(self._request.transport)
        if unsent is not None and self._unsent is not None and unsent < self._unsent:
            self._stalled_since = now
        self._unsent = unsent
        timeout = self._resource.send_timeout  # may change on reload
        remaining = self._stalled_since + timeout - now
        if remaining > 0:
            self._send_timer = clock.callLater(
                min(timeout / 4, remaining), self._check_send_timeout
            )
            return
        request = self._request
        self._log.info(
            "client {client} took nothing for {timeout:g} s (send timeout): closed, "
            "with its connection to {server} ({method} {target})",
            client=request.client_host().decode("ascii", "replace"),
            timeout=timeout,
            server=self._server.address if self._server is not None else "-",
            method=request.method.decode("latin-1"),
            target=request.uri.decode("latin-1"),
        )
        # Both connections go: the upstream one is half-read, so it is
        # dropped rather than pooled; on HTTP/2 only this stream is reset.
        self.abort()

    def _cancel_send_timer(self) -> None:
        timer, self._send_timer = self._send_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _respond_error(self, status: int, reason: bytes, text: bytes) -> None:
        self._end()
        request = self._request
        if request.body_stream is not None:
            # Nothing will take the rest of the body: let the client finish
            # sending it into the void (the answer goes out when it has).
            request.body_stream.detach()
        body = b"%d %s: %s\n" % (status, reason, text)
        request.setResponseCode(status, reason)
        closing = request.responseHeaders.getRawHeaders(b"connection")
        headers = request.responseHeaders = Headers()
        if closing:
            headers.setRawHeaders(b"Connection", closing)
        headers.addRawHeader(b"Content-Type", b"text/plain; charset=utf-8")
        headers.addRawHeader(b"Content-Length", b"%d" % len(body))
        headers.addRawHeader(b"Date", datetimeToString())
        request.write(body)
        request.finish()


def _unsent(transport: object) -> int | None:
    """
    How many bytes of a client's answer wait in lbproxy for its socket:
    the write buffer of the socket's transport, found below any TLS layer
    (a C{TLSMemoryBIOProtocol}'s C{transport}).

    @return: the byte count, or L{None} if there is no socket to look at
        (an HTTP/2 stream: its flow control resumes the exchange whenever
        the client takes data).
    """
    for _ in range(3):
        if isinstance(transport, FileDescriptor):
            return len(transport.dataBuffer) - transport.offset + transport._tempDataLen
        transport = getattr(transport, "transport", None)
        if transport is None:
            break
    return None


def _body_sent(upstream_request: UpstreamRequest) -> bool:
    """
    Whether part of a streamed body already went out, so that the request
    cannot be sent again.
    """
    body = upstream_request.body
    return isinstance(body, StreamingBody) and body.sent_any


def _build_upstream_request(request: ProxyRequest) -> UpstreamRequest:
    """
    Serialise the client's request for the app server, once per request
    (retries reuse it).
    """
    method = request.method
    raw = [
        (name, value)
        for name, values in request.requestHeaders.getAllRawHeaders()
        for value in values
    ]
    headers = upstream_request_headers(
        raw,
        client_address=request.client_host(),
        scheme=b"https" if request.isSecure() else b"http",
        default_host=request.default_host,
    )
    body: bytes | StreamingBody = b""
    stream = request.body_stream
    if stream is not None:
        # Content-Length as the client sent it, or chunked if it was.
        headers.append(stream.framing_header)
        body = stream
    elif method in _BODY_METHODS or request.had_body_framing():
        headers.append((b"Content-Length", b"0"))
    headers.append((b"Via", _VIA))
    head = serialize_request_head(method, _origin_form(request.uri), headers)
    return UpstreamRequest(method, head, body)
