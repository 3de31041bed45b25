"""
The contracts several lbproxy classes implement; this module imports
nothing of lbproxy, so that any layer may use it.

  - L{IBalancer}: a balancing strategy (zope interface, checked with
    C{verifyObject} in tests).
  - L{Candidate}: what a strategy reads of a server (a typing protocol:
    the balancing layer's C{Server} is one, and so are the simulator's).
  - L{IStreamTransport}: what lbproxy's connection protocols are given as
    their C{transport} (for annotations only).
  - L{TunnelEnd} and L{TunnelReceiver}: a client or app server connection
    that became one end of a WebSocket (or other Upgrade) tunnel, and the
    tunnel as it sees it (typing protocols: the ends are in C{http/} and
    C{upstream/}, the tunnel in C{proxy/}).
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from typing import Protocol

from twisted.internet.interfaces import IConsumer, IPushProducer, ITCPTransport
from twisted.python.failure import Failure
from zope.interface import Interface

__all__ = ["Candidate", "IBalancer", "IStreamTransport", "TunnelEnd", "TunnelReceiver"]


class Candidate(Protocol):
    """
    A server as a balancing strategy sees it.

    @ivar weight: its share of requests relative to its pool's others.
    @ivar up: whether it may take requests (in rotation).
    """

    weight: int
    up: bool


class IBalancer(Interface):
    """
    A load-balancing strategy: chooses one server of a pool per request.

    Implementations keep whatever state they need (a rotation position,
    weights) and never do I/O.
    """

    def pick(servers: Sequence[Candidate], exclude: Container[Candidate]) -> Candidate | None:
        """
        Choose the server for the next request.

        @param servers: the pool's candidates, in configuration order;
            servers that are not C{up} must not be chosen.
        @param exclude: servers already tried for this request.
        @return: the chosen server, or L{None} if no candidate is left.
        """


class IStreamTransport(ITCPTransport, IConsumer, IPushProducer):
    """
    The transport of a client or app server connection: a TCP transport
    (a UNIX socket's and a TLS one declare L{ITCPTransport} too) that
    producers register with, and whose reading pauses.

    Twisted types C{Protocol.transport} as an optional L{ITransport}; the
    connection protocols (L{lbproxy.http.h1.HTTP11Connection},
    L{lbproxy.upstream.connection.UpstreamConnection}) declare this
    instead, as Twisted's C{portforward.ProxyServer} does with its
    C{_MakeTypesHappy}.  No transport declares it: Twisted's declare its
    parts (a TLS transport only L{ITCPTransport}, though it takes producers
    and passes C{pauseProducing} and C{resumeProducing} on to the TCP
    transport below it), so it is never checked with C{providedBy} or
    C{verifyObject}.
    """


class TunnelReceiver(Protocol):
    """
    What a connection that became one end of a tunnel (after a C{101
    Switching Protocols}) reports, and to whom: the tunnel's side for that
    end (L{lbproxy.proxy.tunnel}).  No HTTP is parsed any more.
    """

    def tunnel_data(self, data: bytes) -> None:
        """
        Bytes read from this end.
        """

    def tunnel_read_closed(self) -> None:
        """
        This end's peer half-closed (sent a FIN): it sends nothing more but
        may still read.  Reported only by an end whose C{half_close} is
        true; others report a FIN as L{tunnel_lost}.
        """

    def tunnel_lost(self, reason: Failure) -> None:
        """
        This end's connection closed.
        """


class TunnelEnd(Protocol):
    """
    A connection that stopped speaking HTTP to be one end of a tunnel: the
    client's (L{lbproxy.http.h1.HTTP11Connection}) or the app server's
    (L{lbproxy.upstream.connection.UpstreamConnection}).

    The tunnel writes to, pauses and closes C{transport} itself; it
    registers its own producer there (the end has unregistered its own).

    @ivar transport: the connection's transport.
    """

    transport: IStreamTransport

    @property
    def half_close(self) -> bool:
        """
        Whether a FIN can pass through this end both ways: it reports its
        peer's FIN as C{tunnel_read_closed} and can send one with
        C{transport.loseWriteConnection()}.  True on plain TCP and UNIX
        sockets; not over TLS, whose close is the whole connection's.
        """

    def attach(self, receiver: TunnelReceiver) -> None:
        """
        From now on, report to C{receiver}; the bytes that already arrived
        past the handshake are given to it at once.
        """
