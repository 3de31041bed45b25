# -*- test-case-name: tests.test_service -*-
"""
The running proxy as a twistd service: listeners, pools, health checks,
reload on SIGHUP and a graceful stop.

L{ProxyService} owns what a configuration turns into.  L{ProxyService.apply}
puts a configuration in place, at start and on reload: new requests use the
new routes and pools at once, requests in flight finish on the pools they
started with, servers present before and after keep their health state and
pooled connections (they are the same L{Server} objects), listeners are
started and stopped to match.  On stop it stops accepting, waits for the
requests in flight up to C{drain_timeout} seconds, then lets the rest go.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application import strports
from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, DeferredList, TimeoutError, gatherResults
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from lbproxy.balance import RoundRobin
from lbproxy.client import UpstreamClient
from lbproxy.config import Config
from lbproxy.health import HealthChecker, agent_probe
from lbproxy.pool import Pool, Server
from lbproxy.routes import Router
from lbproxy.site import ProxySite
from lbproxy.tls import server_endpoint

__all__ = [
    "ProxyService",
    "ReloadableTLS",
    "build_router",
    "summary",
    "with_default_backlog",
]

ServerKey = tuple[str, str, int]


def _key(server: Server) -> ServerKey:
    config = server.config
    return (config.scheme, config.host, config.port)


def build_router(
    config: Config, clock: Any, known: Mapping[ServerKey, Server] | None = None
) -> Router[Pool]:
    """
    The pools and routes of C{config}.

    @param clock: what the pools tell time by.
    @param known: servers of the configuration in force, by address: a
        server with the same address is kept (with its health state and
        pooled connections) rather than made anew.
    """
    pools = {}
    for pool_config in config.pools:
        pool = Pool(pool_config, RoundRobin(), clock)
        if known:
            pool.adopt(known)
        pools[pool_config.name] = pool
    return Router(config.routes, pools)


class ProxyService(MultiService):
    """
    lbproxy's service tree: start it to serve.

    @ivar config: the configuration in force.
    @ivar site: the client-facing site.
    @ivar client: the upstream client, kept across reloads.
    """

    _log = Logger()

    def __init__(
        self,
        config: Config,
        reactor: Any,
        site: ProxySite,
        client: UpstreamClient,
        load: Callable[[], Config] | None = None,
    ) -> None:
        """
        @param config: the configuration to start with; C{site}'s resource
            already routes with it.
        @param reactor: what listens, connects and times.
        @param site: the site to listen with.
        @param client: the upstream client the site's resource sends with.
        @param load: reads the configuration anew for a reload (from the
            C{--config} file), raising L{lbproxy.config.ConfigError} or
            L{lbproxy.configfile.ConfigFileError}; L{None} if there is no
            file to reload.
        """
        super().__init__()
        self.config = config
        self.site = site
        self.client = client
        self._reactor = reactor
        self._load = load
        self._listeners: dict[str, IService] = {}
        self._tls: dict[str, ReloadableTLS] = {}
        self._checkers: list[HealthChecker] = []
        self._previous_sighup: Any = None
        self._start_checkers()
        for description in config.listen:
            self._listeners[description] = self._listener(description)

    @property
    def resource(self) -> Any:
        """
        The proxy resource.
        """
        return self.site.resource

    def _listener(self, description: str) -> IService:
        given = description
        description = with_default_backlog(description)
        service = strports.service(description, self.site, reactor=self._reactor)
        endpoint = service.endpoint  # type: ignore[attr-defined]
        if isinstance(endpoint, SSL4ServerEndpoint):
            # Certificates (and the SNI directory) are read again on reload.
            tls = ReloadableTLS(self._reactor, description, self.config.tls_cert_dir or None)
            endpoint._sslContextFactory = tls  # type: ignore[attr-defined]
            self._tls[given] = tls
        # Fail at start (port in use) rather than log and run deaf.
        service._raiseSynchronously = True  # type: ignore[attr-defined]
        return service

    def _start_checkers(self) -> None:
        for pool in self.resource.router.pools.values():
            health = pool.config.health
            if health.enabled:
                probe = agent_probe(
                    self._reactor, health.path, health.timeout, health.host, self.client.tls
                )
                checker = HealthChecker(pool, probe, self._reactor)
                self._checkers.append(checker)
                if self.running:
                    checker.startService()

    def startService(self) -> None:
        """
        Start health checks and listeners, and reload on SIGHUP.
        """
        super().startService()
        for checker in self._checkers:
            checker.startService()
        for description, listener in self._listeners.items():
            try:
                listener.startService()
            except CannotListenError as e:
                # One line, not a traceback: the usual cause is a port in use.
                message = f"lbproxy: cannot listen on {description}: {e.socketError}"
                self._log.error("{message}", message=message)
                raise SystemExit(message) from None
        if self._load is not None:
            self._previous_sighup = signal.signal(signal.SIGHUP, self._sighup)

    def listening_ports(self) -> Deferred[list[Any]]:
        """
        The listening ports, once they listen (for C{tcp:0}, tests and
        logs learn the port number here).
        """
        return gatherResults(
            [listener._waitingForPort for listener in self._listeners.values()]  # type: ignore[attr-defined]
        )

    def _sighup(self, signum: int, frame: object) -> None:
        # Signal handlers run between bytecodes; do the work in the reactor.
        self._reactor.callFromThread(self.reload)

    def reload(self) -> bool:
        """
        Read the configuration file again and apply it if it is valid;
        otherwise log every problem and keep the configuration in force.

        @return: whether the new configuration was applied.
        """
        assert self._load is not None
        try:
            config = self._load()
        except ValueError as e:
            for problem in getattr(e, "problems", [str(e)]):
                self._log.error("reload failed, configuration kept: {problem}", problem=problem)
            return False
        self.apply(config)
        self._log.info("reloaded: {summary}", summary=summary(config))
        return True

    def apply(self, config: Config) -> None:
        """
        Put C{config} in force; see the module docstring.
        """
        old_router = self.resource.router
        known = {_key(s): s for pool in old_router.pools.values() for s in pool.servers}
        self.resource.router = build_router(config, self.client.clock, known)
        self.client.connect_timeout = config.connect_timeout
        self.client.read_timeout = config.read_timeout
        self.client.keepalive = config.upstream_keepalive
        self.client.idle_timeout = config.upstream_idle_timeout
        self.client.max_headers_size = config.max_upstream_headers_size
        self.resource.send_timeout = config.send_timeout
        kept = {_key(s) for pool in self.resource.router.pools.values() for s in pool.servers}
        for key, server in known.items():
            if key not in kept:
                self.client.forget_server(server)
        self.site.apply(config)
        for checker in self._checkers:
            checker.stopService()
        self._checkers = []
        self._start_checkers()
        self._apply_listeners(config.listen)
        self._reload_certificates(config)
        self.config = config

    def _reload_certificates(self, config: Config) -> None:
        """
        Read the certificates of the TLS listeners kept by a reload again
        (renewed files on disk); a listener whose files are now unusable
        keeps the certificates it had.
        """
        for description, tls in list(self._tls.items()):
            if description not in self._listeners:
                del self._tls[description]
                continue
            try:
                tls.reload(config.tls_cert_dir or None)
            except Exception as e:
                self._log.error(
                    "TLS certificates of {endpoint} not reloaded, keeping the old ones: {error}",
                    endpoint=description,
                    error=e,
                )

    def _apply_listeners(self, listen: tuple[str, ...]) -> None:
        for description in list(self._listeners):
            if description not in listen:
                self._tls.pop(description, None)
                self._log.info("no longer listening on {endpoint}", endpoint=description)
                self._listeners.pop(description).stopService()
        for description in listen:
            if description not in self._listeners:
                listener = self._listeners[description] = self._listener(description)
                if self.running:
                    try:
                        listener.startService()
                    except Exception as e:
                        self._listeners.pop(description)
                        self._log.error(
                            "cannot listen on {endpoint}: {error}", endpoint=description, error=e
                        )

    def stopService(self) -> Deferred[None]:
        """
        Stop accepting, let requests in flight finish for up to
        C{drain_timeout} seconds, then stop everything else.
        """
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
        stopping = [listener.stopService() for listener in self._listeners.values()]
        listening: Deferred[Any] = DeferredList(
            [d for d in stopping if isinstance(d, Deferred)], consumeErrors=True
        )
        listening.addCallback(lambda _: self._drain())
        listening.addCallback(lambda _: self._stop_rest())
        return listening

    def _drain(self) -> Deferred[None]:
        in_flight = self.resource.in_flight
        if in_flight:
            self._log.info(
                "stopping: waiting up to {timeout:g} s for {count} request(s) in flight",
                timeout=self.config.drain_timeout,
                count=in_flight,
            )
        drained = self.resource.drained()
        drained.addTimeout(self.config.drain_timeout, self._reactor)

        def gave_up(reason: Failure) -> None:
            reason.trap(TimeoutError)
            self._log.warn(
                "stopping: {count} request(s) still in flight after {timeout:g} s; closing them",
                count=self.resource.in_flight,
                timeout=self.config.drain_timeout,
            )
            self.resource.abort_all()

        return drained.addErrback(gave_up)

    def _stop_rest(self) -> Any:
        for checker in self._checkers:
            checker.stopService()
        # Let the last answers reach their clients before the reactor stops
        # (it would drop what is still buffered), at most 2 seconds more.
        closing = self.site.close_connections()
        closing.addTimeout(2.0, self._reactor)
        closing.addErrback(lambda reason: reason.trap(TimeoutError))
        closing.addCallback(lambda _: super(ProxyService, self).stopService())
        return closing


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


@implementer(IOpenSSLContextFactory)
class ReloadableTLS:
    """
    The context factory of an C{ssl:} listener, built from its endpoint
    description (and C{--tls-cert-dir}), that can read its files again.

    Twisted asks the listener's context factory for a context for every
    new connection, so after L{reload} new connections get the renewed
    certificates and connections in progress keep theirs.
    """

    def __init__(self, reactor: Any, description: str, cert_dir: str | None) -> None:
        self._reactor = reactor
        self._description = description
        self._factory = self._build(cert_dir)

    def _build(self, cert_dir: str | None) -> Any:
        endpoint = server_endpoint(self._reactor, self._description, cert_dir)
        return endpoint._sslContextFactory  # type: ignore[attr-defined]

    def reload(self, cert_dir: str | None) -> None:
        """
        Read the key, certificates and SNI directory again.

        @raise Exception: if they cannot be read; the old ones stay.
        """
        factory = self._build(cert_dir)
        factory.getContext()  # load now, so that a bad file fails here
        self._factory = factory

    def getContext(self) -> Any:
        """
        The context for a new connection.
        """
        return self._factory.getContext()


def summary(config: Config) -> str:
    """
    A one-line summary of a configuration: pools, servers, routes, listeners.
    """
    servers = sum(len(pool.servers) for pool in config.pools)
    return (
        f"{len(config.pools)} pool(s), {servers} server(s), {len(config.routes)} route(s), "
        f"listening on {', '.join(config.listen)}"
    )
