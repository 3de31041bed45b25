# -*- test-case-name: tests.service.test_workers -*-
"""
C{--workers N}: a supervisor process and N worker processes that serve
the same listening sockets, as nginx's master and workers.

The supervisor (the twistd process, whose pid is in the pidfile) binds
every listener before twistd drops root (L{bind_shared}), then starts the
workers as the user twistd switched to.  Each worker is a fresh Python
process (C{python -m lbproxy.worker}) that inherits the listening sockets
as file descriptors, reads its L{WorkerSetup} from its standard input and
runs a whole L{lbproxy.service.service.ProxyService} of its own: its own
connections, upstream pools and health checks.  The supervisor accepts no
connection itself.

  - SIGHUP: the supervisor reads the configuration file; if it is valid it
    sends SIGHUP to every worker (each reloads as a single process does),
    otherwise it logs the problems once and the workers keep theirs.
  - SIGTERM (or SIGINT): SIGTERM to every worker, which drains as a single
    process does; the supervisor waits for all of them (and kills any
    still there C{drain_timeout} + 5 seconds later), then closes the
    sockets and exits.
  - A worker that exits otherwise is logged and started again: at once if
    it had run for 10 seconds, else after a delay that doubles from 1 s to
    30 s (L{restart_delay}), so that one dying at start does not spin.
  - A worker stops by itself when its standard input (a pipe from the
    supervisor) closes: the supervisor is gone, even by SIGKILL.

With C{--admin}, the supervisor binds the admin listener too and serves
it (L{lbproxy.admin.gather}): each worker serves its own admin on a unix
socket in a directory of the supervisor's (made at start, mode 0700,
removed on stop), which the supervisor asks for snapshots and sends
actions to; the page, the JSON and C{/metrics} are the workers' combined.

What a worker logs reaches the supervisor's log through a pipe (its
standard error), each line prefixed with C{worker N:}; access lines do
not: each worker appends them to the access log (or twistd's log file, or
standard output) itself, in batches.  twistd's log file (C{access-log =
"-"}) is opened by the supervisor before twistd drops root, as twistd
opened it, and the workers inherit the descriptor (as nginx's workers do
their master's log files): the user they run as may not open that file.
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import struct
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, NoReturn

from twisted.application import strports
from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.internet.error import CannotListenError, ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import InvalidLogLevelError, Logger, LogLevel
from twisted.python.failure import Failure

import lbproxy
from lbproxy.admin.gather import WorkerAdmin, WorkersCore
from lbproxy.admin.resource import AdminSite, WorkersAdminResource
from lbproxy.config.model import Config
from lbproxy.config.options import Scope, needs_restart
from lbproxy.http.accesslog import TwistdLog, open_sink
from lbproxy.service.listeners import bind_shared, listen_error
from lbproxy.service.service import StartError, admin_token
from lbproxy.service.sighup import ignore_sighup_while_stopping

__all__ = [
    "READY",
    "WorkerSetup",
    "WorkerSupervisor",
    "read_setup",
    "restart_delay",
]

#: A worker that ran this long before it exited is started again at once.
STABLE_SECONDS = 10.0
#: The first and the longest delay before starting a worker that died young.
FIRST_DELAY = 1.0
LONGEST_DELAY = 30.0
#: Seconds a stopping worker has beyond C{drain_timeout} before SIGKILL.
KILL_GRACE = 5.0

#: The line a worker writes once it serves (and handles SIGHUP).
READY = "lbproxy-worker-ready"

_LENGTH = struct.Struct(">Q")


def restart_delay(previous: float, lived: float) -> float:
    """
    Seconds to wait before starting again a worker that exited.

    @param previous: the delay before its last start (0 for the first).
    @param lived: seconds it ran.
    @return: 0 if it ran L{STABLE_SECONDS}; otherwise twice C{previous},
        from L{FIRST_DELAY} up to L{LONGEST_DELAY}.
    """
    if lived >= STABLE_SECONDS:
        return 0.0
    return min(max(previous * 2, FIRST_DELAY), LONGEST_DELAY)


@dataclass(frozen=True, slots=True)
class WorkerSetup:
    """
    What a worker process needs to serve, sent on its standard input.

    @ivar index: which worker it is (1 to N), for its log lines.
    @ivar config: the configuration to serve (the supervisor's latest).
    @ivar config_path: the file a SIGHUP re-reads, if any.
    @ivar sockets: the inherited listening sockets, by listener.
    @ivar twistd_log: where twistd logs, for C{access-log = "-"}.
    """

    index: int
    config: Config
    config_path: str | None
    sockets: dict[str, int]
    twistd_log: TwistdLog | None

    def encode(self) -> bytes:
        """
        Length-prefixed pickle: the pipe from parent to child is trusted,
        and the model's frozen dataclasses pickle as they are.
        """
        data = pickle.dumps(self)
        return _LENGTH.pack(len(data)) + data


def read_setup(fd: int) -> WorkerSetup:
    """
    Read a L{WorkerSetup} (L{WorkerSetup.encode}) from C{fd}, blocking.

    @raise EOFError: if the pipe closes first.
    """

    def exactly(count: int) -> bytes:
        chunks = []
        while count:
            chunk = os.read(fd, count)
            if not chunk:
                raise EOFError("the supervisor closed the pipe")
            chunks.append(chunk)
            count -= len(chunk)
        return b"".join(chunks)

    (length,) = _LENGTH.unpack(exactly(_LENGTH.size))
    setup = pickle.loads(exactly(length))
    assert isinstance(setup, WorkerSetup)
    return setup


def _how_it_ended(reason: Failure) -> str:
    status = reason.value
    signal_number = getattr(status, "signal", None)
    if signal_number is not None:
        return f"was killed by {signal.Signals(signal_number).name}"
    return f"exited with status {getattr(status, 'exitCode', None)}"


class _Worker(ProcessProtocol):
    """
    One worker process, seen from the supervisor.
    """

    def __init__(self, supervisor: WorkerSupervisor, index: int, started: float) -> None:
        self.supervisor = supervisor
        self.index = index
        self.started = started
        self.ready = False
        self.reload_pending = False
        self.pid: int | None = None
        self._partial = b""

    def errReceived(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self.supervisor.worker_said(self, line.decode("utf-8", "replace"))

    def signal(self, name: str) -> None:
        """
        Send signal C{name} (C{"HUP"}, C{"TERM"}, C{"KILL"}), unless it has
        exited already.
        """
        try:
            self.transport.signalProcess(name)  # type: ignore[union-attr]
        except ProcessExitedAlready:
            pass

    def processEnded(self, reason: Failure) -> None:
        if self._partial:
            self.supervisor.worker_said(self, self._partial.decode("utf-8", "replace"))
            self._partial = b""
        self.supervisor.worker_ended(self, reason)


class WorkerSupervisor(MultiService):
    """
    The twistd process's service under C{--workers} above 1: binds the
    listeners and keeps N workers serving them; see the module docstring.

    @ivar config: the configuration the next worker started gets.
    @ivar workers: the running workers, by index.
    """

    _log = Logger()

    def __init__(
        self,
        config: Config,
        reactor: Any,
        load: Callable[[], Config] | None = None,
        config_path: str | None = None,
        daemon: bool = False,
        twistd_log: TwistdLog | None = None,
        command: list[str] | None = None,
    ) -> None:
        """
        @param config: the configuration to start with (demo servers
            already listening and in it).
        @param reactor: binds, spawns and times.
        @param load: reads and checks the configuration file anew on
            SIGHUP (raising L{ValueError} with C{problems}); L{None}
            without C{--config}.
        @param config_path: that file, for the workers to re-read.
        @param daemon: twistd daemonises: a failed start raises
            L{StartError}, not L{SystemExit} (see L{ProxyService}).
        @param twistd_log: where twistd logs, for C{access-log = "-"}.
        @param command: the worker's command line; C{python -m
            lbproxy.worker} with this interpreter by default.
        """
        super().__init__()  # type: ignore[no-untyped-call]
        self.config = config
        self.workers: dict[int, _Worker] = {}
        self._reactor = reactor
        self._load = load
        self._config_path = config_path
        self._daemon = daemon
        self._twistd_log = twistd_log
        self._command = command or [sys.executable, "-m", "lbproxy.worker"]
        self._ports: dict[str, IListeningPort] = {}
        self._bound = False
        self._stopping = False
        self._delays: dict[int, float] = {}
        self._restarts: dict[int, IDelayedCall] = {}
        self._all_ended: Deferred[None] | None = None
        self._previous_sighup: Any = None
        # The admin listener (--admin): the workers' private admins live in
        # _admin_dir, made in startService, as the user the workers run as.
        self.admin = WorkersCore(reactor, self._worker_admins)
        self._admin_resource = WorkersAdminResource(self.admin, admin_token(config))
        self._admin_listener: IService | None = None
        self._admin_dir: str | None = None
        if config.admin:
            site = AdminSite(self._admin_resource)  # type: ignore[no-untyped-call]
            listener = strports.service(config.admin, site, reactor=reactor)
            listener._raiseSynchronously = True
            self._admin_listener = listener

    # Starting.

    def privilegedStartService(self) -> None:
        """
        Bind the listeners, before twistd drops root.

        @raise SystemExit: with one line if one cannot listen
            (L{StartError} when twistd daemonises).
        """
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        # twistd opened its log file as root: the workers, run as the user
        # twistd switches to, may not open it themselves.  Opened here, as
        # root, and inherited by them, as the listening sockets are (nginx's
        # workers inherit their master's log files so), rather than access
        # lines sent through a pipe to this process: that would cost a copy
        # of each line and this process's time, which serves nothing and
        # must stay quick to handle signals.  Opened whatever the setting:
        # a reload may choose "-" later.
        if self._twistd_log is not None:
            try:
                self._twistd_log = self._twistd_log.opened()
            except OSError as e:
                if self.config.access_log == "-":
                    self._cannot_start(f"cannot open access log -: {e.strerror}")
        self._bind()

    def _bind(self) -> None:
        if self._bound:
            return
        self._bound = True
        for description in self.config.listen:
            try:
                self._ports[description] = bind_shared(self._reactor, description)
            except CannotListenError as e:
                self._close_ports()
                self._cannot_start(listen_error(description, e))
        if self._admin_listener is not None:
            try:
                self._admin_listener.privilegedStartService()
            except CannotListenError as e:
                self._close_ports()
                self._cannot_start("admin: " + listen_error(self.config.admin, e))

    def _cannot_start(self, problem: str) -> NoReturn:
        message = f"lbproxy: {problem}"
        self._log.error("{message}", message=message)
        if self._daemon:
            raise StartError(problem) from None
        raise SystemExit(message) from None

    def startService(self) -> None:
        """
        Start the workers (as the user twistd switched to), and forward
        SIGHUP to them.

        @raise SystemExit: as L{privilegedStartService}, or if the access
            log cannot be opened (every worker would die at start).
        """
        self._bind()
        try:
            sink = open_sink(self.config.access_log, self._twistd_log)
        except OSError as e:
            self._close_ports()
            self._cannot_start(f"cannot open access log {self.config.access_log}: {e.strerror}")
        else:
            if sink is not None:
                sink.close()
        super().startService()  # type: ignore[no-untyped-call]
        if self._admin_listener is not None:
            self._admin_dir = tempfile.mkdtemp(prefix="lbproxy-admin-")
            self._admin_listener.startService()
        self._log.info(
            "starting {count} workers on {listeners}",
            count=self.config.workers,
            listeners=", ".join(self.config.listen),
        )
        for index in range(1, self.config.workers + 1):
            try:
                self._spawn(index)
            except OSError as e:
                # (Those started stop when this process exits: their
                # standard input closes.)
                self._close_ports()
                self._cannot_start(f"cannot start worker {index}: {self._command[0]}: {e.strerror}")
        # Even without a file to reload: SIGHUP would end this process and
        # leave the pidfile behind.
        self._previous_sighup = signal.signal(signal.SIGHUP, self._sighup)

    def _admin_path(self, index: int) -> str:
        """
        The unix socket of worker C{index}'s private admin.
        """
        assert self._admin_dir is not None
        return os.path.join(self._admin_dir, f"worker-{index}.sock")

    def _worker_config(self, index: int) -> Config:
        """
        The configuration worker C{index} gets: the supervisor's, its admin
        on its private socket, without a token (none but this user can
        reach it).
        """
        if self._admin_dir is None:
            return self.config
        # (A socket file left by a worker that was killed does not stop its
        # replacement: Twisted's unix: endpoint removes it, its lock file
        # naming a process that is gone.)
        path = self._admin_path(index)
        return replace(self.config, admin=f"unix:{path}", admin_token="", admin_token_file="")

    def _worker_admins(self) -> dict[int, WorkerAdmin]:
        """
        Every worker's private admin and whether it can be asked now, by
        index (for L{WorkersCore}).
        """
        if self._admin_dir is None:
            return {}
        admins = {}
        for index in range(1, self.config.workers + 1):
            worker = self.workers.get(index)
            if worker is None:
                status = "stopped" if self._stopping else "restarting"
            else:
                status = "ready" if worker.ready else "starting"
            admins[index] = WorkerAdmin(self._admin_path(index), status)
        return admins

    def admin_port(self) -> Deferred[Any]:
        """
        The admin listener's port once it listens (for C{tcp:0}).
        """
        assert self._admin_listener is not None
        waiting = self._admin_listener._waitingForPort  # type: ignore[attr-defined]
        # (Through gatherResults: a callback on the service's own Deferred
        # would take the port it needs to stop listening.)
        return gatherResults([waiting]).addCallback(lambda ports: ports[0])

    def _spawn(self, index: int) -> None:
        self._restarts.pop(index, None)
        worker = _Worker(self, index, self._reactor.seconds())
        setup = WorkerSetup(
            index,
            self._worker_config(index),
            self._config_path,
            {d: port.fileno() for d, port in self._ports.items()},  # type: ignore[attr-defined]
            self._twistd_log,
        )
        # Standard input: the setup, then open until the supervisor goes;
        # standard output shared (access-log "-" under twistd -n); standard
        # error: the worker's log lines; the listening sockets and twistd's
        # log file (opened before privileges were dropped) as they are.
        fds: dict[int, Any] = {0: "w", 1: 1, 2: "r"}
        fds.update({fd: fd for fd in setup.sockets.values()})
        if self._twistd_log is not None and self._twistd_log.fd is not None:
            fds[self._twistd_log.fd] = self._twistd_log.fd
        env = dict(os.environ)
        # The worker imports lbproxy from where this process did, whatever
        # directory twistd runs in.
        root = os.path.dirname(os.path.dirname(os.path.abspath(lbproxy.__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        transport = self._reactor.spawnProcess(
            worker, self._command[0], self._command, env, childFDs=fds
        )
        worker.pid = transport.pid
        transport.write(setup.encode())
        self.workers[index] = worker
        self._log.info("worker {index} started (pid {pid})", index=index, pid=worker.pid)

    # What workers say and do.

    def worker_said(self, worker: _Worker, line: str) -> None:
        """
        Log a line of a worker's log (C{LEVEL text}, or anything it wrote
        to its standard error) in this process's log.
        """
        if line == READY:
            worker.ready = True
            self._log.info("worker {index} ready", index=worker.index, pid=worker.pid)
            if worker.reload_pending:
                worker.reload_pending = False
                worker.signal("HUP")
            if self._admin_dir is not None:
                self.admin.worker_ready(worker.index, self._admin_path(worker.index))
            return
        name, _, text = line.partition(" ")
        try:
            level = LogLevel.levelWithName(name)
        except InvalidLogLevelError:
            level, text = LogLevel.error, line
        self._log.emit(
            level, "worker {index}: {line}", index=worker.index, line=text, pid=worker.pid
        )

    def worker_ended(self, worker: _Worker, reason: Failure) -> None:
        """
        Log how a worker ended; start it again unless stopping.
        """
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        how = _how_it_ended(reason)
        if self._stopping:
            self._log.info(
                "worker {index} (pid {pid}) stopped: {how}",
                index=worker.index,
                pid=worker.pid,
                how=how,
            )
            if not self.workers and self._all_ended is not None:
                self._all_ended.callback(None)
            return
        lived = self._reactor.seconds() - worker.started
        delay = restart_delay(self._delays.get(worker.index, 0.0), lived)
        self._delays[worker.index] = delay
        self._log.warn(
            "worker {index} (pid {pid}) {how} after {lived:.1f} s; "
            "starting it again in {delay:g} s",
            index=worker.index,
            pid=worker.pid,
            how=how,
            lived=lived,
            delay=delay,
        )
        self._restarts[worker.index] = self._reactor.callLater(delay, self._restart, worker.index)

    def _restart(self, index: int) -> None:
        try:
            self._spawn(index)
        except OSError as e:
            delay = restart_delay(self._delays.get(index, 0.0), 0.0)
            self._delays[index] = delay
            self._log.error(
                "cannot start worker {index}: {command}: {error}; trying again in {delay:g} s",
                index=index,
                command=self._command[0],
                error=e.strerror,
                delay=delay,
            )
            self._restarts[index] = self._reactor.callLater(delay, self._restart, index)

    # Reloading.

    def _sighup(self, signum: int, frame: object) -> None:
        # Signal handlers run between bytecodes; do the work in the reactor.
        self._reactor.callFromThread(self.reload)

    def reload(self) -> bool:
        """
        Check the configuration file; if it is valid, have every worker
        reload it (SIGHUP), else log why, once, and leave them be.

        @return: whether the workers were told to reload.
        """
        if self._load is None:
            self._log.info("SIGHUP: no configuration file (--config) to reload")
            return False
        try:
            config = self._load()
        except ValueError as e:
            for problem in getattr(e, "problems", [str(e)]):
                self._log.error("reload failed, configuration kept: {problem}", problem=problem)
            return False
        changed = needs_restart(self.config, config, Scope.GLOBAL)
        if config.listen != self.config.listen:
            # The sockets were bound at start, before twistd dropped root.
            changed.append("listen")
        if config.admin != self.config.admin:
            changed.append("admin")
        try:
            self._admin_resource.token = admin_token(config)
        except ValueError as e:
            self._log.error("reload: admin token kept: {error}", error=e)
        for name in changed:
            self._log.warn("{name} changed: restart to apply", name=name)
        self.config = replace(
            config, workers=self.config.workers, listen=self.config.listen, admin=self.config.admin
        )
        self._log.info("reloading {count} workers (SIGHUP)", count=len(self.workers))
        for worker in self.workers.values():
            if worker.ready:
                worker.signal("HUP")
            else:
                # Not yet handling SIGHUP (which would end it): once ready.
                worker.reload_pending = True
        return True

    # Stopping.

    def stopService(self) -> Deferred[None]:
        """
        Stop every worker (SIGTERM: they drain), wait for them all, then
        close the listening sockets.
        """
        restore_sighup = ignore_sighup_while_stopping(self._reactor, self._previous_sighup)
        self._previous_sighup = None
        self._stopping = True
        self.admin.stopping = True
        for call in self._restarts.values():
            call.cancel()
        self._restarts.clear()
        super().stopService()  # type: ignore[no-untyped-call]
        if not self.workers:
            return self._close_ports().addCallback(lambda _: restore_sighup())
        self._log.info("stopping {count} workers (SIGTERM)", count=len(self.workers))
        ended: Deferred[None] = Deferred()
        self._all_ended = ended
        for worker in self.workers.values():
            worker.signal("TERM")
        kill = self._reactor.callLater(self.config.drain_timeout + KILL_GRACE, self._kill_all)

        def done(result: None) -> Deferred[Any]:
            if kill.active():
                kill.cancel()
            return self._close_ports()

        return ended.addCallback(done).addBoth(restore_sighup)

    def _kill_all(self) -> None:
        for worker in self.workers.values():
            self._log.warn(
                "worker {index} (pid {pid}) still running: killing it",
                index=worker.index,
                pid=worker.pid,
            )
            worker.signal("KILL")

    def _close_ports(self) -> Deferred[Any]:
        # (And twistd's log file, which the workers inherit with them.)
        log = self._twistd_log
        if log is not None and log.fd is not None:
            os.close(log.fd)
            self._twistd_log = replace(log, fd=None)
        ports, self._ports = self._ports, {}
        closing = [d for p in ports.values() if (d := p.stopListening()) is not None]
        # The admin listener answers (503 on /healthz) until the workers end.
        if self._admin_listener is not None and self._admin_listener.running:
            closing.append(self._admin_listener.stopService())
        if self._admin_dir is not None:
            shutil.rmtree(self._admin_dir, ignore_errors=True)
            self._admin_dir = None
        return DeferredList(closing)
