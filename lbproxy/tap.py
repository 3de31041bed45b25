# -*- test-case-name: tests.test_tap -*-
"""
C{twistd lbproxy}: command-line options and the service tree they build.

This is the only module that knows about command-line options: it turns
them into a L{Config} and L{make_proxy_service} turns a config into
services (listeners, the upstream client's housekeeping).
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import replace
from typing import Any, cast

from twisted.application.internet import TimerService
from twisted.application.service import IService, Service
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python import usage

from lbproxy import __version__
from lbproxy.config import commandline
from lbproxy.config.model import Config, ServerConfig
from lbproxy.http.accesslog import FORMATS, AccessLog, TwistdLog, open_sink
from lbproxy.http.site import ProxySite
from lbproxy.proxy.resource import BalancingProxyResource
from lbproxy.service.service import ProxyService, build_router, summary
from lbproxy.service.twistdlog import TwistdLogAppends
from lbproxy.service.validate import check_config, load_checked, rechecked
from lbproxy.service.workers import WorkerSupervisor
from lbproxy.tools.demo import listen_demo_apps
from lbproxy.upstream.client import UpstreamClient
from lbproxy.upstream.tls import upstream_tls

__all__ = ["Options", "build_site", "makeService", "make_proxy_service", "make_supervisor"]

_log = Logger()


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class Options(commandline.Options):
    """
    Options of C{twistd lbproxy}: the option table's
    (L{lbproxy.config.commandline.Options}), then everything the proxy
    needs from the system checked as C{lbproxy check} does (endpoint
    strings, certificate and key files), so that a bad value is one line
    now rather than a traceback later.
    """

    def postOptions(self) -> None:
        """
        Build the L{Config}, then check it.
        """
        super().postOptions()
        problems = check_config(self.config, _reactor())
        if not problems:
            return
        if self.config_path is not None:
            raise usage.UsageError("; ".join(p.in_file(self.config_path) for p in problems))
        raise usage.UsageError("; ".join(p.as_option() for p in problems))


class _ListeningPortsService(Service):
    """
    Owns already-listening ports (the demo apps) and closes them on stop.
    """

    def __init__(self, ports: list[IListeningPort]) -> None:
        self._ports = ports

    def stopService(self) -> Any:
        super().stopService()
        from twisted.internet.defer import gatherResults

        # TCP ports (listen_demo_apps) always answer with a Deferred; the
        # interface allows None.
        return gatherResults([cast(Deferred[None], port.stopListening()) for port in self._ports])


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


def build_site(
    config: Config, reactor: Any, clock: Any = None, open_log: bool = True
) -> tuple[ProxySite, UpstreamClient]:
    """
    Build the proxy's site and upstream client, without listening.

    @param config: the configuration.
    @param reactor: what connects to app servers.
    @param clock: what times timeouts; the reactor if L{None}.
    @param open_log: open the access log now (through Twisted's logger
        for C{-}); the service opens it when it starts instead.
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
        build_router(config, clock),
        client,
        send_timeout=config.send_timeout,
        tunnel_timeout=config.tunnel_timeout,
    )
    sink = open_sink(config.access_log, None) if open_log else None
    access_log = AccessLog(clock, sink, FORMATS[config.access_log_format])
    site = ProxySite(resource, config, access_log, clock)
    return site, client


def _loader(config: Config, config_path: str | None, reactor: Any) -> Callable[[], Config]:
    """
    What a SIGHUP loads: the file, checked as C{lbproxy check} and the
    start check it; without one, the command line's configuration checked
    again (its files read anew: L{rechecked}).
    """
    if config_path is not None:
        path = config_path
        return lambda: load_checked(path, reactor)
    return lambda: rechecked(config, reactor)


def make_proxy_service(
    config: Config,
    reactor: Any,
    config_path: str | None = None,
    daemon: bool = False,
    twistd_log: TwistdLog | None = None,
    inherited: dict[str, int] | None = None,
) -> tuple[ProxyService, ProxySite]:
    """
    Build lbproxy's services from a configuration: a single process's, or
    a worker's (C{inherited}).

    @param config: the configuration.
    @param reactor: the reactor to connect, listen and time with.
    @param config_path: the file to re-read on SIGHUP, if any.
    @param daemon: whether twistd daemonises (see L{ProxyService}).
    @param twistd_log: where twistd logs, for C{--access-log -}; through
        Twisted's logger if L{None}.
    @param inherited: in a worker, the listening sockets the supervisor
        bound, by listener (see L{ProxyService}).
    @return: the service (start it to serve) and the site, which tests use
        to reach the resource and client.
    """
    config, demo_ports = _with_demo_apps(config, reactor)
    site, client = build_site(config, reactor, open_log=False)
    load = _loader(config, config_path, reactor)
    service = ProxyService(
        config,
        reactor,
        site,
        client,
        load,
        daemon,
        open_sink=lambda setting: open_sink(setting, twistd_log),
        restart_notes=inherited is None,
        inherited=inherited,
    )
    if twistd_log is not None and twistd_log.path is not None and inherited is None:
        # Access lines are appended to twistd's own log file.
        TwistdLogAppends(twistd_log.path, reactor).setServiceParent(service)
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


def _with_demo_apps(config: Config, reactor: Any) -> tuple[Config, list[IListeningPort]]:
    """
    With C{--demo}: start the demo app servers and put them in the pool.
    """
    if not config.demo:
        return config, []
    demo_ports = listen_demo_apps(reactor)
    # TCP ports on 127.0.0.1: their address is an IPv4Address.
    servers = tuple(
        ServerConfig("127.0.0.1", cast(IPv4Address, port.getHost()).port) for port in demo_ports
    )
    config = replace(config, pools=(replace(config.pools[0], servers=servers),))
    _log.info(
        "demo app servers listening on {addresses}",
        addresses=", ".join(s.address for s in servers),
    )
    return config, demo_ports


def make_supervisor(
    config: Config,
    reactor: Any,
    config_path: str | None = None,
    daemon: bool = False,
    twistd_log: TwistdLog | None = None,
) -> WorkerSupervisor:
    """
    Build the twistd process's service under C{--workers} above 1: it
    binds the listeners and keeps the workers serving them (the demo app
    servers, if any, run here).  Parameters as L{make_proxy_service}'s.
    """
    config, demo_ports = _with_demo_apps(config, reactor)
    # The workers get the demo servers' addresses, not --demo.
    config = replace(config, demo=False)
    load = _loader(config, config_path, reactor)
    supervisor = WorkerSupervisor(config, reactor, load, config_path, daemon, twistd_log)
    if twistd_log is not None and twistd_log.path is not None:
        # Workers append access lines to twistd's own log file.
        TwistdLogAppends(twistd_log.path, reactor).setServiceParent(supervisor)
    if demo_ports:
        _ListeningPortsService(demo_ports).setServiceParent(supervisor)
    _log.info(
        "lbproxy {version}: {summary}, {workers} workers",
        version=__version__,
        summary=summary(config),
        workers=config.workers,
    )
    return supervisor


def makeService(options: Options) -> IService:
    """
    The twistd entry point: the service tree for these options.
    """
    path = getattr(options, "config_path", None)
    twistd = getattr(options, "parent", None)
    daemon = twistd is not None and not twistd.get("nodaemon", True)
    log = TwistdLog.from_options(twistd)
    if options.config.workers > 1:
        return make_supervisor(options.config, _reactor(), path, daemon, log)
    service, _ = make_proxy_service(options.config, _reactor(), path, daemon, log)
    return service
