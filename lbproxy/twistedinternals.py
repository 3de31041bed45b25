# -*- test-case-name: tests.test_twistedinternals -*-
"""
Twisted's private names that lbproxy relies on, in one place.

Each is here because no public API does the job (said beside it), and
C{tests/test_twistedinternals.py} fails when a Twisted release changes
one, so that an upgrade breaks a test rather than production.  setup.cfg
bounds Twisted below its next major release for the same reason.

Private names used by subclasses, which cannot move here, are listed in
L{SUBCLASSED} and checked by the same test.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp
from twisted.internet.abstract import FileDescriptor
from twisted.internet.endpoints import SSL4ServerEndpoint, _WrappingProtocol
from twisted.internet.endpoints import _parse as _parse_endpoint
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import connectionDone
from zope.interface import alsoProvides

__all__ = [
    "SUBCLASSED",
    "close_after_fin",
    "listening_interface",
    "parse_endpoint",
    "pass_fin_through",
    "reserve_spare_descriptor",
    "send_now",
    "set_ssl_context_factory",
    "ssl_context_factory",
    "unsent_bytes",
]

#: Private methods and attributes of Twisted classes that lbproxy's
#: subclasses override or read, by class: (module, class, names).
SUBCLASSED: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    # lbproxy.http.h2.ProxyH2Connection: Twisted's HTTP/2 connection with
    # lbproxy's gate in front (twisted.web has no public HTTP/2 hooks).
    (
        "twisted.web._http2",
        "H2Connection",
        ("_requestDone", "_tryToWriteControlData", "_stillProducing", "_sendPrioritisedData"),
    ),
    # lbproxy.balancing.health: a quiet client factory for the checks'
    # connection pool (HTTPConnectionPool picks its factory from _factory).
    ("twisted.web.client", "HTTPConnectionPool", ("_factory",)),
    ("twisted.web.client", "_HTTP11ClientFactory", ()),
    # lbproxy.discovery.resolver: Twisted's DNS client asking out of one
    # socket (its _query binds one per question, each logged), and closed
    # with its timer that reads resolv.conf again (no public close).
    ("twisted.names.client", "Resolver", ("_query", "_reactor", "_parseCall")),
    # lbproxy.service.service: a listener that raises at start when its
    # port is in use, and its port once listening.
    (
        "twisted.application.internet",
        "StreamServerEndpointService",
        ("_raiseSynchronously", "_waitingForPort"),
    ),
    # lbproxy.service.listeners: a worker's ports over inherited sockets,
    # accepting one connection at a time (adoptStreamPort builds Twisted's
    # own Port, which accepts up to 100 at a time).
    ("twisted.internet.tcp", "Port", ("_fromListeningDescriptor", "numberAccepts")),
    # Its UNIX port starts without Twisted's chmod, second listen() and
    # unlink of the supervisor's path (unix.Port.startListening does them
    # even on an adopted socket), and stops without shutdown() of the shared
    # socket; see reserve_spare_descriptor.
    (
        "twisted.internet.unix",
        "Port",
        ("_fromListeningDescriptor", "_preexistingSocket", "_bindPath", "_shouldShutdown"),
    ),
    # pass_fin_through, below.
    ("twisted.internet.endpoints", "_WrappingProtocol", ("_wrappedProtocol",)),
)

_TCP = (tcp.Client, tcp.Server)


def send_now(transport: Any, data: bytes) -> None:
    """
    Write C{data}, straight to the socket when nothing is queued before it.

    Twisted's TCP transport always queues a write and sends it on the next
    reactor turn, which costs two C{epoll_ctl} calls and a turn per write;
    a request head or a small answer almost always fits the socket buffer,
    so lbproxy tries C{send} first and queues only what the kernel did not
    take.  This reads the transport's queue (C{dataBuffer}, C{offset},
    C{_tempDataLen}), so it is limited to plain TCP transports; others
    (TLS, UNIX sockets) just C{write}.
    """
    if (
        type(transport) in _TCP
        and transport.connected
        and not transport.disconnecting
        and not transport._tempDataLen
        and transport.offset == len(transport.dataBuffer)
    ):
        try:
            sent = transport.socket.send(data)
        except OSError:
            # EAGAIN, or an error the transport will find and report itself.
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def close_after_fin(transport: Any) -> None:
    """
    Close a connection whose peer sent a FIN exactly as Twisted closes it
    for a protocol that is not half-closeable: at once, its protocol's
    C{connectionLost} told C{connectionDone}, unsent bytes dropped.

    A protocol class declares C{IHalfCloseableProtocol} once for all its
    connections, since a wrapper (an endpoint's C{_WrappingProtocol})
    decides when it is built whether to pass a FIN on; the connections
    that do not want it (HTTP, not a tunnel) call this from
    C{readConnectionLost}.  It calls the transport's C{connectionLost},
    which is what C{tcp.Connection.readConnectionLost} calls (no public
    API closes at once with C{ConnectionDone}: C{loseConnection} waits a
    reactor turn for the buffer, C{abortConnection} reports
    C{ConnectionAborted}).
    """
    if isinstance(transport, tcp.Connection):
        transport.connectionLost(connectionDone)
    else:
        transport.loseConnection()


def pass_fin_through(transport: Any, protocol: object) -> None:
    """
    Make sure a FIN on C{transport} reaches C{protocol}'s
    C{readConnectionLost} when an endpoint wrapped it in its
    C{_WrappingProtocol} (every client endpoint does).  That wrapper copies
    C{IHalfCloseableProtocol}, C{IFileDescriptorReceiver} and
    C{IHandshakeListener} from the protocol with C{directlyProvides}, one
    at a time, so each replaces the one before: a protocol that is also a
    handshake listener gets a wrapper that is not half-closeable, and TCP
    reports its FIN as the close.
    """
    wrapper = getattr(transport, "protocol", None)
    if isinstance(wrapper, _WrappingProtocol) and wrapper._wrappedProtocol is protocol:
        alsoProvides(wrapper, IHalfCloseableProtocol)


def unsent_bytes(transport: object) -> int | None:
    """
    How many bytes wait in lbproxy for a socket: the write buffer of the
    socket's transport, found below any TLS layer (a
    C{TLSMemoryBIOProtocol}'s C{transport}).  Twisted has no public way to
    ask; the send timeout needs it to tell a slow client from a stalled one.

    @return: the byte count, or L{None} if there is no socket to look at.
    """
    for _ in range(3):
        if isinstance(transport, FileDescriptor):
            return len(transport.dataBuffer) - transport.offset + transport._tempDataLen
        transport = getattr(transport, "transport", None)
        if transport is None:
            break
    return None


def parse_endpoint(description: str) -> tuple[list[Any], dict[str, Any]]:
    """
    The positional and keyword arguments of an endpoint description, as
    Twisted's parser splits it (C{ssl:8443:privateKey=k.pem} gives
    C{(["ssl", "8443"], {"privateKey": "k.pem"})}): to name the file an
    OpenSSL error is about, which the public parser does not.
    """
    args, kwargs = _parse_endpoint(description)
    return list(args), dict(kwargs)


def ssl_context_factory(endpoint: SSL4ServerEndpoint) -> Any:
    """
    The context factory an C{ssl:} listener endpoint was built with (from
    its C{privateKey=}/C{certKey=}); Twisted has no public accessor.
    """
    return endpoint._sslContextFactory


def set_ssl_context_factory(endpoint: SSL4ServerEndpoint, factory: Any) -> None:
    """
    Give an C{ssl:} listener endpoint another context factory (SNI
    certificates, certificates read again on reload); the endpoint takes
    it only in its constructor otherwise, which the string parser calls.
    """
    endpoint._sslContextFactory = factory


def listening_interface(endpoint: object) -> str | None:
    """
    The address a C{tcp:}, C{tcp6:} or C{ssl:} server endpoint binds
    (C{""} for every interface), looking through a wrapping endpoint such
    as C{haproxy:}; L{None} for another kind (C{unix:}, C{systemd:}).
    Twisted's endpoints keep it private; the admin listener's check
    (L{lbproxy.service.validate}) needs to know whether it is on loopback.
    """
    endpoint = getattr(endpoint, "_wrappedEndpoint", endpoint)
    interface = getattr(endpoint, "_interface", None)
    return interface if isinstance(interface, str) else None


def reserve_spare_descriptor() -> None:
    """
    Keep the spare descriptor Twisted's ports close to accept and drop a
    connection when the process runs out of descriptors (EMFILE), as
    C{tcp.Port.startListening} does; for a port started another way.
    """
    tcp._reservedFD.reserve()
