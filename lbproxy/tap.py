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

from twisted.application.internet import TimerService
from twisted.application.service import IService, Service
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python import usage

from lbproxy import __version__
from lbproxy.config.file import ConfigFileError
from lbproxy.config.model import (
    Config,
    HealthConfig,
    PoolConfig,
    ServerConfig,
    parse_duration,
    parse_server_list,
    parse_status_ranges,
)
from lbproxy.errors import ConfigError
from lbproxy.http.https import https_request_factory
from lbproxy.http.site import ProxySite, client_settings
from lbproxy.proxy.resource import BalancingProxyResource
from lbproxy.service.service import ProxyService, build_router, summary
from lbproxy.service.validate import check_config, load_checked
from lbproxy.tools.demo import listen_demo_apps
from lbproxy.upstream.client import UpstreamClient
from lbproxy.upstream.tls import upstream_tls

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
        # TLS (lbproxy.tls).
        [
            "upstream-insecure",
            None,
            "Do not verify the certificates of https upstreams (a warning is logged at start).",
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
        [
            "drain-timeout",
            None,
            10.0,
            "On SIGTERM, seconds requests in flight may take to finish.",
            _seconds("--drain-timeout"),
        ],
        [
            "config",
            "c",
            None,
            "A TOML configuration file (see README.rst); SIGHUP reloads it. "
            "Other options then come from the file.",
        ],
        [
            "client-header-timeout",
            None,
            60.0,
            "Seconds a client has to send a whole request head from its first "
            "byte; 408 and close after (nginx: client_header_timeout 60s).",
            _seconds("--client-header-timeout"),
        ],
        [
            "client-body-timeout",
            None,
            60.0,
            "Seconds a request body may stall between two reads; 408 and close "
            "after (nginx: client_body_timeout 60s).",
            _seconds("--client-body-timeout"),
        ],
        [
            "max-body-size",
            None,
            0,
            "Largest request body in bytes, 413 beyond; 0 is no limit "
            "(HAProxy; nginx: client_max_body_size 1m).",
            _count,
        ],
        [
            "max-request-line",
            None,
            8192,
            "Longest request line in bytes, 414 beyond (nginx: large_client_header_buffers 4 8k).",
            _positive,
        ],
        [
            "max-header-line",
            None,
            8192,
            "Longest request header line in bytes, 431 beyond "
            "(nginx: large_client_header_buffers 4 8k).",
            _positive,
        ],
        [
            "max-headers-size",
            None,
            65536,
            "Most bytes of request headers in all, 431 beyond.",
            _positive,
        ],
        [
            "max-headers",
            None,
            100,
            "Most request header lines, 431 beyond (HAProxy: tune.http.maxhdr 101).",
            _positive,
        ],
        # Upstream answers (lbproxy.upstream.connection).
        [
            "max-upstream-headers-size",
            None,
            65536,
            "Largest response head (status line and headers) from an upstream "
            "server in bytes; 502 beyond, counted as the server's failure "
            '(nginx: "upstream sent too big header", proxy_buffer_size).',
            _positive,
        ],
        [
            "send-timeout",
            None,
            60.0,
            "Seconds a client may take no byte of its answer while lbproxy has "
            "some for it; then it is closed (an HTTP/2 stream reset), and the "
            "upstream connection too (nginx: send_timeout 60s).",
            _seconds("--send-timeout"),
        ],
        # TLS (lbproxy.tls).
        [
            "tls-cert-dir",
            None,
            "",
            "A directory of PEM files (key, certificate, chain), one per host "
            "name (example.com.pem, *.example.com.pem): ssl: listeners pick one "
            "by SNI; their own certKey= is the default.",
        ],
        [
            "upstream-ca",
            None,
            "",
            "PEM file of the CA certificates that https upstreams must chain to "
            "[default: the platform's trusted roots].",
        ],
        [
            "upstream-client-cert",
            None,
            "",
            "PEM file with a private key and certificate (and chain) presented "
            "to https upstreams (mTLS).",
        ],
        [
            "redirect-https",
            None,
            0,
            "Answer requests on plain listeners with 308 to https on this port; 0 is off.",
            _count,
        ],
        [
            "hsts",
            None,
            0,
            "Strict-Transport-Security max-age (seconds) on TLS responses; 0 is off.",
            _count,
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
        # (Help text below; the value is checked in postOptions, with the
        # rest, by lbproxy.service.validate.)
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

    def parseOptions(self, options: Any = None) -> None:
        """
        Parse, and under twistd turn a usage error into one line on stderr
        and exit status 1.

        twistd answers a subcommand's C{UsageError} by printing its whole
        usage (over 100 lines) before the error; lbproxy's own tests and
        callers (no parent command) still get the C{UsageError}.
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if getattr(self, "parent", None) is None:
                raise
            raise SystemExit(f"twistd lbproxy: {e}") from None

    def postOptions(self) -> None:
        """
        Check the options together and build the L{Config}.
        """
        if self["config"] is not None:
            self._from_file(self["config"])
            return
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
                drain_timeout=self["drain-timeout"],
                client_header_timeout=self["client-header-timeout"],
                client_body_timeout=self["client-body-timeout"],
                max_body_size=self["max-body-size"],
                max_request_line=self["max-request-line"],
                max_header_line=self["max-header-line"],
                max_headers_size=self["max-headers-size"],
                max_headers=self["max-headers"],
                tls_cert_dir=self["tls-cert-dir"],
                upstream_ca=self["upstream-ca"],
                upstream_client_cert=self["upstream-client-cert"],
                upstream_insecure=bool(self["upstream-insecure"]),
                redirect_https=self["redirect-https"],
                hsts=self["hsts"],
                max_upstream_headers_size=self["max-upstream-headers-size"],
                send_timeout=self["send-timeout"],
            )
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        # Endpoint strings, certificate and key files: one line each, here,
        # rather than a traceback later.
        problems = check_config(self.config, _reactor())
        if problems:
            raise usage.UsageError("; ".join(p.as_option() for p in problems))

    def _from_file(self, path: str) -> None:
        """
        The configuration is the file's; other options would be ambiguous
        (and lost on reload), so they are refused.
        """
        given = [name for name in ("upstream", "backup", "listen") if self[name]] + [
            name for name in ("demo", "no-health-check") if self[name]
        ]
        given += [
            name
            for name, default in self.defaults.items()
            if name != "config" and self[name] != default
        ]
        if given:
            raise usage.UsageError(f"--{given[0]}: with --config, set it in {path} instead")
        self.config_path = path
        try:
            self.config = load_checked(path, _reactor())
        except ConfigFileError as e:
            raise usage.UsageError("; ".join(e.problems)) from None


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
        super().__init__(1.0, client.sweep_idle)
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
    clock = clock if clock is not None else reactor
    client = UpstreamClient(
        reactor,
        clock,
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
        keepalive=config.upstream_keepalive,
        idle_timeout=config.upstream_idle_timeout,
        tls=upstream_tls(config),
        max_headers_size=config.max_upstream_headers_size,
    )
    resource = BalancingProxyResource(
        build_router(config, clock), client, send_timeout=config.send_timeout
    )
    site = ProxySite(
        resource,
        client_timeout=config.client_timeout,
        access_log=config.access_log,
        reactor=clock,
        **client_settings(config),
    )
    site.requestFactory = https_request_factory(config.redirect_https, config.hsts)
    return site, client


def make_proxy_service(
    config: Config, reactor: Any, config_path: str | None = None, daemon: bool = False
) -> tuple[ProxyService, ProxySite]:
    """
    Build lbproxy's services from a configuration.

    @param config: the configuration.
    @param reactor: the reactor to connect, listen and time with.
    @param config_path: the file to re-read on SIGHUP, if any.
    @param daemon: whether twistd daemonises (see L{ProxyService}).
    @return: the service (start it to serve) and the site, which tests use
        to reach the resource and client.
    """
    demo_ports = []
    if config.demo:
        demo_ports = listen_demo_apps(reactor)
        servers = tuple(ServerConfig("127.0.0.1", port.getHost().port) for port in demo_ports)
        config = replace(config, pools=(replace(config.pools[0], servers=servers),))
        _log.info(
            "demo app servers listening on {addresses}",
            addresses=", ".join(s.address for s in servers),
        )
    site, client = build_site(config, reactor)
    # A reload checks the file as lbproxy check and the start do.
    load = (lambda: load_checked(config_path, reactor)) if config_path else None
    service = ProxyService(config, reactor, site, client, load, daemon)
    if demo_ports:
        _ListeningPortsService(demo_ports).setServiceParent(service)
    _UpstreamClientService(client).setServiceParent(service)
    _FreezeStartupObjects(reactor).setServiceParent(service)
    _log.info(
        "lbproxy {version}: {summary}",
        version=__version__,
        summary=summary(config),
    )
    return service, site


def makeService(options: Options) -> IService:
    """
    The twistd entry point: the service tree for these options.
    """
    path = getattr(options, "config_path", None)
    twistd = getattr(options, "parent", None)
    daemon = twistd is not None and not twistd.get("nodaemon", True)
    service, _ = make_proxy_service(options.config, _reactor(), path, daemon)
    return service
