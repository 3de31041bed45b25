# -*- test-case-name: tests.discovery.test_watcher -*-
"""
Keeping a pool's servers in step with one DNS source: L{DnsWatcher}.

A watcher looks its source up (L{lbproxy.discovery.lookup}), gives the
servers found to its pool through L{Pool.update_servers}, and asks again
when the records' TTL runs out: never sooner than 1 s, never later than
the pool's C{dns-refresh} (HAProxy's C{hold valid}, nginx Plus's
C{resolver valid=}).  One lookup runs at a time.

  - Each change of the pool's servers is one log line:
    C{pool web: +10.0.0.7:3000 -10.0.0.5:3000 (dns+a app.internal)}.
  - A lookup that fails, or finds no records, changes nothing: the last
    good servers stay (a DNS outage must not empty a pool that works).  It
    is logged once when the outage begins and once when it ends, not per
    lookup; lookups go on after 1 s, 2 s, 4 s ... up to C{dns-refresh}.
    Before the first good lookup the source gives no servers (a pool with
    no others answers 503 until it resolves).
  - What the last lookup found is on C{pool.discovery[url]} (a
    L{SourceStatus}) for the admin page and metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from lbproxy.balancing.pool import Pool, Server, ServerChange
from lbproxy.balancing.sources import SourceStatus
from lbproxy.config.dns import DnsSource
from lbproxy.config.servers import ServerConfig
from lbproxy.discovery.lookup import Answer, LookupFailed, lookup, sorted_servers

__all__ = ["MIN_REFRESH", "DnsWatcher", "Lookup", "resolving_with", "retry_delay"]

#: The fewest seconds between two lookups of a source, whatever the TTL
#: says (a TTL of 0 must not become a busy loop).
MIN_REFRESH = 1.0

#: Looks a source up: L{lookup} with a resolver.
Lookup = Callable[[DnsSource], "Deferred[Answer]"]


class DnsWatcher:
    """
    Keeps the servers one DNS source gives one pool up to date.

    @ivar pool: the pool it feeds; another one after a reload that kept
        the source (L{move_to}).
    @ivar source: what it looks up.
    @ivar status: what the last lookup found, also C{pool.discovery[url]}.
    """

    _log = Logger()

    def __init__(
        self,
        pool: Pool,
        source: DnsSource,
        resolve: Lookup,
        clock: IReactorTime,
        resolver_name: str,
        known: Mapping[tuple[str, str, int], Server] | None = None,
    ) -> None:
        """
        @param pool: the pool to feed.
        @param source: the DNS source.
        @param resolve: looks a source up (L{lookup} with the resolver).
        @param clock: what schedules lookups and tells their time.
        @param resolver_name: who answers, for the status.
        @param known: servers of a previous configuration, by key, that the
            first lookup takes over with their state when it finds them
            again (a reload that changed the source).
        """
        self.pool = pool
        self.source = source
        self.status = SourceStatus(source.url, f"dns+{source.kind}", source.name, resolver_name)
        self._resolve = resolve
        self._clock = clock
        self._known = known
        self._found: tuple[ServerConfig, ...] | None = None
        self._failures = 0
        self._call: IDelayedCall | None = None
        self._looking = False
        self._idle_waiters: list[Deferred[None]] = []
        self._running = False
        pool.discovery[source.url] = self.status

    @property
    def running(self) -> bool:
        """
        Whether it looks up on its schedule (between L{start} and L{stop}).
        """
        return self._running

    def start(self) -> None:
        """
        Look up now, then on the records' schedule.
        """
        if self._running:
            return
        self._running = True
        self._lookup()

    def stop(self) -> None:
        """
        Stop looking up; a lookup under way ends unheeded (it times out on
        its own, within L{lbproxy.discovery.lookup.QUERY_TIMEOUTS}).
        """
        self._running = False
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self.status.next_lookup = None

    def idle(self) -> Deferred[None]:
        """
        Fires once no lookup is under way (for a stop that waits, and tests).
        """
        waiting: Deferred[None] = Deferred()
        if self._looking:
            self._idle_waiters.append(waiting)
        else:
            waiting.callback(None)
        return waiting

    def move_to(self, pool: Pool, known: Mapping[tuple[str, str, int], Server]) -> None:
        """
        Feed C{pool} (a reload's pool of the same name, with the same source)
        from now on, with the servers found so far, taken over from C{known}
        with their state; the schedule stays.
        """
        self.pool = pool
        pool.discovery[self.source.url] = self.status
        if self._found is not None:
            pool.update_servers(self._found, self.source.url, known)

    def _lookup(self) -> None:
        self._call = None
        self.status.next_lookup = None
        self._looking = True
        try:
            looking = self._resolve(self.source)
        except Exception:
            looking = Deferred()
            looking.errback()
        looking.addCallbacks(self._answered, self._failed)
        looking.addErrback(
            lambda reason: self._log.failure(
                "pool {pool}: lookup of {source} went wrong",
                reason,
                pool=self.pool.name,
                source=self.source.label,
            )
        )
        looking.addBoth(lambda _: self._ended())

    def _ended(self) -> None:
        self._looking = False
        if self._running and self._call is None:
            # A bug above (logged) must not end the lookups for good.
            self._schedule(self._refresh())
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _answered(self, answer: Answer) -> None:
        if not self._running:
            return  # stopped meanwhile: its pool may be gone
        now = self._clock.seconds()
        servers = answer.servers
        if answer.unanswered and self._found:
            # One of A and AAAA went unanswered: that family's servers stay.
            found = {server.key for server in servers}
            kept = [
                server
                for server in self._found
                if _family(server.host) in answer.unanswered and server.key not in found
            ]
            servers = sorted_servers([*servers, *kept])
        status = self.status
        status.last_lookup = now
        status.last_outcome = "ok"
        status.last_error = answer.note
        status.last_records = answer.records
        status.ttl = answer.ttl
        if status.failing_since is not None:
            self._log.info(
                "pool {pool}: {source} answers again after {seconds:.0f} s "
                "({failures} failed lookup(s))",
                pool=self.pool.name,
                source=self.source.label,
                seconds=now - status.failing_since,
                failures=self._failures,
            )
        status.failing_since = None
        self._failures = 0
        self._found = servers
        status.servers = tuple(server.address for server in servers)
        known, self._known = self._known, None
        change = self.pool.update_servers(servers, self.source.url, known)
        self._log_change(change)
        self._schedule(min(max(answer.ttl, MIN_REFRESH), self._refresh()))

    def _failed(self, reason: Failure) -> None:
        if not self._running:
            return
        error = reason.value
        if not isinstance(error, LookupFailed):
            self._log.failure(
                "pool {pool}: lookup of {source} went wrong",
                reason,
                pool=self.pool.name,
                source=self.source.label,
            )
            error = LookupFailed("internal error")
        now = self._clock.seconds()
        status = self.status
        status.last_lookup = now
        status.last_outcome = "empty" if error.empty else "failed"
        status.last_error = error.reason
        status.last_records = 0
        self._failures += 1
        if status.failing_since is None:
            status.failing_since = now
            if self._found is None:
                kept = "no servers from it until it resolves"
            else:
                kept = f"keeping its last {len(self._found)} server(s) until it answers"
            what = "has no records" if error.empty else "lookup failed"
            self._log.warn(
                "pool {pool}: {source} {what} ({reason}); {kept}",
                pool=self.pool.name,
                source=self.source.label,
                what=what,
                reason=error.reason,
                kept=kept,
            )
        # Sooner after the outage began, less often as it lasts.
        self._schedule(retry_delay(self._failures, self._refresh()))

    def _refresh(self) -> float:
        return max(self.pool.config.dns_refresh, MIN_REFRESH)

    def _schedule(self, delay: float) -> None:
        if not self._running:
            return
        self._call = self._clock.callLater(delay, self._lookup)
        self.status.next_lookup = self._clock.seconds() + delay

    def _log_change(self, change: ServerChange) -> None:
        if not change.added and not change.removed:
            return
        parts = [f"+{server.address}" for server in change.added]
        parts += [f"-{server.address}" for server in change.removed]
        self._log.info(
            "pool {pool}: {change} ({source})",
            pool=self.pool.name,
            change=" ".join(parts),
            source=self.source.label,
            added=[server.address for server in change.added],
            removed=[server.address for server in change.removed],
        )


#: The largest power of two in L{retry_delay}: 2 ** 1024 is no float (an
#: OverflowError after ~1025 failed lookups in a row), and 2 ** 32 seconds
#: is past any C{dns-refresh}.
_MAX_DOUBLINGS = 32


def retry_delay(failures: int, refresh: float) -> float:
    """
    Seconds to the next lookup after C{failures} failed ones in a row:
    L{MIN_REFRESH}, doubled after each failure, at most C{refresh}.
    """
    return min(MIN_REFRESH * 2.0 ** min(failures - 1, _MAX_DOUBLINGS), refresh)


def _family(host: str) -> int:
    return 6 if ":" in host else 4


def resolving_with(resolver: Any) -> Lookup:
    """
    The L{Lookup} that asks C{resolver}.
    """
    return lambda source: lookup(resolver, source)
