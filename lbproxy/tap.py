# -*- test-case-name: tests.test_tap -*-
"""
C{twistd lbproxy}: command-line options and the service tree they build.

This is the only module that knows about command-line options: it turns
them into a L{Config} and L{make_proxy_service} turns a config into
services (listeners, the upstream client's housekeeping).
"""

from __future__ import annotations

import gc
from dataclasses import replace
from typing import Any

from twisted.application import strports
from twisted.application.internet import TimerService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python import usage

from lbproxy import __version__
from lbproxy.balance import RoundRobin
from lbproxy.config import (
    Config,
    ConfigError,
    HealthConfig,
    PoolConfig,
    ServerConfig,
    parse_duration,
    parse_server_list,
    parse_status_ranges,
)
from lbproxy.demo import listen_demo_apps
from lbproxy.health import HealthChecker, agent_probe
from lbproxy.pool import Pool
from lbproxy.resource import BalancingProxyResource
from lbproxy.site import ProxySite
from lbproxy.upstream import UpstreamClient

__all__ = ["Options", "build_site", "makeService", "make_proxy_service"]

_log = Logger()


def _seconds(name: str) -> Any:
    def coerce(text: str) -> float:
        try:
            return parse_duration(text, name)
        except ConfigError as e:
            raise ValueError(str(e)) from None

    coerce.coerceDoc = "Seconds; fractions allowed."  # type: ignore[attr-defined]
    return coerce


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"{text!r} must be 1 or more")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"{text!r} must be 0 or more")
    return value


