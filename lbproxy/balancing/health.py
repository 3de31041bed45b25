# -*- test-case-name: tests.balancing.test_health -*-
"""
Active health checks: a L{LoopingCall} per server, HAProxy style.

Every C{interval} seconds each server gets C{GET <path>} on a new
connection (so a check also proves that new connections can be made), with
C{timeout} seconds to answer with a healthy status.  Results go to the
server's L{Pool}, which counts C{rise}/C{fall} and logs changes of state.
The checks of a pool's servers are spread over the interval so that they
do not all fire at once.

Probes use Twisted's own HTTP client (L{Agent}, non-persistent): checks are
rare, so the upstream fast path's lean client is not needed here.  A check
passes only with a whole answer (its body read to the end) within the
timeout; a check that fails aborts its connection, so a server that stalls
mid-answer does not keep a socket per check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.application.service import Service
from twisted.internet import error
from twisted.internet.defer import Deferred, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    ResponseDone,
    _HTTP11ClientFactory,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS, IResponse
from zope.interface import implementer

from lbproxy.balancing.pool import Pool, Server, ServerChange
from lbproxy.balancing.server import AdminState
from lbproxy.upstream.client import connect_failure_text
from lbproxy.upstream.tls import UpstreamTLS

__all__ = ["HealthChecker", "Probe", "agent_probe"]

#: A probe sends one check to a server and fires with the answer's status
#: (or fails with the reason it could not get one).
Probe = Callable[[Server], "Deferred[int]"]


class _CutShort(Exception):
    """
    A check's answer ended before its body did.
    """

    def __str__(self) -> str:
        return "answer cut short"


class _Discard(Protocol):
    """
    Reads a check's answer body to its end and drops it; C{done} fails if
    the body was cut short.
    """

    def __init__(self, done: Deferred[None]) -> None:
        self._done = done

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        # A body without a length ends with the connection (RFC 9112
        # section 6.3, rule 8: what HTTP/1.0 servers send); Twisted reports
        # it as PotentialDataLoss since it cannot tell, but nothing was
        # promised and not delivered, so it is whole (nginx and HAProxy
        # accept it too).  Anything else (ResponseFailed: a Content-Length
        # or a chunked body not complete) is a server failing mid-answer.
        if reason.check(ResponseDone, PotentialDataLoss):
            self._done.callback(None)
        else:
            self._done.errback(Failure(_CutShort()))


class _QuietClientFactory(_HTTP11ClientFactory):
    """
    Twisted's HTTP/1.1 client factory, without the "Starting factory" log
    lines it would write for every check (HTTPConnectionPool picks its
    factory class from C{_factory}, meant to be overridden like this).
    """

    noisy = False


class _CheckConnections(HTTPConnectionPool):
    """
    The connections of one check: never kept for another (a check also
    proves that a new connection can be made), and aborted when the check
    fails.

    Twisted aborts a connection when a request is cancelled before its
    answer's head, but not once the body is being read: a server stalled
    mid-body kept the socket open for good (over TLS even closing it
    gracefully would wait for the server's close_notify).  A check that
    passed closes its connection gracefully, as Twisted does.
    """

    _factory = _QuietClientFactory

    def __init__(self, reactor: Any) -> None:
        """
        @param reactor: what connects.
        """
        super().__init__(reactor, persistent=False)
        self._made: list[Any] = []

    def getConnection(self, key: Any, endpoint: Any) -> Deferred[Any]:
        """
        A new connection, as L{HTTPConnectionPool}, remembered.
        """
        return super().getConnection(key, endpoint).addCallback(self._remember)

    def _remember(self, connection: Any) -> Any:
        self._made.append(connection)
        return connection

    def abort(self) -> None:
        """
        Abort every connection of this check (those already closed do not
        mind).
        """
        connections, self._made = self._made, []
        for connection in connections:
            connection.transport.abortConnection()


def _timed_out(result: object, timeout: float) -> object:
    """
    The result of a check its timeout cancelled: always a timeout, since
    L{Agent} reports a cancelled wait for the answer as
    C{ResponseNeverReceived}, not C{CancelledError}.
    """
    if isinstance(result, Failure):
        raise DeferredTimeoutError(timeout, "health check")
    return result


@implementer(IPolicyForHTTPS)
class _NamedPolicy:
    """
    Verifies a check's TLS against a server's name, not the address in the
    check's URL: a server found by DNS is reached by address and named by
    its C{tls_name} (L{lbproxy.config.servers.ServerConfig}).
    """

    def __init__(self, policy: IPolicyForHTTPS, name: str) -> None:
        self._policy = policy
        self._name = name.encode("ascii")

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        """
        The creator for C{name}, whatever address is connected to.
        """
        return self._policy.creatorForNetloc(self._name, port)


def agent_probe(
    reactor: Any, path: str, timeout: float, host: str | None, tls: UpstreamTLS | None = None
) -> Probe:
    """
    A probe that sends C{GET path} with Twisted's L{Agent}.

    @param reactor: what connects and times.
    @param path: the check's target.
    @param timeout: seconds for connecting and answering.
    @param host: the C{Host} header, or L{None} for the server's address.
    @param tls: the TLS settings for C{https} servers, the proxy's own so
        that a check verifies what requests verify; platform trust if
        L{None}.
    """
    policy = tls or BrowserLikePolicyForHTTPS()

    def probe(server: Server) -> Deferred[int]:
        url = f"{server.config.scheme}://{server.address}{path}".encode("ascii")
        headers = Headers({b"Host": [(host or server.address).encode("ascii")]})
        # An agent per check (cheap: checks are seconds apart) so that its
        # connection is this check's alone to abort.
        connections = _CheckConnections(reactor)
        name = server.config.tls_name
        named = _NamedPolicy(policy, name) if name else policy
        agent = Agent(reactor, named, connectTimeout=timeout, pool=connections)
        answering = agent.request(b"GET", url, headers)

        def got_response(response: IResponse) -> Deferred[int]:
            done: Deferred[None] = Deferred()
            response.deliverBody(_Discard(done))
            return done.addCallback(lambda _: response.code)

        def failed(reason: Failure) -> Failure:
            connections.abort()
            return reason

        # (The same Deferred throughout: each step returns it, retyped.)
        checking = answering.addCallback(got_response)
        checking.addTimeout(timeout, reactor, onTimeoutCancel=_timed_out)
        return checking.addErrback(failed)

    return probe


def _failure_reason(failure: Failure) -> str:
    """
    A short reason for a failed check, for the DOWN log line.
    """
    if failure.check(DeferredTimeoutError, error.TimeoutError):
        return "timed out"
    # Agent wraps what went wrong on the connection (a TLS failure, say)
    # in ResponseNeverReceived and the like, with the causes in .reasons.
    reasons = getattr(failure.value, "reasons", None)
    if reasons:
        failure = reasons[0]
    # A Failure always has its exception's type (Twisted types it Optional).
    kind = cast(type[BaseException], failure.type)
    return connect_failure_text(failure) or kind.__name__


class HealthChecker(Service):
    """
    Checks every server of a pool on a L{LoopingCall} each; while running
    it follows the pool's servers as they change (L{Pool.update_servers}):
    a server that joins is checked at once, one that leaves is no more (its
    check in flight is cancelled, as all are on stop).
    """

    _log = Logger()

    def __init__(self, pool: Pool, probe: Probe, clock: IReactorTime) -> None:
        """
        @param pool: the pool whose servers to check; results go to it.
        @param probe: sends one check (L{agent_probe} in production).
        @param clock: what schedules the checks.
        """
        self._pool = pool
        self._probe = probe
        self._clock = clock
        self._loops: dict[Server, LoopingCall] = {}
        self._starts: dict[Server, IDelayedCall] = {}
        self._checking: dict[Server, Deferred[int]] = {}

    def startService(self) -> None:
        """
        Start checking, server I{i} of I{n} after C{i/n} of an interval.
        """
        super().startService()
        interval = self._pool.config.health_interval
        servers = self._pool.servers
        for index, server in enumerate(servers):
            self._start_loop(server, interval * index / len(servers))
        self._pool.add_observer(self._servers_changed)

    def _start_loop(self, server: Server, offset: float) -> None:
        interval = self._pool.config.health_interval
        loop = LoopingCall(self._check, server)
        loop.clock = self._clock
        self._loops[server] = loop
        if offset:
            self._starts[server] = self._clock.callLater(offset, loop.start, interval, True)
        else:
            loop.start(interval, True)

    def _stop_loop(self, server: Server) -> None:
        start = self._starts.pop(server, None)
        if start is not None and start.active():
            start.cancel()
        loop = self._loops.pop(server, None)
        if loop is not None and loop.running:
            loop.stop()
        checking = self._checking.pop(server, None)
        if checking is not None:
            checking.cancel()

    def _servers_changed(self, change: ServerChange) -> None:
        """
        The pool's servers changed: check the new ones now (a server that
        joins waits for its first check), stop checking those that left.
        """
        for server in change.removed:
            self._stop_loop(server)
        for server in change.added:
            if server not in self._loops:
                self._start_loop(server, 0.0)

    def stopService(self) -> Any:
        """
        Stop checking.
        """
        super().stopService()
        self._pool.remove_observer(self._servers_changed)
        for server in list(self._loops):
            self._stop_loop(server)

    def _check(self, server: Server) -> Deferred[None]:
        """
        One check of C{server}; never fails, since a failure would stop the
        loop for good.  The loop waits for it, so checks never overlap.
        """
        pool = self._pool.config
        if server.admin is AdminState.MAINT or server.config.down:
            # Maintenance pauses checks (HAProxy's maint), and a server
            # listed down (nginx's down) is never used: nothing to learn.
            return succeed(None)
        try:
            checking = self._probe(server)
        except Exception:
            self._log.failure("health probe of {server} failed", server=server.address)
            self._pool.check_failed(server, "internal error")
            return succeed(None)

        def answered(status: int) -> None:
            if server not in self._loops:
                return  # it left the pool (or checks stopped) meanwhile
            if pool.healthy(status):
                self._pool.check_passed(server)
            else:
                self._pool.check_failed(server, f"status {status}")

        def failed(reason: Failure) -> None:
            if server not in self._loops:
                return
            self._pool.check_failed(server, _failure_reason(reason))

        # Kept until it ends, so that one that stops mattering (the server
        # left, checks stopped) is cancelled: its connection and timeout go.
        self._checking[server] = checking
        checked = checking.addCallbacks(answered, failed)
        checked.addErrback(
            lambda reason: self._log.failure(
                "health check of {server} failed", reason, server=server.address
            )
        )
        checked.addBoth(lambda _: self._checking.pop(server, None) and None)
        return checked
