# -*- test-case-name: tests.service.test_service -*-
"""
Listener endpoints: nginx's accept backlog, one readable line for a
listener that cannot listen, and listening sockets shared by worker
processes (C{--workers}).

Workers share sockets the supervisor binds, inherited as file descriptors
(nginx's way), rather than each binding its own with C{SO_REUSEPORT}:
the supervisor binds before twistd drops root (C{--uid} with a port below
1024), Twisted adopts a listening descriptor as it is
(C{IReactorSocket.adoptStreamPort}) but cannot set C{SO_REUSEPORT} without
a private C{Port} subclass, and connections queued on a shared socket are
accepted by another worker when one dies, where C{SO_REUSEPORT} drops the
queue of the socket that closed.

Each worker accepts one connection per readiness event, as nginx with
C{multi_accept off}: Twisted's C{Port} accepts up to 100 (and more) at a
time, so the worker that woke first took every connection of a burst
(C{wrk -c32}: 32 to one worker, 0 to the other, in a hand test), and a
busy worker kept taking its share.  One at a time, they alternate, and a
busy worker, slower back to its event loop, takes fewer.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from OpenSSL import SSL, crypto
from twisted.internet import tcp, unix
from twisted.internet.defer import Deferred, execute
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.protocols.haproxy import proxyEndpoint
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import log
from twisted.python.failure import Failure
from zope.interface import implementer

from lbproxy.twistedinternals import reserve_spare_descriptor

__all__ = [
    "DEFAULT_BACKLOG",
    "SHAREABLE",
    "InheritedEndpoint",
    "bind_shared",
    "error_text",
    "inherited_endpoint",
    "listen_error",
    "listener_kind",
    "with_default_backlog",
]

#: The listener kinds worker processes can share (also behind C{haproxy:}).
SHAREABLE = ("tcp", "tcp6", "ssl", "unix")


def listen_error(description: str, error: Exception) -> str:
    """
    One line saying why lbproxy cannot listen on C{description}: the
    socket's error for a port in use, the parser's for a bad string.
    """
    if isinstance(error, CannotListenError):
        return f"cannot listen on {description}: {error.socketError}"
    return f"cannot listen on {description}: {error_text(error)}"


#: nginx's listen backlog on Linux.  Twisted's default, 50, makes a burst
#: of new clients (wrk -c256) wait for SYN retransmits: p99 632 ms against
#: 56 ms with 511 on this machine.
DEFAULT_BACKLOG = 511


def with_default_backlog(description: str) -> str:
    """
    A listening endpoint description with nginx's backlog unless it names
    one: C{tcp:8080} becomes C{tcp:8080:backlog=511}.
    """
    kind = description.split(":", 1)[0]
    if kind in ("tcp", "tcp6", "ssl", "unix") and "backlog=" not in description:
        return f"{description}:backlog={DEFAULT_BACKLOG}"
    return description


def error_text(error: Exception) -> str:
    """
    One readable line for an exception of Twisted's endpoint parser or of
    OpenSSL.
    """
    if isinstance(error, OSError) and error.strerror:
        if error.filename:
            return f"{error.filename!r}: {error.strerror}"
        return error.strerror
    if isinstance(error, (crypto.Error, SSL.Error)):
        reasons = [item[-1] for item in (error.args[0] if error.args else []) if item]
        return "OpenSSL: " + (", ".join(r for r in reasons if r) or "error")
    return str(error) or type(error).__name__


def listener_kind(description: str) -> tuple[bool, str]:
    """
    Whether a listener description is wrapped in C{haproxy:}, and the kind
    of what it wraps: C{haproxy:ssl:8443:...} is C{(True, "ssl")}.
    """
    kind, _, rest = description.partition(":")
    if kind == "haproxy":
        return True, rest.partition(":")[0]
    return False, kind


class _NotServedHere(Factory):
    """
    The factory of a socket bound for workers: never asked for a protocol.
    """

    noisy = False

    def logPrefix(self) -> str:
        # "workers' listener starting on 8080", in twistd's log.
        return "workers' listener"


def bind_shared(reactor: Any, description: str) -> IListeningPort:
    """
    Bind the socket of a listener for worker processes to accept on: it
    listens (the kernel queues connections) but this process accepts
    nothing.

    @raise CannotListenError: if it cannot listen (a port in use).
    @raise Exception: if the description cannot be parsed.
    """
    endpoint = serverFromString(reactor, with_default_backlog(description))
    results: list[Any] = []
    # The shareable kinds listen at once: the Deferred has fired.
    endpoint.listen(_NotServedHere()).addBoth(results.append)
    (result,) = results
    if isinstance(result, Failure):
        result.raiseException()
    # Not read here: the workers accept.
    result.stopReading()
    return result  # type: ignore[no-any-return]


@implementer(IStreamServerEndpoint)
class InheritedEndpoint:
    """
    A listening socket inherited from the supervisor, as a server endpoint.
    """

    def __init__(self, reactor: Any, fd: int, tls: Any = None) -> None:
        """
        @param reactor: adopts the socket (C{IReactorSocket}).
        @param fd: the listening socket's descriptor, which the endpoint
            owns: closed once adopted (the port works on a duplicate).
        @param tls: the context factory of an C{ssl:} listener; L{None}
            for plain TCP or a UNIX socket.
        """
        self._reactor = reactor
        self._fd = fd
        self._tls = tls

    def listen(self, protocolFactory: Any) -> Deferred[IListeningPort]:
        """
        Accept on the socket, with TLS first if it is an C{ssl:} one (as
        C{reactor.listenSSL} wraps the factory).
        """
        if self._tls is not None:
            protocolFactory = TLSMemoryBIOFactory(self._tls, False, protocolFactory)
        return execute(self._adopt, protocolFactory)

    def _adopt(self, factory: Any) -> IListeningPort:
        # What reactor.adoptStreamPort does, with ports that accept one
        # connection at a time (see the module docstring).
        port: Any
        if _family(self._fd) == socket.AF_UNIX:
            port = _OneAcceptUNIXPort._fromListeningDescriptor(  # type: ignore[no-untyped-call]
                self._reactor, self._fd, factory
            )
        else:
            port = _OneAcceptTCPPort._fromListeningDescriptor(  # type: ignore[no-untyped-call]
                self._reactor, self._fd, _family(self._fd), factory
            )
        # _fromListeningDescriptor duplicated the descriptor (socket.fromfd):
        # the inherited one would stay open, unused, as long as the worker.
        os.close(self._fd)
        port.startListening()
        return port  # type: ignore[no-any-return]


class _OneAcceptTCPPort(tcp.Port):
    """
    A TCP port that accepts one connection each time it is readable.
    """

    def doRead(self) -> None:
        self.numberAccepts = 1
        super().doRead()  # type: ignore[no-untyped-call]


class _OneAcceptUNIXPort(unix.Port):
    """
    A UNIX socket port that accepts one connection each time it is
    readable, on a socket the supervisor bound and listens on.
    """

    def startListening(self) -> None:
        # Twisted's unix.Port.startListening, given an adopted socket, still
        # chmods the path (0666 unless told) and listens again with its own
        # backlog (50): the supervisor already set the user's mode and
        # nginx's backlog, and after --uid the chmod fails with EPERM.  So
        # only the adopting part is done here, as tcp.Port.startListening
        # does it for an adopted socket.
        reserve_spare_descriptor()
        skt = self._preexistingSocket
        assert skt is not None, "built by _fromListeningDescriptor"
        self._preexistingSocket = None
        # No shutdown() when this port stops: on a listening socket it
        # refuses every later connection, the other workers' too.
        self._shouldShutdown = False
        log.msg(f"{self._getLogPrefix(self.factory)} starting on {os.fsdecode(self._bindPath)!r}")
        self.factory.doStart()  # type: ignore[union-attr]
        self.connected = True
        self.socket = skt
        self.fileno = skt.fileno  # type: ignore[method-assign]
        self.numberAccepts = 1
        self.startReading()  # type: ignore[no-untyped-call]

    def connectionLost(self, reason: Failure) -> None:
        # Not unix.Port.connectionLost, which unlinks the path: it is the
        # supervisor's, removed when it stops; a worker that stops (or
        # restarts) leaves it to the others still accepting.
        tcp.Port.connectionLost(self, reason)

    def doRead(self) -> None:
        self.numberAccepts = 1
        super().doRead()  # type: ignore[no-untyped-call]


def _family(fd: int) -> int:
    # The socket module reads the family from the descriptor; detach()
    # leaves the descriptor open (adoptStreamPort duplicates it).
    probe = socket.socket(fileno=fd)
    try:
        return int(probe.family)
    finally:
        probe.detach()


def inherited_endpoint(reactor: Any, description: str, fd: int, tls: Any) -> Any:
    """
    The endpoint a worker serves C{description} with, from the socket the
    supervisor bound for it (L{bind_shared}).

    @param tls: the context factory if C{description} is an C{ssl:} one.
    """
    endpoint: Any = InheritedEndpoint(reactor, fd, tls)
    haproxy, _ = listener_kind(description)
    return proxyEndpoint(endpoint) if haproxy else endpoint
