"""
The contracts several lbproxy classes implement; this module imports
nothing of lbproxy at run time (the configuration's types only for
annotations), so that any layer may use it.

  - L{IBalancer}: a balancing strategy (zope interface, checked with
    C{verifyObject} in tests).
  - L{IBalancerFactory}: a strategy as a plugin: its C{--balance} name
    and what makes it for a pool, found with C{twisted.plugin} in
    L{lbproxy.plugins} (see L{lbproxy.balancing.registry}).
  - L{Candidate}: what a strategy reads of a server (a typing protocol:
    the balancing layer's C{Server} is one, and so are the simulator's).
  - L{BalancedRequest}: what a strategy reads of a request (a typing
    protocol: the proxy's C{ClientRequest} is one).
  - L{IStreamTransport}: what lbproxy's connection protocols are given as
    their C{transport} (for annotations only).
  - L{TunnelEnd} and L{TunnelReceiver}: a client or app server connection
    that became one end of a WebSocket (or other Upgrade) tunnel, and the
    tunnel as it sees it (typing protocols: the ends are in C{http/} and
    C{upstream/}, the tunnel in C{proxy/}).
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from random import Random
from typing import TYPE_CHECKING, Protocol

from twisted.internet.interfaces import IConsumer, IPushProducer, IReactorTime, ITCPTransport
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from lbproxy.config.model import PoolConfig

__all__ = [
    "BalancedRequest",
    "Candidate",
    "IBalancer",
    "IBalancerFactory",
    "IStreamTransport",
    "TunnelEnd",
    "TunnelReceiver",
]


class Candidate(Protocol):
    """
    A server as a balancing strategy sees it.

    @ivar address: C{host:port}: stable across restarts and processes, so
        a strategy may hash it (consistent hashing places servers by it).
    @ivar weight: its share of requests relative to its pool's others.
    @ivar up: whether it may take requests (in rotation).
    @ivar active: requests in flight to it now (counted by its pool).
    """

    address: str
    weight: int
    up: bool
    active: int


class BalancedRequest(Protocol):
    """
    A request as a balancing strategy sees it: what consistent hashing and
    sticky sessions key on.
    """

    @property
    def client_address(self) -> bytes:
        """
        The client's IP address (C{b"unix:"} on a UNIX socket).
        """

    @property
    def target(self) -> bytes:
        """
        The request target, origin-form (C{/path?query}).
        """

    def header(self, name: bytes) -> bytes | None:
        """
        The last value of request header C{name} (lower-case), or L{None};
        cookies are read from C{header(b"cookie")}.
        """


class IBalancer(Interface):
    """
    A load-balancing strategy: chooses one server of a pool per request.

    Implementations keep whatever state they need (a rotation position,
    response times) in dicts keyed by server, tolerate servers they have
    never seen (pools change on reload and with DNS), take time only from
    the clock they are given, and never do I/O: the same object runs in the
    proxy and on a simulator's virtual clock.

    A strategy that keeps per-server state should also have a method
    C{forget(server)}: the pool calls it when C{server} left the pool for
    good (a DNS source no longer gives it) and no request to it is in
    flight, so that the state does not grow as servers come and go.  It is
    optional (not declared here, so that strategies written before it
    still provide this interface): the pool looks for it with C{getattr}.
    """

    def pick(
        servers: Sequence[Candidate],
        exclude: Container[Candidate],
        request: BalancedRequest | None = None,
    ) -> Candidate | None:
        """
        Choose the server for the next request.

        @param servers: the pool's candidates, in configuration order;
            servers that are not C{up} must not be chosen.
        @param exclude: servers that must not be chosen for this request:
            already tried, or at their C{max-conns}.
        @param request: the request, for strategies that key on it;
            L{None} when there is none (tests, a simulator).
        @return: the chosen server, or L{None} if no candidate is left.
        """

    def started(server: Candidate) -> None:
        """
        A request went to C{server} (its C{active} already counts it).
        """

    def finished(server: Candidate, elapsed: float | None) -> None:
        """
        A request to C{server} ended (its C{active} no longer counts it).

        @param elapsed: seconds from sending the request to the head of the
            answer, or L{None} if no answer came.
        """


class IBalancerFactory(Interface):
    """
    A balancing strategy as installed: what C{--balance NAME} names and
    what makes one for a pool.  lbproxy finds these with
    C{getPlugins(IBalancerFactory, lbproxy.plugins)}, the built-in
    strategies as well as a user's (a module in an C{lbproxy/plugins/}
    directory on C{sys.path}; see README.rst, "Writing a strategy").
    Plugin objects provide C{twisted.plugin.IPlugin} too, as every
    C{twisted.plugin} plugin does.
    """

    name = Attribute(
        "The --balance name (str): a lower-case letter, then lower-case "
        "letters, digits, '-' or '_'."
    )
    description = Attribute("One line for people (str), shown by lbproxy balancers.")

    def make(config: PoolConfig, clock: IReactorTime, rng: Random) -> IBalancer:
        """
        The strategy of one pool (one instance per pool: it keeps the
        pool's rotation state).

        @param config: the pool's configuration (its options, such as
            C{ewma_decay}).
        @param clock: the only clock the strategy may read: the reactor
            in the proxy, a virtual clock in the simulator.
        @param rng: the only randomness it may draw from (seeded by tests
            and the simulator).
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
