# -*- test-case-name: tests.balancing.test_pool -*-
"""
Upstream pools and their servers' run-time state.

A L{Pool} is nginx's C{upstream} block: named servers and the balancer that
chooses among them.  A L{Server} is one app server's state as lbproxy sees
it.  Two things take a server out of rotation, and both must agree for it
to be in:

  - active checks (L{lbproxy.balancing.health}) report passes and failures here;
    C{fall} consecutive failures mark it down, C{rise} consecutive passes
    up again (HAProxy);
  - passive tracking: C{max_fails} failed attempts by real requests within
    C{fail_timeout} eject it for C{fail_timeout} (nginx); C{rise}
    consecutive passing checks after the ejection bring it back sooner.

A third, the operator's (L{AdminState}: drain, maintenance), takes a server
out whatever its health.  Every change of state is logged once, naming the
server and why.  The pool also counts each server's requests, answers,
failures and response times (L{lbproxy.balancing.server.ServerStats}) as
exchanges tell it.  Nothing here does network I/O; time comes from the
clock the pool is given.

Choosing a server (L{Pool.pick}): a server listed C{down} is never a
candidate; the client's sticky cookie (L{lbproxy.balancing.sticky}) names
its server if it has one in rotation; otherwise the pool's strategy
(L{lbproxy.interfaces.IBalancer}) picks among the primary servers, then
among the backups.  A server at its C{max-conns} is passed over.  When
every server a request may use is at its limit, the request waits in the
pool's queue (L{Pool.wait}, L{lbproxy.balancing.queue}; HAProxy's
C{maxconn} and C{timeout queue}) until an attempt ends or a server comes
back, or C{queue-timeout} passes.

Servers found by DNS (L{lbproxy.discovery}) come and go through one method,
L{Pool.update_servers}: those that stay are the same L{Server} objects,
with their state; observers (the health checker, the upstream client's
owner) hear of every change.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping, Sequence
from typing import NamedTuple, cast

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from lbproxy.balancing.queue import WaitQueue
from lbproxy.balancing.server import AdminState, Server
from lbproxy.balancing.sources import SourceStatus
from lbproxy.balancing.sticky import StickyCookie
from lbproxy.config.model import PoolConfig
from lbproxy.config.servers import ServerConfig
from lbproxy.interfaces import BalancedRequest, IBalancer

__all__ = ["Pool", "Server", "ServerChange", "status_class"]

_NEVER = float("inf")


class ServerChange(NamedTuple):
    """
    What one L{Pool.update_servers} changed.

    @ivar added: servers that joined the pool (new ones, or taken over
        from a previous configuration's pool).
    @ivar removed: servers that left it; requests in flight to them
        finish.
    """

    added: tuple[Server, ...]
    removed: tuple[Server, ...]


#: Told of every change of a pool's servers.
ServerObserver = Callable[[ServerChange], None]


class Pool:
    """
    A named group of servers and the balancer that picks among them.

    Backup servers (C{backup=True}) are candidates only while no primary
    server can be picked, as nginx's C{backup} parameter.
    """

    _log = Logger()

    def __init__(self, config: PoolConfig, balancer: IBalancer, clock: IReactorTime) -> None:
        """
        @param config: the pool's configuration.
        @param balancer: the strategy; one instance per pool, as it keeps
            the rotation state.
        @param clock: what tells the time (for passive ejection).
        """
        self.config = config
        self.name = config.name
        self.servers: tuple[Server, ...] = tuple(Server(s) for s in config.servers)
        self.max_tries = config.tries
        self._balancer = balancer
        # Optional (IBalancer): strategies written before it have none.
        self._forget: Callable[[Server], None] | None = getattr(balancer, "forget", None)
        self._clock = clock
        self._next_readmit = _NEVER
        self._all_down_reported = False
        self._configured = tuple(config.servers)
        self._found: dict[str, tuple[ServerConfig, ...]] = {}
        self._observers: list[ServerObserver] = []
        #: The pool's DNS sources by URL, for the admin page and metrics
        #: (filled in by lbproxy.discovery).
        self.discovery: dict[str, SourceStatus] = {}
        self._unavailable = _Unavailable()
        self._queue = WaitQueue(self, clock)
        self._arrange()

    def adopt(self, known: Mapping[tuple[str, str, int], Server]) -> None:
        """
        Take over the servers of a previous configuration that have the same
        address (scheme, host, port), keeping their state: health, passive
        ejection, and (in the upstream client) their pooled connections.
        """
        servers = []
        for server in self.servers:
            config = server.config
            old = known.get((config.scheme, config.host, config.port))
            if old is not None:
                old.config, old.weight = config, config.weight
                server = old
            servers.append(server)
        self.servers = tuple(servers)
        self._arrange()
        ejected = [s.ejected_until for s in self.servers if s.ejected_until]
        self._next_readmit = min(ejected, default=_NEVER)

    # Servers that come and go (lbproxy.discovery).

    def update_servers(
        self,
        configs: Sequence[ServerConfig],
        source: str,
        known: Mapping[tuple[str, str, int], Server] | None = None,
    ) -> ServerChange:
        """
        Make C{configs} the servers that C{source} gives the pool, in place
        of those it gave before; the one way servers join and leave a
        running pool.

        A server already in the pool (same scheme, host and port, from any
        source) stays the same L{Server}, with its health state, statistics
        and pooled connections; its weight and backup flag follow the new
        configuration.  A server in C{known} (a previous configuration's
        pool, on reload) is taken over likewise.  Any other is new: with
        health checks on it joins out of rotation and comes in when its
        first check passes (a new address is not trusted before it
        answered); without checks it is in rotation at once.  A server no
        source gives any more leaves: it takes no new requests, and those
        in flight to it finish.  The configuration's own servers are never
        removed here.

        @param configs: the servers, in order.
        @param source: who gives them (a DNS source's URL).
        @param known: servers to take over, by their key.
        @return: what changed (observers are told the same).
        """
        self._found[source] = tuple(configs)
        wanted: dict[tuple[str, str, int], ServerConfig] = {}
        for group in (self._configured, *self._found.values()):
            for config in group:
                wanted.setdefault(config.key, config)
        current = {server.config.key: server for server in self.servers}
        servers: list[Server] = []
        added: list[Server] = []
        for key, config in wanted.items():
            server = current.get(key)
            if server is None:
                server = (known or {}).get(key)
                if server is None:
                    server = self._joining(Server(config))
                added.append(server)
            server.config, server.weight = config, config.weight
            servers.append(server)
        removed = tuple(server for key, server in current.items() if key not in wanted)
        for server in removed:
            # Forgotten now, or when its last request ends (that request
            # would teach the strategy about it again).
            server.left = True
            if not server.active:
                self._forget_server(server)
        self.servers = tuple(servers)
        self._arrange()
        self.max_tries = self.config.max_tries or len(self.servers)
        ejected = [s.ejected_until for s in self.servers if s.ejected_until]
        self._next_readmit = min(ejected, default=_NEVER)
        change = ServerChange(tuple(added), removed)
        if added or removed:
            for observer in list(self._observers):
                observer(change)
        if self._queue:
            # Requests waiting may fit a new server, or have none left.
            self._queue.serve(sweep=True)
        return change

    def _forget_server(self, server: Server) -> None:
        """
        Tell the strategy that C{server} left, so that it drops the state
        it keeps for it (servers come and go with DNS without end).
        """
        if self._forget is not None:
            self._forget(server)

    def found_servers(self, source: str) -> tuple[ServerConfig, ...]:
        """
        The servers C{source} gives the pool now (as last given to
        L{update_servers}).
        """
        return self._found.get(source, ())

    def _joining(self, server: Server) -> Server:
        if self.config.health_check:
            # Out until its first check passes: rise - 1 passes are taken as
            # done, so one more brings it in, and a failed one resets it to a
            # down server's full rise (HAProxy starts a server added at run
            # time in maintenance or down, too).
            server.checked_up = server.healthy = server.up = False
            server.check_passes = self.config.rise - 1
            server.down_reason = "new: waiting for its first health check"
        return server

    def add_observer(self, observer: ServerObserver) -> None:
        """
        Tell C{observer} of every change of the pool's servers.
        """
        self._observers.append(observer)

    def remove_observer(self, observer: ServerObserver) -> None:
        """
        Stop telling C{observer}; nothing if it was not told.
        """
        if observer in self._observers:
            self._observers.remove(observer)

    def _arrange(self) -> None:
        """
        Derive what picking needs from C{servers}: the candidates (primary
        and backup, without those listed C{down}), whether any has a
        C{max-conns}, and the sticky cookie's ids.
        """
        usable = [s for s in self.servers if not s.config.down]
        self._primary = tuple(s for s in usable if not s.config.backup)
        self._backup = tuple(s for s in usable if s.config.backup)
        self._limited = any(s.config.max_conns for s in usable)
        name = self.config.sticky_cookie
        #: The sticky cookie (C{--sticky-cookie}), or L{None}.
        self.sticky = StickyCookie(name, self.name, usable) if name else None

    def pick(
        self, exclude: Container[Server] = (), request: BalancedRequest | None = None
    ) -> Server | None:
        """
        Choose the server for the next request.

        @param exclude: servers already tried for this request.
        @param request: the request, for sticky cookies and strategies that
            key on it (L{None} in tests).
        @return: a server, or L{None} if none is up, untried and below its
            C{max-conns} (then L{must_wait} says whether to wait for one).
        """
        if self._next_readmit is not _NEVER:
            self._readmit_ejected()
        tried = exclude
        if self._limited:
            # One object reused: picks never overlap.
            unavailable = self._unavailable
            unavailable.tried, unavailable.saw_full = tried, False
            exclude = unavailable
        named = None
        if self.sticky is not None and request is not None:
            named = self.sticky.named(request)
            # Sticky clients stay on a draining server, as in HAProxy:
            # draining lets sessions in progress finish there.
            if named is not None and (
                named in tried
                or not (named.up or (named.admin is AdminState.DRAINING and named.healthy))
            ):
                named = None
            if named is not None and not named.config.backup:
                return self._sticky(named, exclude)
        picked = self._balancer.pick(self._primary, exclude, request)
        if picked is None:
            if named is not None:
                # A backup named by the cookie, and no primary to be had.
                return self._sticky(named, exclude)
            if self._backup:
                picked = self._balancer.pick(self._backup, exclude, request)
        # The strategy returns one of the candidates it was given.
        return cast(Server | None, picked)

    def _sticky(self, server: Server, exclude: Container[Server]) -> Server | None:
        """
        The server a sticky cookie names, or L{None} to wait for it while
        it is at its C{max-conns} (HAProxy queues for the server a
        persistent client is bound to).
        """
        if server in exclude:
            self._unavailable.saw_full = True
            return None
        return server

    def must_wait(self) -> bool:
        """
        Whether the request the last L{pick} found no server for should
        wait in the queue: a server it may use is up but at its
        C{max-conns}.
        """
        return self._limited and self._unavailable.saw_full

    def wait(
        self,
        tried: Container[Server],
        request: BalancedRequest | None,
        resume: Callable[[Server | None], None],
        expire: Callable[[], None],
    ) -> Callable[[], None] | None:
        """
        Queue a request until a server it may use is below its
        C{max-conns}; see L{WaitQueue.wait}.
        """
        return self._queue.wait(tried, request, resume, expire)

    @property
    def waiting(self) -> int:
        """
        How many requests wait in the queue now.
        """
        return len(self._queue)

    def has_room(self) -> bool:
        """
        Whether any server in rotation is below its C{max-conns}.
        """
        for servers in (self._primary, self._backup):
            for server in servers:
                limit = server.config.max_conns
                if server.up and (not limit or server.active < limit):
                    return True
        return False

    def first_with_none_up(self) -> bool:
        """
        Record that a request found no server up; C{True} only for the first
        such request since a server was last up, so that an outage is
        logged once, not once per request.
        """
        if self._all_down_reported:
            return False
        self._all_down_reported = True
        return True

    # Passive tracking: what real requests found.

    def attempt_failed(self, server: Server, reason: str) -> None:
        """
        A request could not be served by C{server} (refused, timed out, not
        HTTP).  Enough of these within C{fail_timeout} eject it.
        """
        max_fails = self.config.max_fails
        if max_fails == 0 or server.ejected_until:
            return
        now = self._clock.seconds()
        window = self.config.fail_timeout
        if now - server.fails_since > window:
            server.fails, server.fails_since = 0, now
        server.fails += 1
        if server.fails >= max_fails:
            server.ejected_until = now + window
            server.check_passes = 0
            self._next_readmit = min(self._next_readmit, server.ejected_until)
            noun = "attempt" if server.fails == 1 else "attempts"
            self._update(server, f"{server.fails} failed {noun}: {reason}")
            server.fails = 0

    def _readmit_ejected(self) -> None:
        now = self._clock.seconds()
        if now < self._next_readmit:
            return
        self._next_readmit = _NEVER
        for server in self.servers:
            if server.ejected_until and server.ejected_until <= now:
                server.ejected_until = 0.0
                self._update(server, f"{self.config.fail_timeout:g} s since it was ejected")
            elif server.ejected_until:
                self._next_readmit = min(self._next_readmit, server.ejected_until)

    # Active checks: what the health checker found.

    def check_passed(self, server: Server) -> None:
        """
        A health check of C{server} passed.
        """
        server.stats.checked(self._clock.seconds(), True, "passed")
        server.check_failures = 0
        server.check_passes += 1
        rise = self.config.rise
        if server.check_passes < rise:
            return
        if not server.checked_up or server.ejected_until:
            server.checked_up = True
            server.ejected_until = 0.0
            self._update(server, f"{server.check_passes} checks passed")

    def check_failed(self, server: Server, reason: str) -> None:
        """
        A health check of C{server} failed because of C{reason}.
        """
        server.stats.checked(self._clock.seconds(), False, reason)
        server.check_passes = 0
        server.check_failures += 1
        fall = self.config.fall
        if server.checked_up and server.check_failures >= fall:
            server.checked_up = False
            self._update(server, f"{server.check_failures} checks failed: {reason}")

    # The operator's states.

    def set_admin(self, server: Server, state: AdminState) -> None:
        """
        Put C{server} in an admin state (drain, maintenance, back to
        normal), logged; requests in flight to it finish either way.
        """
        if server.admin is state:
            return
        server.admin = state
        # "ENABLED", not "NORMAL": the log line names the operator's action.
        said = "ENABLED" if state is AdminState.NORMAL else state.value.upper()
        self._log.info(
            "upstream {server} {state} (operator)",
            server=server.address,
            state=said,
            pool=self.name,
        )
        self._update(server, "operator")

    # What exchanges tell: attempts and their ends.

    def attempt_started(self, server: Server, retry: bool) -> None:
        """
        A request goes to C{server}.

        @param retry: it is the request's second or later attempt.
        """
        server.active += 1
        stats = server.stats
        stats.requests += 1
        if retry:
            stats.retries += 1
        self._balancer.started(server)

    def attempt_ended(
        self,
        server: Server,
        status: int,
        elapsed: float | None,
        first_byte: float | None = None,
    ) -> None:
        """
        An attempt on C{server} ended.

        @param status: the answer's status, or 0 if it failed (then
            C{attempt_failed} tells why, if it was the server's fault).
        @param elapsed: seconds from sending to the complete answer, if
            there was one.
        @param first_byte: seconds from sending to the answer's head, if
            one came: what the strategy learns response times from (a
            slow client holding back a long answer is not the server's
            slowness); C{elapsed} if not given.
        """
        server.active -= 1
        stats = server.stats
        if status:
            stats.by_class[status_class(status)] += 1
        else:
            stats.failures += 1
        if elapsed is not None:
            stats.latency.record(self._clock.seconds(), elapsed)
        self._balancer.finished(server, elapsed if first_byte is None else first_byte)
        if server.left and not server.active:
            self._forget_server(server)
        if self._queue:
            self._queue.serve()

    def _update(self, server: Server, why: str) -> None:
        healthy = server.checked_up and not server.ejected_until
        if not healthy and why != "operator":
            server.down_reason = why
        server.healthy = healthy
        up = healthy and server.admin is AdminState.NORMAL
        if up == server.up:
            return
        server.up = up
        if up:
            server.down_reason = ""
            self._all_down_reported = False
            if self._queue:
                self._queue.serve()
            if why != "operator":
                self._log.info(
                    "upstream {server} UP ({why})", server=server.address, why=why, pool=self.name
                )
        else:
            if why != "operator":
                self._log.warn(
                    "upstream {server} DOWN ({why})",
                    server=server.address,
                    why=why,
                    pool=self.name,
                )
            if self._queue:
                # Requests waiting for it may have no server left to wait
                # for: they are answered now, not at queue-timeout.
                self._queue.serve(sweep=True)


class _Unavailable:
    """
    The servers a pick must pass over in a pool with C{max-conns}: those
    tried for the request, and those at their limit (noting whether it saw
    one in rotation, so that the request waits rather than fails).
    """

    __slots__ = ("tried", "saw_full")

    def __init__(self) -> None:
        self.tried: Container[Server] = ()
        self.saw_full = False

    def __contains__(self, item: object) -> bool:
        server = cast(Server, item)
        if server in self.tried:
            return True
        limit = server.config.max_conns
        if limit and server.active >= limit:
            self.saw_full = self.saw_full or server.up
            return True
        return False


def status_class(status: int) -> str:
    """
    C{"2xx"} for 200-299 and so on (C{"5xx"} for anything odd).
    """
    if 100 <= status < 600:
        return _CLASSES[status // 100]
    return "5xx"


#: The class names by hundreds (looked up, not formatted: once per answer).
_CLASSES = ("", "1xx", "2xx", "3xx", "4xx", "5xx")
