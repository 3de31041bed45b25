# -*- test-case-name: tests.proxy.test_tunnel -*-
"""
WebSocket and other Upgrade tunnels (RFC 9110 section 7.8): L{Tunnel}
joins a client connection and an app server connection once the app
server answered C{101 Switching Protocols}; L{open_tunnel} makes one for an
exchange (L{lbproxy.proxy.exchange}).

Which requests upgrade
  An HTTP/1.1 request whose C{Connection} names C{upgrade}, with an
  C{Upgrade} header and no body (L{lbproxy.http.h1}): it is forwarded with
  C{Connection: upgrade} and its C{Upgrade} value; every other header goes
  as for any request.  A request that offers C{h2c} is a plain request,
  without C{Upgrade}, as before tunnels (h2c smuggling: HTTP/2 in a tunnel
  would pass lbproxy's gate and routes; L{lbproxy.upstream.upgrade}).
  HTTP/1.0 and HTTP/2 requests never upgrade (RFC 8441's extended CONNECT
  is not proxied; such clients fall back to HTTP/1.1).  The framing gate
  applies to the upgrade request as to any.

The switch
  A C{101} ends HTTP on both connections, and the bytes after either head
  belong to the tunnel: neither side's parser sees them.  It must answer a
  request that offered an upgrade, carry C{Upgrade} and C{Connection:
  upgrade}, and switch only to an offered protocol; otherwise it is an
  invalid answer (502, counted against the server's C{max-fails}).  Any
  other answer to an upgrade request is relayed as usual, and the client
  connection goes on with HTTP.  The app server's connection leaves its
  exchange and is never pooled again; the client gets the C{101} with the
  server's C{Upgrade}, C{Connection: upgrade} and its end-to-end headers
  (C{Sec-WebSocket-Accept} ...).

Bytes and backpressure
  Bytes go both ways as they come, written straight to the socket when
  nothing waits before them.  Each side is the producer of what it reads,
  registered with the other side's transport: when a reader is slow and
  its transport's buffer fills, lbproxy stops reading from the other side,
  whose own socket then fills, so a tunnel holds at most about a
  transport's buffer and a read in lbproxy in each direction.

Closing
  When either connection closes, the other gets what was already written
  to it and then its close; one that does not take it within
  L{CLOSE_GRACE} seconds is aborted.  A half-close passes through on plain
  TCP and UNIX sockets: a FIN from one side becomes a FIN to the other,
  which may go on sending, and the tunnel closes once both ways ended.
  Over TLS (or a PROXY protocol listener) a connection cannot be
  half-closed: a FIN there, or a FIN that would have to pass into a TLS
  connection, closes the whole tunnel.  C{--tunnel-timeout} (default one
  hour, HAProxy's C{timeout tunnel}) closes a tunnel that carried no byte
  either way for that long; a tunnel keeps the timeout it opened with.

Accounting
  A tunnel is an active connection of its server (C{Server.active}, what
  a least-connections balancer, a status page or metrics would count) from
  the request's attempt to the tunnel's close, when the attempt ends with
  status 101 and no response time (how long a tunnel stays open is not
  one).  Its exchange stays in flight until then: a stop (SIGTERM) gives
  tunnels C{--drain-timeout}, as requests in flight, then aborts them (the
  tunnel ends, and is logged, at once).  A reload (SIGHUP) does not touch
  them, whatever the new configuration says: they are connections, and
  only new requests take the new routes and pools.  The access line is
  written when the tunnel closes: status 101, the bytes sent to the
  client, then C{duration=SECONDS bytes_uploaded=N}
  (L{lbproxy.http.accesslog.AccessLog.tunnel_done}).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from lbproxy.http.request import ClientRequest, Header
from lbproxy.interfaces import TunnelEnd
from lbproxy.twistedinternals import send_now

__all__ = ["CLOSE_GRACE", "Tunnel", "open_tunnel", "switch_headers"]

#: Seconds a side being closed may take to take what was written to it
#: before it is aborted (twisted.web's C{HTTPChannel.abortTimeout}, and
#: lbproxy's client connections).
CLOSE_GRACE = 15.0


@implementer(IPushProducer)
class _Side:
    """
    One end of a L{Tunnel}, as the tunnel keeps it.

    It hears its end's events (it is the end's
    L{lbproxy.interfaces.TunnelReceiver}) and, as the producer of what it
    reads, is registered with the other end's transport, which pauses it
    while its buffer is full.

    @ivar name: C{"client"} or C{"app server"}, for people.
    @ivar received: bytes read from this end.
    @ivar reading: its peer may still send (no FIN, not closing).
    @ivar writing: the tunnel may still write to it (no FIN passed to it,
        not closing).
    @ivar closing: its close was asked for.
    @ivar lost: its connection closed.
    """

    __slots__ = (
        "_tunnel",
        "name",
        "transport",
        "half_close",
        "received",
        "reading",
        "writing",
        "closing",
        "lost",
        "_paused",
    )

    def __init__(self, tunnel: Tunnel, end: TunnelEnd, name: str) -> None:
        # Until the tunnel is over (part).
        self._tunnel: Tunnel | None = tunnel
        self.name = name
        self.transport = end.transport
        self.half_close = end.half_close
        self.received = 0
        self.reading = True
        self.writing = True
        self.closing = False
        self.lost = False
        self._paused = False

    # TunnelReceiver: the end's events.

    def tunnel_data(self, data: bytes) -> None:
        """
        Bytes from this end: on to the other, unless it is closing.
        """
        self.received += len(data)
        tunnel = self._tunnel
        if tunnel is None:
            return
        tunnel.last_activity = tunnel.clock.seconds()
        other = tunnel.upstream if tunnel.client is self else tunnel.client
        if other.writing:
            send_now(other.transport, data)

    def tunnel_read_closed(self) -> None:
        """
        This end's peer sent a FIN.
        """
        if self._tunnel is not None:
            self._tunnel._read_closed(self)

    def tunnel_lost(self, reason: Failure) -> None:
        """
        This end's connection closed.
        """
        if self._tunnel is not None:
            self._tunnel._lost(self)

    @property
    def other(self) -> _Side:
        """
        The tunnel's other side (only while the tunnel is not over).
        """
        tunnel = self._tunnel
        assert tunnel is not None
        return tunnel.upstream if tunnel.client is self else tunnel.client

    def part(self) -> None:
        """
        The tunnel is over: forget it, so that nothing refers back to it.
        """
        self._tunnel = None

    # IPushProducer: the other end's transport is full, or took it all.

    def pauseProducing(self) -> None:
        """
        Stop reading from this end: the other end does not keep up.
        """
        if not self._paused:
            self._paused = True
            if self.reading:
                self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        """
        Read from this end again (never after its FIN: Twisted would report
        the FIN a second time).
        """
        if self._paused:
            self._paused = False
            if self.reading:
                self.transport.resumeProducing()

    def stopProducing(self) -> None:
        """
        The other end's transport is going away; its end reports the close.
        """


class Tunnel:
    """
    Two connections that stopped speaking HTTP, joined byte for byte; see
    the module docstring.

    @ivar client: the client's side.
    @ivar upstream: the app server's side.
    @ivar clock: what times the tunnel.
    @ivar timeout: seconds without a byte either way before it is closed.
    @ivar label: names it in log lines (client, server, request).
    @ivar opened: when it opened (the clock's seconds).
    @ivar last_activity: when a byte last went through.
    @ivar closed_at: when both connections had closed, or L{None}.
    """

    _log = Logger()

    def __init__(
        self,
        client: TunnelEnd,
        upstream: TunnelEnd,
        clock: IReactorTime,
        timeout: float,
        on_closed: Callable[[Tunnel], None],
        label: str = "tunnel",
    ) -> None:
        """
        Join C{client} and C{upstream}: each is attached at once, and what
        they already received past the handshake goes through.

        @param client: the client connection, switched.
        @param upstream: the app server connection, switched.
        @param clock: what times the tunnel.
        @param timeout: seconds without a byte either way before it closes.
        @param on_closed: called once, with the tunnel, when both
            connections have closed.
        @param label: names the tunnel in log lines.
        """
        self.clock = clock
        self.timeout = timeout
        self.label = label
        self._on_closed = on_closed
        self.client = _Side(self, client, "client")
        self.upstream = _Side(self, upstream, "app server")
        self.opened = self.last_activity = clock.seconds()
        self.closed_at: float | None = None
        self._closing_since: float | None = None
        self._timer: IDelayedCall | None = clock.callLater(timeout, self._check_time)
        # A full buffer towards one side pauses reading from the other.
        client.transport.registerProducer(self.upstream, True)
        upstream.transport.registerProducer(self.client, True)
        client.attach(self.client)
        upstream.attach(self.upstream)

    @property
    def bytes_to_client(self) -> int:
        """
        Bytes read from the app server (and written to the client).
        """
        return self.upstream.received

    @property
    def bytes_from_client(self) -> int:
        """
        Bytes read from the client (and written to the app server).
        """
        return self.client.received

    @property
    def seconds(self) -> float:
        """
        How long it has been open (was, once closed).
        """
        end = self.closed_at if self.closed_at is not None else self.clock.seconds()
        return end - self.opened

    def close(self) -> None:
        """
        Close both connections, each once what was written to it is sent;
        one that does not take it within L{CLOSE_GRACE} is aborted.
        """
        self._close_side(self.client)
        self._close_side(self.upstream)

    def abort(self) -> None:
        """
        Drop both connections now (the drain ran out, a close took too
        long): the tunnel is over at once, and C{on_closed} is called now.
        Their close is not waited for: on stop, the access log is closed
        and the reactor stopped once the client connections are gone, which
        can be before the app server connection reports its close.
        """
        if self.closed_at is not None:
            return
        for side in (self.client, self.upstream):
            if not side.lost:
                side.reading = side.writing = False
                side.closing = True
                # Its close, when reported, finds the tunnel over.
                side.lost = True
                side.transport.abortConnection()
        self._finish()

    def _close_side(self, side: _Side) -> None:
        if side.lost or side.closing:
            return
        side.closing = True
        side.reading = False
        if side.writing:
            side.writing = False
            # A transport with a paused producer resumes it instead of
            # closing once its buffer is empty: unregister it first.
            side.transport.unregisterProducer()
        side.transport.loseConnection()
        if self._closing_since is None:
            self._closing_since = self.clock.seconds()
            self._arm(self._closing_since + CLOSE_GRACE)

    def _read_closed(self, side: _Side) -> None:
        """
        C{side}'s peer sent a FIN: pass it on if the other side can take
        one, else close the tunnel; close it once both ways ended.
        """
        if not side.reading:
            return
        side.reading = False
        other = side.other
        if other.closing or other.lost:
            return
        if not other.half_close:
            # A FIN cannot pass into TLS: its close is the connection's.
            self.close()
            return
        if other.writing:
            other.writing = False
            # (Its producer is the side that stopped reading.)
            other.transport.unregisterProducer()
            other.transport.loseWriteConnection()
        if not other.reading:
            self.close()

    def _lost(self, side: _Side) -> None:
        """
        C{side}'s connection closed: close the other once it has what was
        written to it; the tunnel is over when both are closed.
        """
        if side.lost:
            return
        side.lost = True
        side.reading = side.writing = False
        if side.other.lost:
            self._finish()
        else:
            self._close_side(side.other)

    def _finish(self) -> None:
        self.closed_at = self.clock.seconds()
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        on_closed, self._on_closed = self._on_closed, _closed_already
        on_closed(self)
        # Over: the sides, which refer to this tunnel and to each other,
        # let go (late events find nothing to do), so that reference
        # counting frees them, not the cyclic collector.
        for side in (self.client, self.upstream):
            side.part()

    # The one timer: the tunnel timeout, then the grace of a close.

    def _arm(self, deadline: float) -> None:
        """
        Make sure the timer fires by C{deadline}.
        """
        delay = max(deadline - self.clock.seconds(), 0.0)
        timer = self._timer
        if timer is None:
            self._timer = self.clock.callLater(delay, self._check_time)
        elif timer.getTime() > deadline:
            timer.reset(delay)

    def _check_time(self) -> None:
        """
        Close an idle tunnel, or abort a close that takes too long; else
        sleep until that could be due.  Bytes only record the time.
        """
        self._timer = None
        now = self.clock.seconds()
        if self._closing_since is not None:
            deadline = self._closing_since + CLOSE_GRACE
            if now >= deadline:
                self.abort()
                return
        else:
            deadline = self.last_activity + self.timeout
            if now >= deadline:
                self._log.info(
                    "{tunnel}: no byte either way for {timeout:g} s (tunnel timeout): closed",
                    tunnel=self.label,
                    timeout=self.timeout,
                )
                self.close()
                return
        self._timer = self.clock.callLater(deadline - now, self._check_time)


def _closed_already(tunnel: Tunnel) -> None:
    """
    A tunnel's C{on_closed} once called: it is called only once.
    """


def switch_headers(headers: list[Header], relayed: list[Header]) -> list[Header]:
    """
    The headers of the C{101} the client gets: the app server's
    C{Upgrade} with C{Connection: upgrade} (hop-by-hop, so lbproxy says
    them for its own hop), then what any answer relays.

    @param headers: the app server's C{101} headers.
    @param relayed: the headers every answer gets (the server's
        end-to-end ones, C{Sec-WebSocket-Accept} ..., and lbproxy's:
        L{lbproxy.proxy.exchange.ProxyExchange}).
    """
    upgrade = b", ".join(value for name, value in headers if name.lower() == b"upgrade")
    return [(b"Upgrade", upgrade), (b"Connection", b"upgrade"), *relayed]


def open_tunnel(
    request: ClientRequest,
    reason: bytes,
    headers: list[Header],
    upstream: TunnelEnd,
    clock: IReactorTime,
    timeout: float,
    on_closed: Callable[[], None],
    label: str,
) -> Tunnel:
    """
    Answer the client's upgrade request with the app server's C{101} and
    join the two connections.

    @param request: the client's upgrade request.
    @param reason: the app server's reason phrase.
    @param headers: the C{101}'s headers, for the client
        (L{switch_headers}).
    @param upstream: the app server's connection, switched.
    @param clock: what times the tunnel.
    @param timeout: the tunnel timeout, in seconds.
    @param on_closed: called once the tunnel closed and its access line
        was written.
    @param label: names the tunnel in log lines.
    """
    client = request.switch_protocols(reason, headers)

    def closed(tunnel: Tunnel) -> None:
        request.tunnel_closed(tunnel.bytes_to_client, tunnel.bytes_from_client, tunnel.seconds)
        on_closed()

    return Tunnel(client, upstream, clock, timeout, closed, label)
