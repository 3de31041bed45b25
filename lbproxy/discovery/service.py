# -*- test-case-name: tests.discovery.test_service -*-
"""
Every DNS source of the configuration in force: L{DiscoveryService}.

It holds a L{DnsWatcher} per pool and source and the resolver they ask
(L{lbproxy.discovery.resolver}), and carries them across reloads
(L{DiscoveryService.attach}): a source that a reload keeps (the same pool,
address, weight and backup flag, and the same C{resolver}) keeps its
servers, their state and its schedule, and feeds the reload's pool; a
changed or new one starts anew, as at start; one the reload drops stops.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList

from lbproxy.balancing.pool import Pool, Server
from lbproxy.config.dns import DnsSource
from lbproxy.config.model import Config
from lbproxy.discovery.resolver import OwnedResolver, make_resolver
from lbproxy.discovery.watcher import DnsWatcher, resolving_with

__all__ = ["DiscoveryService"]

_Key = tuple[str, DnsSource]


class DiscoveryService(Service):
    """
    Looks up every DNS source of the configuration in force while it runs.

    @ivar watchers: the watcher of each source, by pool name and source.
    """

    def __init__(
        self,
        reactor: Any,
        make: Callable[[str, Any], OwnedResolver] = make_resolver,
    ) -> None:
        """
        @param reactor: what asks DNS servers and schedules lookups.
        @param make: makes the resolver of a C{resolver} setting
            (L{make_resolver}).
        """
        self._reactor = reactor
        self._make = make
        self._resolver: OwnedResolver | None = None
        self._setting = ""
        self.watchers: dict[_Key, DnsWatcher] = {}
        # Watchers a reload dropped, until their last lookup ends.
        self._leaving: set[DnsWatcher] = set()

    def attach(
        self,
        config: Config,
        pools: Mapping[str, Pool],
        known: Mapping[tuple[str, str, int], Server] | None = None,
    ) -> None:
        """
        Watch the DNS sources of C{config}, feeding C{pools} (its pools,
        by name); see the module docstring.

        @param known: the servers of the configuration in force, by key:
            kept sources hand theirs over, and a changed source's first
            lookup takes over those it finds again.
        """
        wanted = {
            (pool.name, source): pools[pool.name]
            for pool in config.pools
            for source in pool.sources
        }
        retired_resolver = None
        if self._resolver is not None and (config.resolver != self._setting or not wanted):
            # Another DNS server: every source starts anew with it.
            retired_resolver, self._resolver = self._resolver, None
        if wanted and self._resolver is None:
            self._resolver = self._make(config.resolver, self._reactor)
            self._setting = config.resolver
        previous, self.watchers = self.watchers, {}
        for key, pool in wanted.items():
            # With another resolver, no watcher is kept.
            watcher = previous.pop(key, None) if retired_resolver is None else None
            if watcher is not None:
                watcher.move_to(pool, known or {})
            else:
                assert self._resolver is not None
                watcher = DnsWatcher(
                    pool,
                    key[1],
                    resolving_with(self._resolver.resolver),
                    self._reactor,
                    self._resolver.description,
                    known,
                )
                if self.running:
                    watcher.start()
            self.watchers[key] = watcher
        for watcher in previous.values():
            self._retire(watcher)
        if retired_resolver is not None:
            retired_resolver.close()

    def startService(self) -> None:
        """
        Look every source up now, then on its schedule.
        """
        super().startService()
        for watcher in self.watchers.values():
            watcher.start()

    def stopService(self) -> Deferred[None]:
        """
        Stop looking up; fires when no lookup is under way any more (at
        most a lookup's timeouts later), the resolver closed.
        """
        super().stopService()
        watchers = [*self.watchers.values(), *self._leaving]
        for watcher in watchers:
            watcher.stop()
        waiting = DeferredList([watcher.idle() for watcher in watchers])

        def close(_: object) -> None:
            if self._resolver is not None:
                self._resolver.close()

        return waiting.addCallback(close)

    def _retire(self, watcher: DnsWatcher) -> None:
        watcher.stop()
        self._leaving.add(watcher)
        watcher.idle().addCallback(lambda _: self._leaving.discard(watcher))
