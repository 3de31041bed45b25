"""
Helpers for the admin's tests: an L{AdminCore} over a proxy resource whose
upstream side is a fake (L{tests.proxy.fakes}), on a L{Clock}, and requests
driven through it with answers the test chooses.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock

from lbproxy.admin.core import AdminCore
from lbproxy.balancing.sources import SourceStatus
from lbproxy.config.model import Config, PoolConfig, ServerConfig
from lbproxy.http.accesslog import AccessLog
from lbproxy.http.site import ProxySite
from lbproxy.proxy.exchange import ProxyExchange
from lbproxy.proxy.resource import BalancingProxyResource
from tests.proxy.fakes import FakeClientRequest, FakeProducer, FakeUpstreamClient, Sent


class FakeProxy:
    """
    A proxy resource over one pool C{web} of two servers (C{10.0.0.1:80},
    C{10.0.0.2:80}, and a backup C{10.0.0.3:80} if asked), sending through a
    L{FakeUpstreamClient}, with its site and an L{AdminCore} over both.
    """

    def __init__(self, backup: bool = False, **pool: Any) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        servers = [ServerConfig("10.0.0.1", 80), ServerConfig("10.0.0.2", 80)]
        if backup:
            servers.append(ServerConfig("10.0.0.3", 80, backup=True))
        pool.setdefault("health_check", False)
        config = Config(pools=(PoolConfig("web", tuple(servers), **pool),))
        self.upstream = FakeUpstreamClient(self.clock)
        from lbproxy.service.service import build_router

        self.resource = BalancingProxyResource(
            build_router(config, self.clock),
            self.upstream,  # type: ignore[arg-type]
        )
        self.site = ProxySite(self.resource, config, AccessLog(self.clock, None), self.clock)
        self.core = AdminCore(self.resource, self.site, self.clock)
        self.pool = self.resource.router.pools["web"]

    def request(self) -> tuple[FakeClientRequest, Sent]:
        """
        Start a request; return it and what was sent upstream for it.
        """
        client = FakeClientRequest()
        ProxyExchange(self.resource, client).start()
        return client, self.upstream.sent[-1]

    def answer(self, sent: Sent, status: int, seconds: float) -> None:
        """
        Answer C{sent} with C{status}, whole, C{seconds} after it was sent.
        """
        sent.sink.connection_ready()
        self.clock.advance(seconds)
        sent.sink.response_headers(status, b"X", [(b"Content-Length", b"0")], FakeProducer())
        sent.sink.response_done()

    def add_sources(self) -> list[SourceStatus]:
        """
        Give the pool three DNS sources' statuses, as L{lbproxy.discovery}
        fills them in (the clock is at 1,000,000): one whose last lookup,
        3 s ago, answered; one failing for 2 minutes, keeping a server; one
        not looked up yet.
        """
        ok = SourceStatus("dns+a://app.internal:3000", "dns+a", "app.internal", "127.0.0.1:53")
        ok.last_lookup, ok.last_outcome, ok.last_records = 999_997.0, "ok", 2
        ok.ttl, ok.next_lookup = 9.0, 1_000_006.0
        ok.servers = ("10.0.0.5:3000", "10.0.0.6:3000")
        failing = SourceStatus(
            "dns+srv://_web._tcp.service.consul", "dns+srv", "_web._tcp.service.consul", "system"
        )
        failing.last_lookup, failing.last_outcome = 999_996.0, "failed"
        failing.last_error, failing.ttl = "timed out", 5.0
        failing.next_lookup, failing.failing_since = 1_000_004.0, 999_880.0
        failing.servers = ("10.0.0.9:8080",)
        fresh = SourceStatus("dns+a://new.internal:80", "dns+a", "new.internal", "system")
        sources = [ok, failing, fresh]
        for source in sources:
            self.pool.discovery[source.url] = source
        return sources
