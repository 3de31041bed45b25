# -*- test-case-name: tests.service.test_service -*-
"""
The running proxy as a twistd service: listeners, pools, health checks,
reload on SIGHUP and a graceful stop.

L{ProxyService} owns what a configuration turns into.  On reload,
L{ProxyService.apply} puts a configuration in force, all of it or none of
it: what can fail (new listeners bound, certificates and the access log
read) is made ready first and undone if anything fails, leaving the old
configuration serving.  Then, in one go, new requests use the new routes
and pools, requests in flight finish on the pools they started with,
servers present before and after keep their health state and pooled
connections (they are the same L{Server} objects), listeners are started
and stopped to match.  On stop it stops accepting, waits for the requests
in flight up to C{drain_timeout} seconds, then lets the rest go.

The admin listener (C{--admin}, L{lbproxy.admin}) is one more listener
with a site of its own: bound with the others, replaced on reload with
them (its token is read again too), and kept open while requests drain on
stop, so that C{/healthz} can say 503 until the end.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, NoReturn

from twisted.application import strports
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    DeferredLock,
    TimeoutError,
    fail,
    gatherResults,
    succeed,
)
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python.failure import Failure

from lbproxy.admin.core import AdminCore
from lbproxy.admin.resource import AdminResource, AdminSite
from lbproxy.balancing.health import HealthChecker, agent_probe
from lbproxy.balancing.pool import Pool, Server, ServerChange
from lbproxy.balancing.registry import installed_strategies, make_balancer, unknown_strategy
from lbproxy.balancing.routes import Router
from lbproxy.config.model import Config
from lbproxy.config.options import Scope, needs_restart
from lbproxy.discovery.service import DiscoveryService
from lbproxy.errors import ConfigError
from lbproxy.http import accesslog
from lbproxy.http.accesslog import KeptSink, LineSink
from lbproxy.http.servertls import ReloadableTLS
from lbproxy.http.site import ProxySite
from lbproxy.service.listeners import (
    error_text,
    inherited_endpoint,
    listen_error,
    listener_kind,
    with_default_backlog,
)
from lbproxy.service.sighup import ignore_sighup_while_stopping
from lbproxy.service.validate import read_token_file
from lbproxy.twistedinternals import set_ssl_context_factory
from lbproxy.upstream.client import UpstreamClient
from lbproxy.upstream.tls import UpstreamTLS, upstream_tls

__all__ = [
    "ApplyError",
    "ProxyService",
    "StartError",
    "admin_token",
    "build_router",
    "summary",
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
        pool = Pool(pool_config, make_balancer(pool_config, clock), clock)
        if known:
            pool.adopt(known)
        pools[pool_config.name] = pool
    return Router(config.routes, pools)


class StartError(Exception):
    """
    lbproxy cannot start (under a daemonising twistd; see
    L{ProxyService._cannot_start}).
    """


class ApplyError(Exception):
    """
    A configuration could not be put in force; nothing changed.

    @ivar problems: one line per problem.
    """

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class ProxyService(MultiService):
    """
    lbproxy's service tree: start it to serve.

    @ivar config: the configuration in force.
    @ivar site: the client-facing site.
    @ivar client: the upstream client, kept across reloads.
    @ivar admin: the admin's state and actions (served when C{admin} is
        set; a supervisor may call it directly).
    """

    _log = Logger()

    def __init__(
        self,
        config: Config,
        reactor: Any,
        site: ProxySite,
        client: UpstreamClient,
        load: Callable[[], Config] | None = None,
        daemon: bool = False,
        open_sink: Callable[[str], LineSink | None] | None = None,
        restart_notes: bool = True,
        inherited: Mapping[str, int] | None = None,
    ) -> None:
        """
        @param config: the configuration to start with; C{site}'s resource
            already routes with it.
        @param reactor: what listens, connects and times.
        @param site: the site to listen with.
        @param client: the upstream client the site's resource sends with.
        @param load: reads the configuration anew for a reload (the
            C{--config} file, or the command line's options checked again),
            raising L{lbproxy.config.model.ConfigError} or
            L{lbproxy.config.file.ConfigFileError}; L{None}: SIGHUP is left
            alone (tests).
        @param daemon: twistd daemonises (no C{-n}): a failed start raises
            L{StartError}, not L{SystemExit}; see L{_cannot_start}.
        @param open_sink: opens where the access lines of an
            C{access-log} setting go (L{lbproxy.http.accesslog.open_sink}
            with where twistd logs), raising L{OSError}; through Twisted's
            logger if L{None}.
        @param restart_notes: log the options a reload changed that only a
            restart applies (a worker leaves that to its supervisor).
        @param inherited: in a worker process (C{--workers}), the sockets
            the supervisor bound, by listener description: the listeners
            accept on them, and a reload keeps them (a new set of
            listeners needs a restart).
        """
        super().__init__()
        self.config = config
        self.site = site
        self.client = client
        self._reactor = reactor
        self._load = load
        self._daemon = daemon
        self._listeners: dict[str, IService] = {}
        self._tls: dict[str, ReloadableTLS] = {}
        self._checkers: list[HealthChecker] = []
        self._previous_sighup: Any = None
        self._reloading = DeferredLock()
        self._listeners_bound = False
        self._open_sink = open_sink or (lambda setting: accesslog.open_sink(setting, None))
        # The sink of access-log "-", opened before privileges are dropped
        # and kept until the service stops; see _access_sink.
        self._twistd_sink: KeptSink | None = None
        # DNS sources (lbproxy.discovery): started and stopped with this
        # service, carried across reloads by _switch.
        self._discovery = DiscoveryService(reactor)
        self._discovery.attach(config, self.resource.router.pools)
        self._discovery.setServiceParent(self)
        self._watch_pools()
        self._restart_notes = restart_notes
        self._inherited = inherited
        self._start_checkers()
        for description in config.listen:
            listener, tls = self._listener(description, config.tls_cert_dir)
            self._listeners[description] = listener
            if tls is not None:
                self._tls[description] = tls
        # The admin listener: checked with the configuration before this.
        self.admin = AdminCore(self.resource, site, reactor)
        self._admin_site = AdminSite(AdminResource(self.admin, admin_token(config)))
        self._admin_endpoint = config.admin
        self._admin_listener: IService | None = None
        if config.admin:
            self._admin_listener = self._admin_service(config.admin)

    @property
    def resource(self) -> Any:
        """
        The proxy resource.
        """
        return self.site.resource

    def _listener(self, description: str, cert_dir: str) -> tuple[IService, ReloadableTLS | None]:
        """
        The service of one listener, not listening yet, and the reloadable
        certificates of an C{ssl:} one.

        @raise Exception: if the endpoint cannot be built (a string
            Twisted cannot parse, unusable certificate files).
        """
        if self._inherited is not None:
            return self._inherited_listener(description, cert_dir)
        description = with_default_backlog(description)
        service: StreamServerEndpointService = strports.service(
            description, self.site, reactor=self._reactor
        )
        endpoint = service.endpoint
        tls = None
        if isinstance(endpoint, SSL4ServerEndpoint):
            # Certificates (and the SNI directory) are read again on reload.
            tls = ReloadableTLS(self._reactor, description, cert_dir or None)
            set_ssl_context_factory(endpoint, tls)
        # Fail at once (port in use) rather than log and run deaf.
        service._raiseSynchronously = True
        return service, tls

    def _inherited_listener(
        self, description: str, cert_dir: str
    ) -> tuple[IService, ReloadableTLS | None]:
        """
        The service of a listener a worker accepts on with the socket its
        supervisor bound.
        """
        assert self._inherited is not None
        haproxy, kind = listener_kind(description)
        tls = None
        if kind == "ssl":
            inner = description.partition(":")[2] if haproxy else description
            tls = ReloadableTLS(self._reactor, inner, cert_dir or None)
        endpoint = inherited_endpoint(self._reactor, description, self._inherited[description], tls)
        service = StreamServerEndpointService(endpoint, self.site)
        service._raiseSynchronously = True
        return service, tls

    def _admin_service(self, description: str) -> IService:
        """
        The service of the admin listener, not listening yet.

        @raise Exception: if the endpoint cannot be built.
        """
        service: StreamServerEndpointService = strports.service(
            description, self._admin_site, reactor=self._reactor
        )
        service._raiseSynchronously = True
        return service

    def _start_checkers(self) -> None:
        for pool in self.resource.router.pools.values():
            settings = pool.config
            if settings.health_check:
                probe = agent_probe(
                    self._reactor,
                    settings.health_path,
                    settings.health_timeout,
                    settings.health_host or None,
                    self.client.tls,
                )
                checker = HealthChecker(pool, probe, self._reactor)
                self._checkers.append(checker)
                if self.running:
                    checker.startService()

    def _watch_pools(self) -> None:
        for pool in self.resource.router.pools.values():
            pool.add_observer(self._servers_changed)

    def _servers_changed(self, change: ServerChange) -> None:
        """
        Servers left a pool (its DNS records changed): close their idle
        connections; requests in flight to them finish.
        """
        for server in change.removed:
            self.client.forget_server(server)

    def privilegedStartService(self) -> None:
        """
        Bind the listeners: twistd calls this before it drops root
        (C{--uid}/C{--gid}), so ports below 1024 can be used.

        @raise SystemExit: with one line, if a listener cannot listen (a
            port in use); twistd then exits with status 1.  (L{StartError}
            when twistd daemonises.)
        """
        super().privilegedStartService()
        # Where "-" goes (twistd's log file) is opened now, as root: twistd
        # opened that file as root, and the user it switches to may not be
        # able to open it (see _access_sink).  An access log file of its own
        # (a path) is opened in startService instead, as that user: a file
        # created as root could not be reopened by that user on SIGHUP.
        # (No request is accepted before the reactor runs.)  Opened whatever
        # the setting: a reload may choose "-" later.
        try:
            self._open_twistd_sink()
        except OSError as e:
            if self.config.access_log == "-":
                self._cannot_start(f"cannot open access log -: {e.strerror}")
        self._bind()

    def _open_twistd_sink(self) -> None:
        """
        Open the sink of C{access-log = "-"}, unless it is open.

        @raise OSError: if it cannot be opened.
        """
        if self._twistd_sink is None:
            sink = self._open_sink("-")
            if sink is not None:
                self._twistd_sink = KeptSink(sink)

    def _access_sink(self, setting: str) -> LineSink | None:
        """
        Where the access lines of C{setting} go.

        C{-} is always the sink L{_open_twistd_sink} opened before twistd
        dropped privileges, kept across reloads (as nginx's master opens its
        log files as root and its workers inherit them): the user twistd
        switched to could not open twistd's root-owned log file again.  It
        needs no reopening: it follows twistd's own rotation, and a file
        twistd creates when it rotates is created by that user (twistd
        rotates only if that user may write the file and its directory).
        A path is opened anew, as the user lbproxy runs as, even if it is
        the same, so that logrotate can move the file away and then send
        SIGHUP.

        @raise OSError: if a file cannot be opened.
        """
        if setting == "-":
            self._open_twistd_sink()
            return self._twistd_sink
        return self._open_sink(setting)

    def _bind(self) -> None:
        if self._listeners_bound:
            return
        self._listeners_bound = True
        for description, listener in self._listeners.items():
            try:
                listener.privilegedStartService()
            except CannotListenError as e:
                # One line, not a traceback: the usual cause is a port in use.
                self._cannot_start(listen_error(description, e))
        if self._admin_listener is not None:
            try:
                self._admin_listener.privilegedStartService()
            except CannotListenError as e:
                self._cannot_start("admin: " + listen_error(self._admin_endpoint, e))

    def _cannot_start(self, problem: str) -> NoReturn:
        """
        End the start with one line (logged, and printed by twistd).

        Under C{twistd -n}, L{SystemExit} prints the line and exits with
        status 1.  A daemonising twistd reports only an L{Exception} to the
        waiting parent (through its status pipe; the parent then prints it
        and exits with status 1): on L{SystemExit} the parent waits for
        ever.
        """
        message = f"lbproxy: {problem}"
        self._log.error("{message}", message=message)
        # (from None: the cause is in the message; twistd logs the rest.)
        if self._daemon:
            raise StartError(problem) from None
        raise SystemExit(message) from None

    def startService(self) -> None:
        """
        Start health checks and listeners (binding them now if
        L{privilegedStartService} did not), and reload on SIGHUP.

        @raise SystemExit: as L{privilegedStartService}, or if the access
            log file cannot be opened.
        """
        self._bind()
        try:
            self.site.access_log.replace_sink(self._access_sink(self.config.access_log))
        except OSError as e:
            self._cannot_start(f"cannot open access log {self.config.access_log}: {e.strerror}")
        super().startService()
        for checker in self._checkers:
            checker.startService()
        for listener in self._listeners.values():
            listener.startService()  # already listening: only marks it running
        if self._admin_listener is not None:
            self._admin_listener.startService()
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

    def admin_port(self) -> Deferred[Any]:
        """
        The admin listener's port once it listens (for C{tcp:0}); fails if
        there is no admin listener.
        """
        if self._admin_listener is None:
            return fail(ValueError("no admin listener"))
        waiting = self._admin_listener._waitingForPort  # type: ignore[attr-defined]
        return gatherResults([waiting]).addCallback(lambda ports: ports[0])

    def _sighup(self, signum: int, frame: object) -> None:
        # Signal handlers run between bytecodes; do the work in the reactor.
        self._reactor.callFromThread(self.reload)

    def reload(self) -> Deferred[bool]:
        """
        Read the configuration file again and apply it if it is valid and
        can be put in force as a whole; otherwise log every problem, one
        line each, and keep the configuration in force.  Reloads run one
        at a time, in order.

        @return: fires with whether the new configuration was applied
            (at once, unless a listener binds asynchronously); never fails.
        """
        return self._reloading.run(self._reload)

    def _reload(self) -> Deferred[bool]:
        assert self._load is not None
        try:
            config = self._load()
        except ValueError as e:
            self._refused(getattr(e, "problems", [str(e)]))
            return succeed(False)
        if self._inherited is not None:
            # The supervisor owns the sockets and the admin listener (this
            # worker's admin is its private one; see lbproxy.admin.gather).
            config = replace(
                config,
                listen=self.config.listen,
                admin=self.config.admin,
                admin_token=self.config.admin_token,
                admin_token_file=self.config.admin_token_file,
            )

        restart = needs_restart(self.config, config, Scope.GLOBAL) if self._restart_notes else []

        def applied(_: None) -> bool:
            self._log.info("reloaded: {summary}", summary=summary(config))
            for name in restart:
                self._log.warn("{name} changed: restart to apply", name=name)
            return True

        def refused(reason: Failure) -> bool:
            reason.trap(ApplyError)
            assert isinstance(reason.value, ApplyError)
            self._refused(reason.value.problems)
            return False

        return self.apply(config).addCallbacks(applied, refused)

    def _refused(self, problems: list[str]) -> None:
        for problem in problems:
            self._log.error("reload failed, configuration kept: {problem}", problem=problem)

    def apply(self, config: Config) -> Deferred[None]:
        """
        Put C{config} in force, all of it or none of it.

        First everything that can fail is made ready without changing what
        serves: new listeners are built and bound (nginx binds new sockets
        before old workers stop, too), the certificates of kept TLS
        listeners and the access log are read and opened.  If anything
        fails, what was started is stopped and nothing changes.  Then the
        routes, pools, client settings, health checks, listeners and
        certificates are switched in one go; see the module docstring.

        @return: fires when C{config} is in force, or fails with
            L{ApplyError} listing every problem when nothing changed.
        """
        problems: list[str] = []
        # Pools are built in _switch, which may not fail: a strategy name
        # check_config did not see (a configuration made by a program) is
        # refused here.
        problems += [
            f"upstream.{pool.name}.balance: {unknown_strategy(pool.balance)}"
            for pool in config.pools
            if pool.balance not in installed_strategies()
        ]
        added: dict[str, tuple[IService, ReloadableTLS | None]] = {}
        binding: list[Deferred[Any]] = []
        for description in config.listen:
            if description in self._listeners or description in added:
                continue
            try:
                listener, tls = self._listener(description, config.tls_cert_dir)
                if self.running:
                    listener.privilegedStartService()
                    binding.append(self._bound(description, listener))
            except Exception as e:
                problems.append(listen_error(description, e))
                continue
            added[description] = (listener, tls)
        certificates = {}
        for description, tls in self._tls.items():
            if description in config.listen:
                try:
                    certificates[description] = tls.prepare(config.tls_cert_dir or None)
                except Exception as e:
                    problems.append(f"TLS certificates of {description}: {error_text(e)}")
        upstream = self.client.tls
        try:
            # Read again even if the file names are the same (renewed
            # files); kept if nothing changed, so that pooled connections
            # to https servers are kept too.
            new = upstream_tls(config, warn=False)
            if upstream is None or new.source != upstream.source:
                upstream = new
        except ConfigError as e:
            problems.append(str(e))
        log_file: LineSink | None = None
        try:
            # A path is opened anew (for logrotate), "-" kept: _access_sink.
            log_file = self._access_sink(config.access_log)
        except OSError as e:
            problems.append(f"access log {config.access_log!r}: {e.strerror}")
        # The admin listener: a new one bound if its endpoint changed, its
        # token (file) read again.
        admin_listener: IService | None = None
        token = ""
        try:
            token = admin_token(config)
        except ConfigError as e:
            problems.append(f"admin-token-file: {e}")
        if config.admin and config.admin != self._admin_endpoint:
            try:
                admin_listener = self._admin_service(config.admin)
                if self.running:
                    admin_listener.privilegedStartService()
                    binding.append(self._bound(config.admin, admin_listener))
            except Exception as e:
                problems.append("admin: " + listen_error(config.admin, e))
                admin_listener = None

        def bound(results: list[tuple[bool, Any]]) -> Deferred[None]:
            problems.extend(str(result.value) for ok, result in results if not ok)
            if not problems:
                self._switch(config, added, certificates, upstream, log_file)
                self._switch_admin(config, admin_listener, token)
                return succeed(None)
            if log_file is not None:
                log_file.close()
            unused = [listener for listener, _ in added.values()]
            if admin_listener is not None:
                unused.append(admin_listener)
            stopping = [listener.stopService() for listener in unused if listener.running]
            # Stopped (their ports closed) before the reload reports.
            done: Deferred[Any] = DeferredList(
                [d for d in stopping if isinstance(d, Deferred)], consumeErrors=True
            )
            return done.addCallback(lambda _: fail(ApplyError(problems)))

        return DeferredList(binding, consumeErrors=True).addCallback(bound)

    def _bound(self, description: str, listener: IService) -> Deferred[Any]:
        """
        Fires when C{listener} (started) listens, or fails with the reason
        it cannot; it is running either way, so that it can be stopped.
        """
        listener.startService()
        waiting: Deferred[Any] = Deferred()

        def listening(port: Any) -> Any:
            # StreamServerEndpointService logs an asynchronous failure
            # itself and then has no port.
            if port is None:
                waiting.errback(Exception(f"cannot listen on {description}"))
            else:
                waiting.callback(port)
            return port

        listener._waitingForPort.addBoth(listening)  # type: ignore[attr-defined]
        return waiting

    def _switch(
        self,
        config: Config,
        added: Mapping[str, tuple[IService, ReloadableTLS | None]],
        certificates: Mapping[str, Any],
        upstream: UpstreamTLS | None,
        log_file: Any,
    ) -> None:
        """
        Put C{config} in force with the pieces L{apply} made ready; nothing
        here may fail.
        """
        old_router = self.resource.router
        known = {_key(s): s for pool in old_router.pools.values() for s in pool.servers}
        # Built here, not made ready before: adopting a kept server updates
        # its weight and backup flag.
        self.resource.router = build_router(config, self.client.clock, known)
        self._discovery.attach(config, self.resource.router.pools, known)
        self._watch_pools()
        if upstream is not None and upstream is not self.client.tls:
            upstream.warn_if_insecure()
        self.client.reconfigure(
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
            keepalive=config.upstream_keepalive,
            idle_timeout=config.upstream_idle_timeout,
            tls=upstream,
        )
        self.client.max_headers_size = config.max_upstream_headers_size
        self.resource.send_timeout = config.send_timeout
        # New tunnels only: open ones (connections) keep theirs.
        self.resource.tunnel_timeout = config.tunnel_timeout
        kept = {_key(s) for pool in self.resource.router.pools.values() for s in pool.servers}
        for key, server in known.items():
            if key not in kept:
                self.client.forget_server(server)
        self.site.apply(config)
        self.site.access_log.replace_sink(log_file)
        for checker in self._checkers:
            checker.stopService()
        self._checkers = []
        self._start_checkers()
        for description in list(self._listeners):
            if description not in config.listen:
                self._tls.pop(description, None)
                self._log.info("no longer listening on {endpoint}", endpoint=description)
                self._listeners.pop(description).stopService()
        for description, (listener, tls) in added.items():
            self._listeners[description] = listener
            if tls is not None:
                self._tls[description] = tls
        for description, factory in certificates.items():
            self._tls[description].use(factory)
        self.config = config

    def _switch_admin(self, config: Config, listener: IService | None, token: str) -> None:
        """
        Put the admin part of C{config} in force: the token at once, and
        the listener L{apply} bound in place of the old one (or none).
        """
        self._admin_site.resource.token = token
        if config.admin == self._admin_endpoint:
            return
        if self._admin_listener is not None:
            self._log.info("admin no longer listening on {endpoint}", endpoint=self._admin_endpoint)
            self._admin_listener.stopService()
        self._admin_listener, self._admin_endpoint = listener, config.admin

    def stopService(self) -> Deferred[None]:
        """
        Stop accepting, let requests in flight finish for up to
        C{drain_timeout} seconds, then stop everything else.  If the start
        failed (or never came), only the ports already bound are closed.
        The admin listener stays open until the drain ends, its readiness
        probe failing.
        """
        self.admin.stopping = True
        restore_sighup = ignore_sighup_while_stopping(self._reactor, self._previous_sighup)
        self._previous_sighup = None
        listeners = list(self._listeners.values())
        if not self.running and self._admin_listener is not None:
            listeners.append(self._admin_listener)
        stopping = [
            listener.stopService()
            for listener in listeners
            if listener._waitingForPort is not None  # type: ignore[attr-defined]
        ]
        listening: Deferred[Any] = DeferredList(
            [d for d in stopping if isinstance(d, Deferred)], consumeErrors=True
        )
        if not self.running:
            self._release_twistd_sink()
            return listening.addCallback(lambda _: restore_sighup())
        listening.addCallback(lambda _: self._drain())
        listening.addCallback(lambda _: self._stop_rest())
        return listening.addBoth(restore_sighup)

    def _drain(self) -> Deferred[None]:
        in_flight = self.resource.in_flight
        if in_flight:
            self._log.info(
                "stopping: waiting up to {timeout:g} s for {count} request(s) in flight",
                timeout=self.config.drain_timeout,
                count=in_flight,
            )
        drained: Deferred[None] = self.resource.drained()
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
        admin_closed: Any = None
        if self._admin_listener is not None:
            admin_closed = self._admin_listener.stopService()
        # Let the last answers reach their clients before the reactor stops
        # (it would drop what is still buffered), at most 2 seconds more.
        closing = self.site.close_connections()
        closing.addTimeout(2.0, self._reactor)
        closing.addErrback(lambda reason: reason.trap(TimeoutError))
        closing.addCallback(lambda _: admin_closed)
        closing.addCallback(lambda _: self.site.access_log.close())
        closing.addCallback(lambda _: self._release_twistd_sink())
        closing.addCallback(lambda _: super(ProxyService, self).stopService())
        return closing

    def _release_twistd_sink(self) -> None:
        sink, self._twistd_sink = self._twistd_sink, None
        if sink is not None:
            sink.release()


def admin_token(config: Config) -> str:
    """
    The admin token of C{config}: C{admin-token}, or what
    C{admin-token-file} holds (read now); empty for none.

    @raise ConfigError: if the file cannot be read or holds no token.
    """
    if config.admin_token_file:
        return read_token_file(config.admin_token_file)
    return config.admin_token


def summary(config: Config) -> str:
    """
    A one-line summary of a configuration: pools, servers, routes,
    listeners (the admin's too).
    """
    servers = sum(len(pool.servers) for pool in config.pools)
    names = sum(len(pool.sources) for pool in config.pools)
    dns = f", {names} DNS name(s)" if names else ""
    line = (
        f"{len(config.pools)} pool(s), {servers} server(s){dns}, {len(config.routes)} route(s), "
        f"listening on {', '.join(config.listen)}"
    )
    if config.admin:
        line += f", admin on {config.admin}"
    return line