class Options(usage.Options):
    """
    Options of C{twistd lbproxy}; every default is shown by C{--help}.
    """

    synopsis = "[options]"
    longdesc = (
        "Reverse proxy and load balancer: each request goes to the next "
        "--upstream server in turn (round robin, like nginx's upstream block)."
    )

    optFlags = [
        ["no-health-check", None, "Turn active health checks off."],
        [
            "demo",
            None,
            "Start two small demo app servers on loopback (answering "
            "'PORT 3000' and 'PORT 3001') and proxy to them.",
        ],
    ]

    optParameters = [
        [
            "access-log",
            None,
            "-",
            "Where to write an access line per request (combined log format): "
            "'-' is the twistd log, 'off' is nowhere, anything else a file path "
            "(nginx: access_log).",
        ],
        [
            "connect-timeout",
            None,
            5.0,
            "Seconds to wait for a connection to an upstream server "
            "(nginx: proxy_connect_timeout 60s; 5 s fails over sooner).",
            _seconds("--connect-timeout"),
        ],
        [
            "read-timeout",
            None,
            60.0,
            "Seconds an upstream server may stay silent before 504 "
            "(nginx: proxy_read_timeout 60s).",
            _seconds("--read-timeout"),
        ],
        [
            "client-timeout",
            None,
            60.0,
            "Seconds an idle client keep-alive connection is kept open "
            "(nginx: keepalive_timeout 75s).",
            _seconds("--client-timeout"),
        ],
        [
            "upstream-keepalive",
            None,
            32,
            "Idle connections kept open per upstream server "
            "(nginx: keepalive 32); 0 closes each after use.",
            _count,
        ],
        [
            "upstream-idle-timeout",
            None,
            4.0,
            "Seconds an idle upstream connection may be reused; keep it "
            "below the app servers' own (Node closes after 5 s).",
            _seconds("--upstream-idle-timeout"),
        ],
        # Health: active checks with HAProxy's defaults, passive tracking and
        # retries with nginx's.
        ["health-path", None, "/", "Target of the health check's GET."],
        [
            "health-interval",
            None,
            2.0,
            "Seconds between two checks of a server (HAProxy: inter 2s).",
            _seconds("--health-interval"),
        ],
        [
            "health-timeout",
            None,
            1.0,
            "Seconds a check may take to answer.",
            _seconds("--health-timeout"),
        ],
        [
            "health-status",
            None,
            "200-399",
            "Statuses that count as healthy, e.g. 200-399 or 200,204.",
        ],
        ["health-host", None, None, "Host header of checks [default: the server's address]."],
        [
            "fall",
            None,
            3,
            "Consecutive failed checks that take a server out (HAProxy: fall 3).",
            _positive,
        ],
        [
            "rise",
            None,
            2,
            "Consecutive passed checks that bring it back (HAProxy: rise 2).",
            _positive,
        ],
        [
            "max-fails",
            None,
            1,
            "Failed requests within --fail-timeout that take a server out for "
            "--fail-timeout (nginx: max_fails=1); 0 turns this off.",
            _count,
        ],
        [
            "fail-timeout",
            None,
            10.0,
            "Seconds of the --max-fails window and of the time out (nginx: fail_timeout=10s).",
            _seconds("--fail-timeout"),
        ],
        [
            "max-tries",
            None,
            None,
            "Servers one request may be tried on when connecting fails "
            "[default: all of the pool's].",
            _positive,
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["upstream"] = []
        self["backup"] = []
        self["listen"] = []

    def opt_upstream(self, value: str) -> None:
        # (Help text below: usage.Options prints a docstring as written.)
        try:
            self["upstream"].extend(parse_server_list(value))
        except ConfigError as e:
            raise usage.UsageError(f"--upstream: {e}") from None

    def opt_backup(self, value: str) -> None:
        # (Help text below.)
        try:
            self["backup"].extend(replace(s, backup=True) for s in parse_server_list(value))
        except ConfigError as e:
            raise usage.UsageError(f"--backup: {e}") from None

    def opt_listen(self, value: str) -> None:
        # (Help text below.)
        try:
            # Parsing builds the endpoint without listening, so a typo is
            # reported here, in one line, rather than as a traceback later.
            serverFromString(_reactor(), value)
        except (ValueError, KeyError, TypeError) as e:
            raise usage.UsageError(f"--listen {value!r}: {e}") from None
        self["listen"].append(value)

    opt_upstream.__doc__ = (
        "Upstream servers HOST:PORT[,HOST:PORT...] (or http://HOST:PORT, "
        '[::1]:PORT); repeatable; they form the pool "default". '
        "[required, or --demo]"
    )
    opt_backup.__doc__ = (
        "Backup servers HOST:PORT[,...]: they take requests only while every "
        "--upstream server is out of rotation (nginx: backup); repeatable."
    )
    opt_listen.__doc__ = (
        "A Twisted endpoint to listen on (tcp:8080, "
        "tcp:8080:interface=127.0.0.1, unix:/run/lb.sock); repeatable. "
        "[default: tcp:8080]"
    )

    def opt_version(self) -> None:
        """
        Print lbproxy's version and exit.
        """
        print(f"lbproxy {__version__}")
        raise SystemExit(0)

    def postOptions(self) -> None:
        """
        Check the options together and build the L{Config}.
        """
        if self["demo"] and self["upstream"]:
            raise usage.UsageError("--demo and --upstream cannot be combined")
        if not self["demo"] and not self["upstream"]:
            raise usage.UsageError(
                "no upstream servers: give --upstream HOST:PORT[,HOST:PORT...] "
                "(or --demo to try lbproxy)"
            )
        # With --demo the pool is filled when the demo apps listen.
        servers = tuple(self["upstream"]) or (ServerConfig("127.0.0.1", 3000),)
        try:
            health = HealthConfig(
                enabled=not self["no-health-check"],
                path=self["health-path"],
                interval=self["health-interval"],
                timeout=self["health-timeout"],
                statuses=parse_status_ranges(self["health-status"]),
                host=self["health-host"],
                fall=self["fall"],
                rise=self["rise"],
            )
            pool = PoolConfig(
                "default",
                servers + tuple(self["backup"]),
                health=health,
                max_fails=self["max-fails"],
                fail_timeout=self["fail-timeout"],
                max_tries=self["max-tries"],
            )
            self.config = Config(
                pools=(pool,),
                listen=tuple(self["listen"]) or ("tcp:8080",),
                connect_timeout=self["connect-timeout"],
                read_timeout=self["read-timeout"],
                client_timeout=self["client-timeout"],
                upstream_keepalive=self["upstream-keepalive"],
                upstream_idle_timeout=self["upstream-idle-timeout"],
                access_log=self["access-log"],
                demo=bool(self["demo"]),
            )
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


class _ListeningPortsService(Service):
    """
    Owns already-listening ports (the demo apps) and closes them on stop.
    """

    def __init__(self, ports: list[IListeningPort]) -> None:
        self._ports = ports

    def stopService(self) -> Any:
        super().stopService()
        from twisted.internet.defer import gatherResults

        return gatherResults([port.stopListening() for port in self._ports])


class _FreezeStartupObjects(Service):
    """
    Moves every object alive once the reactor runs (modules, config, the
    service tree) out of the garbage collector's reach with C{gc.freeze()}.

    Python's full collections walk every tracked object; without this each
    one walks all of Twisted's and lbproxy's start-up objects and stalls the
    reactor for milliseconds (measured: p99 latency 16 ms with, 6 ms
    without, at 9k requests/s; see bench/RESULTS.md).
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def startService(self) -> None:
        super().startService()
        self._reactor.callWhenRunning(gc.freeze)


class _UpstreamClientService(TimerService):
    """
    Sweeps expired idle upstream connections now and then, and closes the
    idle ones on stop.
    """

    def __init__(self, client: UpstreamClient) -> None:
        super().__init__(max(client.idle_timeout / 2, 0.5), client.sweep_idle)
        self.clock = client.clock
        self._client = client

    def stopService(self) -> Any:
        result = super().stopService()
        self._client.close_idle()
        return result


def build_site(config: Config, reactor: Any, clock: Any = None) -> tuple[ProxySite, UpstreamClient]:
    """
    Build the proxy's site and upstream client, without listening.

    @param config: the configuration.
    @param reactor: what connects to app servers.
    @param clock: what times timeouts; the reactor if L{None}.
    @return: the site to listen with and the client it sends through.
    """
    client = UpstreamClient(
        reactor,
        clock if clock is not None else reactor,
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
        keepalive=config.upstream_keepalive,
        idle_timeout=config.upstream_idle_timeout,
    )
    pool = Pool(config.pools[0], RoundRobin(), clock if clock is not None else reactor)
    resource = BalancingProxyResource(pool, client)
    site = ProxySite(resource, client_timeout=config.client_timeout, access_log=config.access_log)
    return site, client


def make_proxy_service(config: Config, reactor: Any) -> tuple[MultiService, ProxySite]:
    """
    Build lbproxy's services from a configuration.

    @param config: the configuration.
    @param reactor: the reactor to connect, listen and time with.
    @return: the parent service (start it to serve) and the site, which
        tests use to reach the resource and client.
    """
    parent = MultiService()
    if config.demo:
        ports = listen_demo_apps(reactor)
        _ListeningPortsService(ports).setServiceParent(parent)
        servers = tuple(ServerConfig("127.0.0.1", port.getHost().port) for port in ports)
        config = replace(config, pools=(replace(config.pools[0], servers=servers),))
        _log.info(
            "demo app servers listening on {addresses}",
            addresses=", ".join(s.address for s in servers),
        )
    site, client = build_site(config, reactor)
    _UpstreamClientService(client).setServiceParent(parent)
    pool = site.resource.pool
    health = pool.config.health
    if health.enabled:
        probe = agent_probe(reactor, health.path, health.timeout, health.host)
        HealthChecker(pool, probe, reactor).setServiceParent(parent)
    _FreezeStartupObjects(reactor).setServiceParent(parent)
    for description in config.listen:
        strports.service(description, site, reactor=reactor).setServiceParent(parent)
    _log.info(
        "lbproxy {version} proxying to {servers} (round robin) on {listen}",
        version=__version__,
        servers=", ".join(s.address for s in config.pools[0].servers),
        listen=", ".join(config.listen),
    )
    return parent, site


def makeService(options: Options) -> IService:
    """
    The twistd entry point: the service tree for these options.
    """
    service, _ = make_proxy_service(options.config, _reactor())
    return service
