"""
Tests for L{lbproxy.discovery.service}: the watchers of a configuration's
DNS sources, across reloads.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lbproxy.balancing.pool import Pool
from lbproxy.balancing.routes import Router
from lbproxy.config.model import Config, DnsSource, PoolConfig, ServerConfig
from lbproxy.discovery.resolver import OwnedResolver
from lbproxy.discovery.service import DiscoveryService
from lbproxy.service.service import build_router
from tests.discovery.dnsserver import Zone

_APP = DnsSource("a", "app.lbtest", 3000)
_APP_SERVER = ServerConfig("10.0.0.9", 3000)


def _config(*sources: DnsSource, resolver: str = "127.0.0.1:5353") -> Config:
    pool = PoolConfig("web", (), sources, health_check=False, dns_refresh=10)
    return Config(pools=(pool,), resolver=resolver)


class _Resolvers:
    """
    Makes resolvers answering from one zone, recording each made and
    closed.
    """

    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self.made: list[str] = []
        self.closed: list[str] = []

    def __call__(self, setting: str, reactor: Any) -> OwnedResolver:
        self.made.append(setting)
        owned = OwnedResolver(self.zone, [], setting)
        owned.close = lambda: self.closed.append(setting)  # type: ignore[method-assign]
        return owned


class DiscoveryServiceTests(SynchronousTestCase):
    """
    L{DiscoveryService} watches every DNS source of the configuration and
    carries them across reloads.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.zone = Zone()
        self.zone.set_addresses("app.lbtest", ["10.0.0.1"], ttl=5)
        self.zone.set_addresses("other.lbtest", ["10.0.0.2"], ttl=5)
        self.resolvers = _Resolvers(self.zone)
        self.service = DiscoveryService(self.clock, self.resolvers)
        self.addCleanup(self.service.stopService)

    def _router(self, config: Config) -> Router[Pool]:
        router = build_router(config, self.clock)
        known = None
        if hasattr(self, "router"):
            known = {s.config.key: s for p in self.router.pools.values() for s in p.servers}
        self.service.attach(config, router.pools, known)
        self.router = router
        return router

    def _hosts(self) -> list[str]:
        return [s.config.host for s in self.router.pools["web"].servers]

    def test_lookups_start_with_service(self) -> None:
        """
        Attached before it starts, nothing is asked; started, every source
        is looked up and feeds its pool.
        """
        self._router(_config(_APP))
        self.assertEqual(self.zone.queries, [])
        self.service.startService()
        self.assertEqual(self._hosts(), ["10.0.0.1"])
        self.assertEqual(self.resolvers.made, ["127.0.0.1:5353"])

    def test_no_sources_no_resolver(self) -> None:
        """
        A configuration without DNS sources makes no resolver.
        """
        pool = PoolConfig("web", (_APP_SERVER,))
        self._router(Config(pools=(pool,)))
        self.service.startService()
        self.assertEqual(self.resolvers.made, [])

    def test_reload_same_source_kept(self) -> None:
        """
        A reload with the same source keeps its watcher (and schedule), and
        hands its servers, the same objects, to the reload's pool without
        asking again.
        """
        self._router(_config(_APP))
        self.service.startService()
        watcher = self.service.watchers[("web", _APP)]
        server = self.router.pools["web"].servers[0]
        asked = len(self.zone.queries)
        self.clock.advance(2)
        self._router(_config(_APP))
        self.assertIs(self.service.watchers[("web", _APP)], watcher)
        self.assertEqual(self.router.pools["web"].servers, (server,))
        self.assertIs(self.router.pools["web"].discovery[_APP.url], watcher.status)
        self.assertEqual(len(self.zone.queries), asked)
        self.clock.advance(2.9)
        self.assertEqual(len(self.zone.queries), asked)
        self.clock.advance(0.1)
        self.assertGreater(len(self.zone.queries), asked)

    def test_reload_changed_source_anew(self) -> None:
        """
        A reload that changes a source starts a watcher anew, looking up at
        once; the old one stops.
        """
        self._router(_config(_APP))
        self.service.startService()
        old = self.service.watchers[("web", _APP)]
        other = DnsSource("a", "other.lbtest", 3000)
        self._router(_config(other))
        self.assertFalse(old.running)
        self.assertEqual(list(self.service.watchers), [("web", other)])
        self.assertEqual(self._hosts(), ["10.0.0.2"])

    def test_reload_changed_resolver(self) -> None:
        """
        Another resolver setting starts every source anew with a new
        resolver; the old one is closed.
        """
        self._router(_config(_APP))
        self.service.startService()
        old = self.service.watchers[("web", _APP)]
        self._router(_config(_APP, resolver="127.0.0.1:8600"))
        self.assertIsNot(self.service.watchers[("web", _APP)], old)
        self.assertFalse(old.running)
        self.assertEqual(self.resolvers.made, ["127.0.0.1:5353", "127.0.0.1:8600"])
        self.assertEqual(self.resolvers.closed, ["127.0.0.1:5353"])
        self.assertEqual(self._hosts(), ["10.0.0.1"])

    def test_reload_without_sources(self) -> None:
        """
        A reload that drops every source stops them and closes the
        resolver.
        """
        self._router(_config(_APP))
        self.service.startService()
        old = self.service.watchers[("web", _APP)]
        self._router(Config(pools=(PoolConfig("web", (_APP_SERVER,)),)))
        self.assertFalse(old.running)
        self.assertEqual(self.service.watchers, {})
        self.assertEqual(self.resolvers.closed, ["127.0.0.1:5353"])

    def test_stop(self) -> None:
        """
        Stopped, it looks up no more and closes its resolver.
        """
        self._router(_config(_APP))
        self.service.startService()
        asked = len(self.zone.queries)
        self.successResultOf(self.service.stopService())
        self.clock.advance(60)
        self.assertEqual(len(self.zone.queries), asked)
        self.assertEqual(self.resolvers.closed, ["127.0.0.1:5353"])
