# -*- test-case-name: tests.proxy.test_exchange -*-
"""
One client request's way through the proxy: L{ProxyExchange}.

The exchange routes the request to its pool, sends it to the server the
pool picks (L{lbproxy.upstream.client.UpstreamClient}), relays the answer
to the client as it arrives (it is the upstream connection's
L{IResponseSink}), and decides what follows a failure
(L{lbproxy.proxy.retry.after_failure}).  It sees the client only through
L{lbproxy.http.request.ClientRequest}, so HTTP/1.1 connections and HTTP/2
streams are proxied alike, and tests drive it with fakes of both sides.

Its state (L{State}) is one value::

    WAITING ──▶ RELAYING ──▶ DONE
       │  ▲          (answer complete, client reset, client gone)
       └──┘ retry: next server, or a fresh connection
       ├──────────────────▶ DONE
       │  (502, 503, 504, 404, 508 answered; client gone)
       └──▶ TUNNEL ──▶ DONE
          (101 to an upgrade request; the tunnel closed, or was aborted)

An upgrade request (L{lbproxy.http.request.ClientRequest.upgrade}) is
forwarded with C{Connection: upgrade} and its C{Upgrade}; the app server's
C{101} makes the two connections a tunnel (L{lbproxy.proxy.tunnel}), which
stays in flight, and an active connection of its server, until it closes.

A client that takes no byte of its answer for C{send_timeout} seconds
(nginx's C{send_timeout 60s}) is closed, and the upstream connection with
it: the exchange is the answer's producer, so it knows when the client
holds the answer back, and it watches the client's socket (or, on HTTP/2,
the stream's flow control) for progress; an HTTP/2 stream is reset, not its
whole connection.

When every server the request may use is at its C{max-conns}, the
exchange waits in its pool's queue (still WAITING) until the pool hands it
a server, or answers 503 when the queue is full or the wait times out.
With a sticky cookie, the answer gets a C{Set-Cookie} naming its server
unless the request's cookie named it already.

Only the server's failures count towards its C{max-fails}
(L{lbproxy.errors.UpstreamError.server_fault}): not a stale pooled
connection, not a bug in lbproxy (502, traceback logged), not a client
that stalls or leaves.

Each request gets its id (L{lbproxy.proxy.requestid}), sent upstream and
back as C{X-Request-Id}, lbproxy's own error answers included.  The
exchange notes what it did in the request's
L{lbproxy.http.request.ExchangeRecord} (the pool, the last server tried,
its status and timings, the retries) for the access log: a few attribute
writes per attempt, formatted only when the line is written.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Callable
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from lbproxy.balancing.pool import Pool, Server
from lbproxy.balancing.routes import Router
from lbproxy.errors import UpstreamError
from lbproxy.http.request import ClientRequest, ExchangeRecord, Header
from lbproxy.interfaces import TunnelEnd
from lbproxy.proxy.headers import REPLACED_DOWNSTREAM, end_to_end, upstream_request_headers
from lbproxy.proxy.requestid import request_id_for
from lbproxy.proxy.retry import Next, after_failure
from lbproxy.proxy.tunnel import Tunnel, open_tunnel, switch_headers
from lbproxy.upstream.body import StreamingBody
from lbproxy.upstream.client import UpstreamClient
from lbproxy.upstream.connection import UpstreamRequest, serialize_request_head


class ExchangeOwner(Protocol):
    """
    What an exchange needs of the proxy resource that made it: the routes
    and pools in force, the upstream client, the send timeout, a C{Date}
    for its own answers, and the count of exchanges in flight.
    """

    router: Router[Pool]
    client: UpstreamClient
    send_timeout: float
    tunnel_timeout: float

    def exchange_started(self, exchange: ProxyExchange) -> None:
        """
        C{exchange} is in flight.
        """

    def exchange_ended(self, exchange: ProxyExchange) -> None:
        """
        C{exchange} is over.
        """

    def date(self) -> bytes:
        """
        The current C{Date} header value.
        """


__all__ = ["VIA_TOKEN", "ExchangeOwner", "ProxyExchange", "State", "build_upstream_request"]

#: Names this process in the C{Via} header it adds (RFC 9110 section 7.6.3),
#: so that a request coming back to it is recognised as a loop (508) rather
#: than forwarded until its headers overflow; other lbproxy processes in a
#: chain have other names.
VIA_TOKEN = b"lbproxy-" + secrets.token_hex(4).encode("ascii")
_VIA = b"1.1 " + VIA_TOKEN

#: Methods whose requests carry a body by definition: they get a
#: Content-Length even when it is 0, as many app servers require one.
_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})


class State(enum.Enum):
    """
    Where an exchange is; see the module docstring for the transitions.
    """

    #: Attempts in progress: connecting, sending, waiting for the head.  A
    #: failure here may try again.
    WAITING = "waiting"
    #: The answer's head went to the client; its body is being relayed.  A
    #: failure now resets the client.
    RELAYING = "relaying"
    #: The app server switched protocols (101): the two connections are a
    #: tunnel until it closes.
    TUNNEL = "tunnel"
    #: Answered, failed or abandoned.
    DONE = "done"


@implementer(IPushProducer)
class ProxyExchange:
    """
    One client request's way through the proxy; see the module docstring.

    It implements L{lbproxy.upstream.connection.IResponseSink} and
    L{lbproxy.http.request.RequestExchange}, and is the producer of the
    client's answer (an C{IPushProducer}).

    @ivar state: where it is (L{State}).
    """

    __slots__ = (
        "state",
        "_resource",
        "_pool",
        "_request",
        "_record",
        "_upstream_request",
        "_tried",
        "_server",
        "_abandon",
        "_resent",
        "_producer",
        "_paused",
        "_send_timer",
        "_stalled_since",
        "_unsent",
        "_sent_at",
        "_status",
        "_tunnel",
    )
    _log = Logger()

    def __init__(self, resource: ExchangeOwner, request: ClientRequest) -> None:
        """
        @param resource: the proxy resource: routes, the upstream client,
            the send timeout, and the count of exchanges in flight.
        @param request: the client's request.
        """
        self.state = State.WAITING
        self._resource = resource
        self._request = request
        record = ExchangeRecord(
            request_id_for(request.header(b"x-request-id")), resource.client.clock.seconds()
        )
        request.record = self._record = record
        self._upstream_request = build_upstream_request(request, record.request_id)
        self._tried: list[Server] = []
        self._server: Server | None = None
        self._abandon: Callable[[], None] | None = None
        self._resent = False
        self._pool: Pool | None = None
        self._producer: IPushProducer | None = None
        self._paused = False
        self._send_timer: IDelayedCall | None = None
        self._stalled_since = 0.0
        self._unsent: int | None = None
        self._sent_at = 0.0
        self._status = 0
        self._tunnel: Tunnel | None = None

    def start(self) -> None:
        """
        Route the request to its pool and send it to the server the pool
        picks; 404 if no route matches, 508 if it loops through this
        process.
        """
        request = self._request
        request.exchange = self
        resource = self._resource
        resource.exchange_started(self)
        via = request.header(b"via")
        if via is not None and _loops(request):
            # This request already passed through this very process: the
            # configuration points lbproxy at itself.
            self._answer_error(508, b"Loop Detected", b"request loops through this proxy")
            return
        router = resource.router
        pool = self._pool = router.only or router.route(request.header(b"host"), request.target)
        if pool is None:
            self._answer_error(404, b"Not Found", b"no route for this host and path")
            return
        self._record.pool = pool.name
        self._attempt()

    def _attempt(self) -> None:
        pool = self._pool
        assert pool is not None
        tries_left = len(self._tried) < pool.max_tries
        server = pool.pick(self._tried, self._request) if tries_left else None
        if server is None:
            if tries_left and pool.must_wait():
                self._wait(pool)
            elif self._tried:
                self._answer_error(502, b"Bad Gateway", b"no upstream server could be reached")
            else:
                if pool.first_with_none_up():
                    self._log.warn("pool {pool}: no server is up", pool=pool.name)
                self._answer_error(503, b"Service Unavailable", b"no healthy upstream")
            return
        self._send(server)

    def _send(self, server: Server) -> None:
        """
        Send the request to C{server}, the pool's pick.
        """
        self._tried.append(server)
        self._begin(server)
        self._abandon = self._resource.client.send(server, self._upstream_request, self)

    # The pool's queue: every server it may use is at its max-conns.

    def _wait(self, pool: Pool) -> None:
        """
        Wait in C{pool}'s queue for a server (503 if the queue is full); a
        client that leaves meanwhile takes it out (C{_abandon}).
        """
        cancel = pool.wait(self._tried, self._request, self._dequeued, self._waited_too_long)
        if cancel is None:
            self._answer_error(
                503, b"Service Unavailable", b"every upstream server is busy (queue full)"
            )
        else:
            self._abandon = cancel

    def _dequeued(self, server: Server | None) -> None:
        """
        The pool's queue picked C{server} for this request, or L{None}: no
        server it may use is busy any more (down, gone), so it gets what a
        new request gets (502 or 503) rather than a queue timeout.
        """
        self._abandon = None
        if self.state is State.WAITING:
            if server is None:
                self._attempt()
            else:
                self._send(server)

    def _waited_too_long(self) -> None:
        """
        No server came free within C{queue-timeout}: 503, as HAProxy's
        C{timeout queue}.
        """
        self._abandon = None
        if self.state is State.WAITING:
            self._answer_error(
                503, b"Service Unavailable", b"every upstream server is busy (queue timeout)"
            )

    def _begin(self, server: Server) -> None:
        """
        An attempt on C{server} starts (counted by its pool).
        """
        assert self._pool is not None
        self._server = server
        self._status = 0
        self._sent_at = self._resource.client.clock.seconds()
        retry = len(self._tried) > 1 or self._resent
        self._pool.attempt_started(server, retry)
        record = self._record
        record.upstream_addr = server.address
        record.upstream_status = 0
        record.connect_time = record.header_time = record.response_time = None
        if retry:
            record.retries += 1

    def _finish_attempt(self, complete: bool) -> None:
        """
        The current attempt ended: answered whole (C{complete}), or not.
        """
        # Nothing to abandon any more; and the connection's abandon (a
        # partial holding this exchange) would keep a reference cycle.
        self._abandon = None
        server, self._server = self._server, None
        if server is None or self._pool is None:
            return
        elapsed = None
        if complete:
            elapsed = self._resource.client.clock.seconds() - self._sent_at
            self._record.response_time = elapsed
        # The strategy learns response times from the head's arrival.
        self._pool.attempt_ended(
            server, self._status if complete else 0, elapsed, first_byte=self._record.header_time
        )

    def _end(self) -> None:
        """
        The exchange is over (answered, failed or abandoned); once only.
        """
        self.state = State.DONE
        self._cancel_send_timer()
        self._resource.exchange_ended(self)

    def _abandon_upstream(self) -> None:
        abandon, self._abandon = self._abandon, None
        if abandon is not None:
            abandon()
        self._finish_attempt(complete=False)

    def abort(self) -> None:
        """
        Give up on this request (the drain ran out, the send timeout): drop
        the upstream connection, and reset the client.
        """
        if self.state is State.TUNNEL:
            tunnel = self._tunnel
            if tunnel is not None:
                # Over at once: its access line, then _tunnel_closed.
                tunnel.abort()
            else:
                self._request.abort()
            self._tunnel_closed()
            return
        if self.state is not State.DONE:
            self._end()
            self._abandon_upstream()
            self._request.abort()

    # RequestExchange: the client side's news.

    def client_gone(self) -> None:
        """
        The client disconnected, or its request was refused: abandon the
        upstream exchange.
        """
        if self.state is not State.DONE:
            self._end()
            self._abandon_upstream()

    # IResponseSink: the upstream connection's news.

    def connection_ready(self) -> None:
        """
        The request goes out now: note the connect time (0 on a pooled
        connection).
        """
        self._record.connect_time = self._resource.client.clock.seconds() - self._sent_at

    def response_headers(
        self, status: int, reason: bytes, headers: list[Header], producer: IPushProducer
    ) -> None:
        """
        Copy the status line and end-to-end headers to the client, with the
        request's C{X-Request-Id} in place of any the app server sent (and a
        sticky cookie naming the server, if the pool has one).
        """
        if self.state is not State.WAITING:
            return
        self._producer = producer
        relayed = self._relayed_headers(status, headers)
        self._request.respond(status, reason, relayed, self)
        # The answer has started: a later failure resets the client.  (A
        # failure above, a bug, still gets the client a plain 502.)
        self.state = State.RELAYING

    def _relayed_headers(self, status: int, headers: list[Header]) -> list[Header]:
        """
        The app server's head arrived: note its status and time, and
        return what the client gets of its headers, a C{101}'s included:
        the end-to-end ones, the request's C{X-Request-Id} in place of any
        the app server sent, and a sticky cookie naming the server if the
        pool has one.
        """
        self._status = status
        record = self._record
        record.upstream_status = status
        record.header_time = self._resource.client.clock.seconds() - self._sent_at
        relayed = end_to_end(headers, REPLACED_DOWNSTREAM)
        relayed.append((b"X-Request-Id", record.request_id))
        pool, server = self._pool, self._server
        if pool is not None and server is not None and pool.sticky is not None:
            request = self._request
            cookie = pool.sticky.set_cookie(server, request, request.secure)
            if cookie is not None:
                relayed.append((b"Set-Cookie", cookie))
        return relayed

    def response_body(self, data: bytes) -> None:
        """
        Relay a piece of the body.
        """
        if self.state is State.RELAYING:
            self._request.write(data)

    def response_read_done(self) -> None:
        """
        One read of the answer is relayed: send it on to the client.
        """
        if self.state is State.RELAYING:
            self._request.flush()

    def response_done(self) -> None:
        """
        The answer is complete: finish the client's answer.
        """
        if self.state is not State.RELAYING:
            return
        self._finish_attempt(complete=True)
        self._end()
        self._request.finish()

    def response_failed(self, error: UpstreamError) -> None:
        """
        Retry, answer 502/504, or reset the client: L{after_failure}
        decides.
        """
        if self.state is State.DONE:
            return
        if self.state is State.TUNNEL:
            # A bug while opening the tunnel, logged by the connection.
            self.abort()
            return
        request = self._request
        server = self._server
        assert server is not None and self._pool is not None
        self._finish_attempt(complete=False)
        self._log.warn(
            "upstream {server} failed: {reason} ({method} {target})",
            server=server.address,
            reason=str(error),
            method=request.method.decode("latin-1"),
            target=request.target.decode("latin-1"),
        )
        if self.state is State.WAITING and error.server_fault:
            # nginx's max_fails counts errors, timeouts and invalid answers
            # before the answer started; a stale pooled connection or a bug
            # in lbproxy is not the server's.
            self._pool.attempt_failed(server, str(error))
        decision = after_failure(
            error,
            answer_started=self.state is State.RELAYING or request.answer_started,
            method=request.method,
            body_sent=_body_sent(self._upstream_request),
            resent=self._resent,
        )
        if decision is Next.ABORT_CLIENT:
            self._end()
            request.abort()
        elif decision is Next.NEXT_SERVER:
            self._attempt()
        elif decision is Next.FRESH_CONNECTION:
            self._resent = True
            self._begin(server)
            client = self._resource.client
            self._abandon = client.send_fresh(server, self._upstream_request, self)
        elif decision is Next.GATEWAY_TIMEOUT:
            self._answer_error(504, b"Gateway Timeout", b"upstream timed out")
        else:
            self._answer_error(502, b"Bad Gateway", b"bad answer from upstream")

    def response_switched(
        self, reason: bytes, headers: list[Header], connection: TunnelEnd
    ) -> None:
        """
        The app server switched protocols as the client asked: answer the
        C{101} and make the two connections a tunnel, which keeps this
        exchange in flight until it closes.
        """
        if self.state is not State.WAITING:
            connection.transport.abortConnection()
            return
        self._abandon = None
        relayed = self._relayed_headers(101, headers)
        self.state = State.TUNNEL
        request = self._request
        resource = self._resource
        self._tunnel = open_tunnel(
            request,
            reason,
            switch_headers(headers, relayed),
            connection,
            resource.client.clock,
            resource.tunnel_timeout,
            self._tunnel_closed,
            label=(
                f"tunnel from {request.client_address.decode('ascii', 'replace')} to "
                f"{self._server.address if self._server is not None else '-'} "
                f"({request.method.decode('latin-1')} {request.target.decode('latin-1')})"
            ),
        )

    def _tunnel_closed(self) -> None:
        """
        The tunnel closed, or is being aborted: the attempt ends, with its
        101 and no response time (how long a tunnel stays open is not one).
        """
        if self.state is not State.TUNNEL:
            return
        # The tunnel holds this exchange (its on_closed): no cycle left.
        self._tunnel = None
        server, self._server = self._server, None
        if server is not None and self._pool is not None:
            self._pool.attempt_ended(server, 101, None)
        self._end()

    # IPushProducer: the client side's pace.

    def pauseProducing(self) -> None:
        """
        The client takes no more for now: stop reading from the app server
        (its read timeout stops too) and start the send timeout.
        """
        if self._paused or self.state is State.DONE:
            return
        self._paused = True
        if self._producer is not None:
            self._producer.pauseProducing()
        clock = self._resource.client.clock
        self._stalled_since = clock.seconds()
        self._unsent = self._request.unsent()
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
        if self._producer is not None and self.state is not State.DONE:
            self._producer.resumeProducing()

    def stopProducing(self) -> None:
        """
        The client connection is going away: abandon the upstream exchange.
        """
        self.client_gone()

    def _check_send_timeout(self) -> None:
        """
        Close a client that took no byte for C{send_timeout} seconds while
        paused.  A client that takes some, slowly, is not stalled: a
        producer is resumed only once the client's write buffer is empty,
        which a slow reader may take longer than the timeout to reach, so
        the buffer is looked at every quarter of the timeout and any byte
        taken counts as progress (nginx's send_timeout also runs "between
        two successive write operations", not for the whole answer).
        """
        self._send_timer = None
        if self.state is State.DONE or not self._paused:
            return
        clock = self._resource.client.clock
        now = clock.seconds()
        unsent = self._request.unsent()
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
            client=request.client_address.decode("ascii", "replace"),
            timeout=timeout,
            server=self._server.address if self._server is not None else "-",
            method=request.method.decode("latin-1"),
            target=request.target.decode("latin-1"),
        )
        # Both connections go: the upstream one is half-read, so it is
        # dropped rather than pooled; on HTTP/2 only this stream is reset.
        self.abort()

    def _cancel_send_timer(self) -> None:
        timer, self._send_timer = self._send_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _answer_error(self, status: int, reason: bytes, text: bytes) -> None:
        """
        Answer with lbproxy's own short error, ending the exchange.
        """
        self._end()
        request = self._request
        if request.body is not None:
            # Nothing will take the rest of the body: the client finishes
            # sending it into the void (then the next request is read).
            request.body.detach()
        body = b"%d %s: %s\n" % (status, reason, text)
        request.respond(
            status,
            reason,
            [
                (b"Content-Type", b"text/plain; charset=utf-8"),
                (b"Content-Length", b"%d" % len(body)),
                (b"Date", self._resource.date()),
                (b"X-Request-Id", self._record.request_id),
            ],
        )
        request.write(body)
        request.finish()


def _loops(request: ClientRequest) -> bool:
    """
    Whether any C{Via} header names this very process.
    """
    return any(VIA_TOKEN in value for name, value in request.headers if name.lower() == b"via")


def _body_sent(upstream_request: UpstreamRequest) -> bool:
    """
    Whether part of a streamed body already went out, so that the request
    cannot be sent again.
    """
    body = upstream_request.body
    return isinstance(body, StreamingBody) and body.sent_any


def build_upstream_request(request: ClientRequest, request_id: bytes) -> UpstreamRequest:
    """
    Serialise the client's request for the app server, once per request
    (retries reuse it): end-to-end headers, C{X-Forwarded-*},
    C{X-Request-Id}, C{Via}, and the framing of the body lbproxy sends.
    """
    method = request.method
    headers = upstream_request_headers(
        request.headers,
        client_address=request.client_address,
        scheme=b"https" if request.secure else b"http",
        default_host=request.default_host,
        request_id=request_id,
    )
    upgrade = request.upgrade
    if upgrade is not None:
        # Hop-by-hop, so dropped above: lbproxy asks for its own hop.
        headers += ((b"Connection", b"upgrade"), (b"Upgrade", upgrade))
    body: bytes | StreamingBody = b""
    stream = request.body
    if stream is not None:
        # Content-Length as the client sent it, or chunked if it was.
        headers.append(stream.framing_header)
        body = stream
    elif method in _BODY_METHODS or _framed(request.headers):
        headers.append((b"Content-Length", b"0"))
    headers.append((b"Via", _VIA))
    head = serialize_request_head(method, request.target, headers)
    return UpstreamRequest(method, head, body, upgrade)


def _framed(headers: list[Header]) -> bool:
    """
    Whether the client framed a body (C{Content-Length} or
    C{Transfer-Encoding}), even an empty one.
    """
    return any(name.lower() in (b"content-length", b"transfer-encoding") for name, _ in headers)
