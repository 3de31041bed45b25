"""
Tests for L{lbproxy.service.workers} and L{lbproxy.worker}: C{--workers N},
a supervisor and worker processes sharing the listening sockets.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from dataclasses import replace
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.error import (
    ProcessDone,
    ProcessExitedAlready,
    ProcessTerminated,
    ReactorNotRunning,
)
from twisted.internet.main import CONNECTION_DONE
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, readBody
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from lbproxy.config.file import load_config
from lbproxy.config.model import Config, PoolConfig, ServerConfig
from lbproxy.http.accesslog import TwistdLog, open_sink
from lbproxy.service.listeners import bind_shared, inherited_endpoint, listener_kind
from lbproxy.service.validate import check_config
from lbproxy.service.workers import (
    READY,
    WorkerSetup,
    WorkerSupervisor,
    read_setup,
    restart_delay,
)
from lbproxy.tap import Options, make_proxy_service, makeService
from lbproxy.worker import _SupervisorWatch, stderr_observer, take_signals
from tests.admin.test_resource import admin_request
from tests.service.test_service import _toml
from tests.support import get, start_app


def _config(**settings: Any) -> Config:
    pool = PoolConfig("web", (ServerConfig("127.0.0.1", 3000),))
    defaults: dict[str, Any] = {
        "pools": (pool,),
        "listen": ("tcp:0:interface=127.0.0.1",),
        "access_log": "off",
        "workers": 2,
    }
    return Config(**{**defaults, **settings})


class RestartDelayTests(SynchronousTestCase):
    """
    L{restart_delay}: a worker that dies young waits longer each time.
    """

    def test_doubles(self) -> None:
        """
        A worker that died within 10 s waits 1 s, then twice as long each
        time, up to 30 s.
        """
        delays = []
        delay = 0.0
        for _ in range(7):
            delay = restart_delay(delay, 0.5)
            delays.append(delay)
        self.assertEqual(delays, [1, 2, 4, 8, 16, 30, 30])

    def test_stable(self) -> None:
        """
        A worker that ran 10 s or more is started again at once, whatever
        the delay before.
        """
        self.assertEqual(restart_delay(16.0, 10.0), 0.0)
        self.assertEqual(restart_delay(0.0, 9.9), 1.0)


class SetupTests(SynchronousTestCase):
    """
    L{WorkerSetup} goes through a pipe whole.
    """

    def test_round_trip(self) -> None:
        """
        What L{WorkerSetup.encode} writes, L{read_setup} reads back, even
        in pieces.
        """
        setup = WorkerSetup(2, _config(), "/etc/lb.toml", {"tcp:80": 7}, TwistdLog(stdout=True))
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        data = setup.encode()
        os.write(write, data[:5])
        os.write(write, data[5:])
        os.close(write)
        self.assertEqual(read_setup(read), setup)

    def test_closed(self) -> None:
        """
        A pipe closed before the whole setup is an L{EOFError}.
        """
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        os.write(write, WorkerSetup(1, _config(), None, {}, None).encode()[:20])
        os.close(write)
        self.assertRaises(EOFError, read_setup, read)


class StderrObserverTests(SynchronousTestCase):
    """
    A worker logs C{LEVEL text} lines for its supervisor.
    """

    def test_lines(self) -> None:
        """
        Each line of an event is prefixed with its level.
        """
        stream = io.StringIO()
        stderr_observer(stream)(
            {"log_level": LogLevel.warn, "log_format": "a {x}\nb", "x": 1, "log_time": 0}
        )
        self.assertEqual(stream.getvalue(), "warn a 1\nwarn b\n")


class _StoppingReactor:
    """
    A reactor's C{stop} as Twisted's: a second call raises.
    """

    running = True

    def __init__(self) -> None:
        self.stops = 0
        self.calls: list[tuple[Any, tuple[Any, ...]]] = []

    def stop(self) -> None:
        if self.stops:
            raise ReactorNotRunning()
        self.stops += 1

    def callFromThread(self, f: Any, *args: Any) -> None:
        self.calls.append((f, args))


class WorkerStopTests(SynchronousTestCase):
    """
    A worker stops once, whatever asks it to stop again meanwhile.
    """

    def test_supervisor_gone_while_stopping(self) -> None:
        """
        The supervisor's pipe closing while the worker stops already (its
        SIGTERM) does not stop the reactor again.
        """
        reactor = _StoppingReactor()
        reactor.stop()
        _SupervisorWatch(reactor).connectionLost(Failure(CONNECTION_DONE))
        self.assertEqual(reactor.stops, 1)

    def test_signals(self) -> None:
        """
        Once running, a worker ignores SIGINT (its supervisor handles it)
        and a second SIGTERM does not stop the reactor again.
        """
        for number in (signal.SIGINT, signal.SIGTERM):
            self.addCleanup(signal.signal, number, signal.getsignal(number))
        reactor = _StoppingReactor()
        take_signals(reactor)
        self.assertEqual(signal.getsignal(signal.SIGINT), signal.SIG_IGN)
        handler = signal.getsignal(signal.SIGTERM)
        assert callable(handler)
        handler(signal.SIGTERM, None)
        handler(signal.SIGTERM, None)
        for f, args in reactor.calls:
            f(*args)
        self.assertEqual(reactor.stops, 1)


class _Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class SharedListenerTests(TestCase):
    """
    L{bind_shared} binds a socket nobody accepts on in this process;
    L{inherited_endpoint} serves it.
    """

    def test_kind(self) -> None:
        """
        L{listener_kind} sees through C{haproxy:}.
        """
        self.assertEqual(listener_kind("tcp:80"), (False, "tcp"))
        self.assertEqual(listener_kind("haproxy:ssl:443:privateKey=k"), (True, "ssl"))

    @inlineCallbacks
    def test_adopt(self) -> None:
        """
        A socket bound by L{bind_shared} accepts nothing until an
        L{inherited_endpoint} over its descriptor listens: then that one
        accepts.
        """
        port = bind_shared(reactor, "tcp:0:interface=127.0.0.1")
        self.addCleanup(port.stopListening)
        self.assertNotIn(port, reactor.getReaders())
        # (A duplicate, as a worker inherits: the endpoint closes it.)
        endpoint = inherited_endpoint(reactor, "tcp:0", os.dup(port.fileno()), None)
        adopted = yield endpoint.listen(Factory.forProtocol(_Echo))
        self.addCleanup(adopted.stopListening)
        self.assertEqual(adopted.getHost().port, port.getHost().port)
        answered = yield _echo(port.getHost().port, b"hello")
        self.assertEqual(answered, b"hello")


class InheritedUNIXTests(SynchronousTestCase):
    """
    A worker adopts a C{unix:} socket the supervisor bound as it is, and
    leaves it to the others when it stops.
    """

    def setUp(self) -> None:
        directory = self.mktemp()
        os.mkdir(directory)
        self.path = os.path.join(directory, "lb.sock")
        # As bind_shared leaves it: bound, mode set, listening, not blocking.
        self.listening = socket.socket(socket.AF_UNIX)
        self.addCleanup(self.listening.close)
        self.listening.bind(self.path)
        os.chmod(self.path, 0o660)
        self.listening.listen(1)
        self.listening.setblocking(False)
        self.memory = MemoryReactorClock()
        endpoint = inherited_endpoint(
            self.memory, f"unix:{self.path}", os.dup(self.listening.fileno()), None
        )
        self.port = self.successResultOf(endpoint.listen(Factory.forProtocol(Protocol)))

    def _connect(self) -> socket.socket:
        client = socket.socket(socket.AF_UNIX)
        self.addCleanup(client.close)
        client.setblocking(False)
        client.connect(self.path)
        return client

    def test_mode_kept(self) -> None:
        """
        The socket file keeps the supervisor's mode (Twisted's port would
        make it 0666, and fail with EPERM after C{--uid}).
        """
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o660)

    def test_backlog_kept(self) -> None:
        """
        The socket keeps the supervisor's backlog (Twisted's port listens
        again with 50): with a backlog of 1, the third connection waiting
        is refused.
        """
        self._connect()
        self._connect()
        self.assertRaises(BlockingIOError, self._connect)

    def test_stop_leaves_socket(self) -> None:
        """
        When the worker's port stops, the path stays and the socket still
        accepts connections (for the other workers): no unlink, no
        shutdown().
        """
        self.port.stopListening()
        self.memory.advance(0)
        self.assertNotIn(self.port, self.memory.getReaders())
        self.assertTrue(os.path.exists(self.path))
        self._connect()
        accepted, _ = self.listening.accept()
        accepted.close()


class StaleAdminSocketTests(TestCase):
    """
    A worker's private admin socket left by a worker that was killed (its
    socket file, and its lock file naming a process that is gone) does not
    stop the worker started in its place.
    """

    @inlineCallbacks
    def test_replacement_binds(self):
        """
        The replacement's admin listens on the path and answers.
        """
        directory = tempfile.mkdtemp(prefix="lbproxy-test-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "worker-1.sock")
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(path)
        stale.close()
        gone = subprocess.Popen(["true"])
        gone.wait()
        # What twisted.python.lockfile leaves: a symlink to the owner's pid.
        os.symlink(str(gone.pid), path + ".lock")
        service, _ = make_proxy_service(replace(_config(), admin=f"unix:{path}"), reactor)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        yield service.admin_port()
        agent = Agent.usingEndpointFactory(reactor, _UnixEndpoints(path))
        answer = yield agent.request(b"GET", b"http://localhost/healthz")
        yield readBody(answer)
        self.assertEqual(answer.code, 200)


class InheritedDescriptorTests(SynchronousTestCase):
    """
    The inherited descriptor is not kept open beside the port's own.
    """

    def test_closed_once_adopted(self) -> None:
        """
        Once the endpoint listens, the descriptor it was given is closed:
        the socket is open twice (the test's and the port's), not three
        times.
        """
        listening = socket.socket()
        listening.bind(("127.0.0.1", 0))
        listening.listen(8)
        listening.setblocking(False)
        self.addCleanup(listening.close)
        memory = MemoryReactorClock()
        endpoint = inherited_endpoint(memory, "tcp:0", os.dup(listening.fileno()), None)
        port = self.successResultOf(endpoint.listen(Factory.forProtocol(Protocol)))
        self.addCleanup(port.stopListening)
        self.assertEqual(_open_descriptors(listening), 2)


def _open_descriptors(skt: socket.socket) -> int:
    """
    How many of this process's descriptors are C{skt}'s socket (by its
    inode, as /proc shows them).
    """
    target = os.readlink(f"/proc/self/fd/{skt.fileno()}")
    return sum(
        1 for fd in os.listdir("/proc/self/fd") if _readlink(f"/proc/self/fd/{fd}") == target
    )


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


class OneAcceptTests(SynchronousTestCase):
    """
    A worker accepts one connection each time its listening socket is
    readable, so that workers share a burst of new connections.
    """

    def test_one_at_a_time(self) -> None:
        """
        With three connections waiting, one read accepts one.
        """
        listening = socket.socket()
        listening.bind(("127.0.0.1", 0))
        listening.listen(8)
        listening.setblocking(False)
        self.addCleanup(listening.close)
        clients = [socket.create_connection(listening.getsockname()) for _ in range(3)]
        for client in clients:
            self.addCleanup(client.close)
        built: list[object] = []

        class Counting(Factory):
            def buildProtocol(self, addr: object) -> Protocol:
                built.append(addr)
                return Protocol()

        memory = MemoryReactorClock()
        endpoint = inherited_endpoint(memory, "tcp:0", os.dup(listening.fileno()), None)
        port = self.successResultOf(endpoint.listen(Counting()))
        self.addCleanup(port.stopListening)
        port.doRead()
        self.assertEqual(len(built), 1)
        port.doRead()
        port.doRead()
        self.assertEqual(len(built), 3)
        for transport in list(memory.getReaders()):
            if transport is not port:
                transport.loseConnection()


def _echo(port: int, data: bytes) -> Deferred[bytes]:
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    done: Deferred[bytes] = Deferred()

    class Client(Protocol):
        def connectionMade(self) -> None:
            self.transport.write(data)

        def dataReceived(self, received: bytes) -> None:
            self.transport.loseConnection()
            done.callback(received)

    connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Client())
    return done


class _FakeProcess:
    """
    A process transport that records what the supervisor does to it.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[str] = []
        self.written = b""
        self.ended = False

    def signalProcess(self, name: str) -> None:
        if self.ended:
            raise ProcessExitedAlready()
        self.signals.append(name)

    def write(self, data: bytes) -> None:
        self.written += data


class _ProcessReactor(MemoryReactorClock):
    """
    A memory reactor that spawns fake processes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[Any, _FakeProcess, dict[int, Any]]] = []

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:
        self.callLater(0, f, *args, **kwargs)

    def spawnProcess(self, protocol: Any, executable: str, args: Any, env: Any, **kw: Any) -> Any:
        process = _FakeProcess(1000 + len(self.spawned))
        protocol.makeConnection(process)
        self.spawned.append((protocol, process, kw["childFDs"]))
        return process


def _end(protocol: Any, process: _FakeProcess, reason: Exception) -> None:
    process.ended = True
    protocol.processEnded(Failure(reason))


def _refuse_open(*args: Any, **kwargs: Any) -> int:
    """
    C{os.open} as the user twistd switched to sees twistd's log file, which
    is root's.
    """
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))


class SupervisorTests(SynchronousTestCase):
    """
    L{WorkerSupervisor} with fake processes and a fake clock.
    """

    def setUp(self) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.reactor = _ProcessReactor()
        self.loads: list[Config] = []

    def _start(self, **settings: Any) -> WorkerSupervisor:
        supervisor = WorkerSupervisor(_config(**settings), self.reactor, load=self._load)
        supervisor._bound = True  # no socket: the memory reactor binds none
        self.addCleanup(signal.signal, signal.SIGHUP, signal.getsignal(signal.SIGHUP))
        supervisor.startService()
        return supervisor

    def _load(self) -> Config:
        config = self.loads.pop(0)
        if isinstance(config, Exception):
            raise config
        return config

    def _logged(self) -> list[str]:
        return [formatEvent(e) for e in self.events]

    def test_starts_workers(self) -> None:
        """
        N workers start, each with its setup on its standard input and
        its log read from its standard error.
        """
        self._start(workers=3)
        self.assertEqual(len(self.reactor.spawned), 3)
        indexes = []
        for _, process, fds in self.reactor.spawned:
            read, write = os.pipe()
            os.write(write, process.written)
            os.close(write)
            indexes.append(read_setup(read).index)
            os.close(read)
            self.assertEqual((fds[0], fds[1], fds[2]), ("w", 1, "r"))
        self.assertEqual(indexes, [1, 2, 3])
        self.assertIn("worker 3 started (pid 1002)", self._logged())

    def test_private_admins(self) -> None:
        """
        With C{--admin}, each worker gets its own admin on a unix socket in
        a directory of the supervisor's (mode 0700), without a token; the
        directory is removed on stop.
        """
        supervisor = self._start(admin="tcp:0:interface=127.0.0.1", admin_token="s3cret")
        setups = []
        for _, process, _ in self.reactor.spawned:
            read, write = os.pipe()
            os.write(write, process.written)
            os.close(write)
            setups.append(read_setup(read))
            os.close(read)
        directory = supervisor._admin_dir
        assert directory is not None
        self.assertEqual(os.stat(directory).st_mode & 0o777, 0o700)
        self.assertEqual(
            [(s.config.admin, s.config.admin_token) for s in setups],
            [(f"unix:{directory}/worker-1.sock", ""), (f"unix:{directory}/worker-2.sock", "")],
        )
        self.assertEqual(
            {i: a.status for i, a in supervisor._worker_admins().items()},
            {1: "starting", 2: "starting"},
        )
        for protocol, process, _ in self.reactor.spawned:
            _end(protocol, process, ProcessDone(0))
        supervisor.stopService()
        self.assertFalse(os.path.exists(directory))

    def test_relays_log(self) -> None:
        """
        A worker's C{LEVEL text} lines are logged at that level, prefixed
        with the worker; other lines as errors.
        """
        self._start()
        protocol, _, _ = self.reactor.spawned[1]
        protocol.errReceived(b"warn something odd\nTraceback (most")
        protocol.errReceived(b" recent call last):\n")
        relayed = [
            (e["log_level"], formatEvent(e)) for e in self.events if "worker 2:" in formatEvent(e)
        ]
        self.assertEqual(
            relayed,
            [
                (LogLevel.warn, "worker 2: something odd"),
                (LogLevel.error, "worker 2: Traceback (most recent call last):"),
            ],
        )

    def test_restart_backs_off(self) -> None:
        """
        A worker that dies is logged and started again, after a delay
        that grows while it keeps dying young.
        """
        self._start(workers=1)
        protocol, process, _ = self.reactor.spawned[0]
        _end(protocol, process, ProcessTerminated(exitCode=1))
        self.assertIn(
            "worker 1 (pid 1000) exited with status 1 after 0.0 s; starting it again in 1 s",
            self._logged(),
        )
        self.reactor.advance(0.9)
        self.assertEqual(len(self.reactor.spawned), 1)
        self.reactor.advance(0.1)
        self.assertEqual(len(self.reactor.spawned), 2)
        protocol, process, _ = self.reactor.spawned[1]
        _end(protocol, process, ProcessTerminated(signal=signal.SIGKILL))
        self.assertIn(
            "worker 1 (pid 1001) was killed by SIGKILL after 0.0 s; starting it again in 2 s",
            self._logged(),
        )
        self.reactor.advance(2)
        self.assertEqual(len(self.reactor.spawned), 3)

    def test_reload_forwarded(self) -> None:
        """
        SIGHUP: a valid configuration file makes every ready worker reload
        (SIGHUP); one not ready yet gets it once ready.  Options only a
        restart applies are named.
        """
        supervisor = self._start()
        first, second = (process for _, process, _ in self.reactor.spawned)
        self.reactor.spawned[0][0].errReceived(READY.encode() + b"\n")
        self.loads.append(_config(workers=3, read_timeout=9, listen=("tcp:1",)))
        self.assertTrue(supervisor.reload())
        self.assertEqual((first.signals, second.signals), (["HUP"], []))
        self.reactor.spawned[1][0].errReceived(READY.encode() + b"\n")
        self.assertEqual(second.signals, ["HUP"])
        self.assertIn("workers changed: restart to apply", self._logged())
        self.assertIn("listen changed: restart to apply", self._logged())
        # A worker started from now on gets the new settings, not the
        # number of workers or listeners.
        self.assertEqual(supervisor.config.read_timeout, 9)
        self.assertEqual(supervisor.config.workers, 2)
        self.assertEqual(supervisor.config.listen, ("tcp:0:interface=127.0.0.1",))

    def test_reload_admin(self) -> None:
        """
        SIGHUP: a new admin token is in force at once; a new admin
        endpoint needs a restart (it was bound at start, as root).
        """
        admin = "tcp:0:interface=127.0.0.1"
        supervisor = self._start(admin=admin, admin_token="old")
        self.addCleanup(shutil.rmtree, supervisor._admin_dir)
        self.loads.append(_config(admin="tcp:1:interface=127.0.0.1", admin_token="new"))
        self.assertTrue(supervisor.reload())
        self.assertEqual(supervisor._admin_resource.token, "new")
        self.assertIn("admin changed: restart to apply", self._logged())
        self.assertEqual(supervisor.config.admin, admin)

    def test_reload_refused(self) -> None:
        """
        SIGHUP with a bad configuration file: its problems are logged once
        and no worker is told to reload.
        """
        supervisor = self._start()
        for protocol, _, _ in self.reactor.spawned:
            protocol.errReceived(READY.encode() + b"\n")
        error = ValueError("x")
        error.problems = ["lb.toml: workers: expected a whole number"]  # type: ignore[attr-defined]
        self.loads.append(error)  # type: ignore[arg-type]
        self.assertFalse(supervisor.reload())
        self.assertEqual([p.signals for _, p, _ in self.reactor.spawned], [[], []])
        self.assertIn(
            "reload failed, configuration kept: lb.toml: workers: expected a whole number",
            self._logged(),
        )

    def test_reload_without_file(self) -> None:
        """
        SIGHUP without C{--config}: nothing to reload, said once; the
        supervisor handles it (it would end the process otherwise) and no
        worker is signalled.
        """
        supervisor = WorkerSupervisor(_config(), self.reactor)
        supervisor._bound = True
        self.addCleanup(signal.signal, signal.SIGHUP, signal.getsignal(signal.SIGHUP))
        supervisor.startService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), supervisor._sighup)
        for protocol, _, _ in self.reactor.spawned:
            protocol.errReceived(READY.encode() + b"\n")
        self.assertFalse(supervisor.reload())
        self.assertEqual([p.signals for _, p, _ in self.reactor.spawned], [[], []])
        self.assertIn("SIGHUP: no configuration file (--config) to reload", self._logged())

    def test_stop(self) -> None:
        """
        Stopping sends SIGTERM to every worker, starts none again, and
        fires once all have exited.
        """
        supervisor = self._start()
        stopped = supervisor.stopService()
        self.assertEqual([p.signals for _, p, _ in self.reactor.spawned], [["TERM"], ["TERM"]])
        protocol, process, _ = self.reactor.spawned[0]
        _end(protocol, process, ProcessDone(0))
        self.assertNoResult(stopped)
        protocol, process, _ = self.reactor.spawned[1]
        _end(protocol, process, ProcessDone(0))
        self.successResultOf(stopped)
        self.reactor.advance(60)
        self.assertEqual(len(self.reactor.spawned), 2)
        self.assertIn("worker 2 (pid 1001) stopped: exited with status 0", self._logged())

    def test_sighup_while_stopping(self) -> None:
        """
        SIGHUP while the workers drain is ignored (logged once), not given
        to the handler from before the start (under twistd C{SIG_DFL},
        which would end the supervisor); that one is put back once every
        worker has stopped.
        """
        before: list[int] = []
        self.addCleanup(signal.signal, signal.SIGHUP, signal.getsignal(signal.SIGHUP))
        signal.signal(signal.SIGHUP, lambda signum, frame: before.append(signum))
        previous = signal.getsignal(signal.SIGHUP)
        supervisor = self._start()
        stopped = supervisor.stopService()
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGHUP)
        self.reactor.advance(0)
        self.assertEqual(before, [])
        self.assertEqual(self._logged().count("SIGHUP: reload ignored while stopping"), 1)
        self.assertEqual([p.signals for _, p, _ in self.reactor.spawned], [["TERM"], ["TERM"]])
        for protocol, process, _ in self.reactor.spawned:
            _end(protocol, process, ProcessDone(0))
        self.successResultOf(stopped)
        self.assertIs(signal.getsignal(signal.SIGHUP), previous)

    def test_stop_kills_late(self) -> None:
        """
        A worker still running C{drain_timeout} + 5 s after SIGTERM is
        killed.
        """
        supervisor = self._start(drain_timeout=10)
        stopped = supervisor.stopService()
        self.reactor.advance(14.9)
        self.assertEqual([p.signals for _, p, _ in self.reactor.spawned], [["TERM"], ["TERM"]])
        self.reactor.advance(0.1)
        self.assertEqual(
            [p.signals for _, p, _ in self.reactor.spawned], [["TERM", "KILL"], ["TERM", "KILL"]]
        )
        for protocol, process, _ in self.reactor.spawned:
            _end(protocol, process, ProcessTerminated(signal=signal.SIGKILL))
        self.successResultOf(stopped)

    def test_stop_cancels_restart(self) -> None:
        """
        A worker waiting to be started again is not, once stopping.
        """
        supervisor = self._start(workers=1)
        protocol, process, _ = self.reactor.spawned[0]
        _end(protocol, process, ProcessTerminated(exitCode=1))
        self.successResultOf(supervisor.stopService())
        self.reactor.advance(60)
        self.assertEqual(len(self.reactor.spawned), 1)

    def test_twistd_log_inherited(self) -> None:
        """
        With C{access-log = "-"} and twistd logging to a file, the
        supervisor opens that file before twistd drops privileges (the
        user it switches to could not: twistd opened it as root) and each
        worker inherits the descriptor and appends through it, never
        opening the path; stopping closes it.
        """
        path = os.path.abspath(self.mktemp())
        open(path, "w").close()
        supervisor = WorkerSupervisor(
            _config(access_log="-"), self.reactor, twistd_log=TwistdLog(path=path)
        )
        supervisor._bound = True
        self.addCleanup(signal.signal, signal.SIGHUP, signal.getsignal(signal.SIGHUP))
        supervisor.privilegedStartService()
        self.patch(os, "open", _refuse_open)  # privileges dropped
        supervisor.startService()
        for _, process, fds in self.reactor.spawned:
            read, write = os.pipe()
            os.write(write, process.written)
            os.close(write)
            twistd_log = read_setup(read).twistd_log
            os.close(read)
            assert twistd_log is not None and twistd_log.fd is not None
            self.assertEqual(fds[twistd_log.fd], twistd_log.fd)
            # What a worker does with it.
            sink = open_sink("-", twistd_log)
            sink.write_lines(b"line\n")
            sink.close()
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"line\nline\n")
        stopped = supervisor.stopService()
        for protocol, process, _ in self.reactor.spawned:
            _end(protocol, process, ProcessDone(0))
        self.successResultOf(stopped)
        self.assertRaises(OSError, os.fstat, twistd_log.fd)

    def test_spawn_fails(self) -> None:
        """
        A worker that cannot be started at all ends the start with one
        line.
        """

        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise PermissionError(13, "Permission denied")

        self.reactor.spawnProcess = refuse  # type: ignore[method-assign]
        supervisor = WorkerSupervisor(_config(), self.reactor, command=["/no/python"])
        supervisor._bound = True
        error = self.assertRaises(SystemExit, supervisor.startService)
        self.assertEqual(
            str(error), "lbproxy: cannot start worker 1: /no/python: Permission denied"
        )


class ConfigTests(SynchronousTestCase):
    """
    C{workers} in the start-up checks and in twistd's service tree.
    """

    def test_unshareable_listener(self) -> None:
        """
        With workers, a listener kind the workers cannot share is a
        problem naming it.
        """
        config = _config(listen=("tcp:8080", "systemd:domain=INET:index=0"))
        problems = [p.as_option() for p in check_config(config, MemoryReactorClock())]
        self.assertEqual(
            problems,
            [
                "--listen 'systemd:domain=INET:index=0': workers share only tcp:, tcp6:, ssl: "
                "and unix: listeners"
            ],
        )
        alone = check_config(replace(config, workers=1), MemoryReactorClock())
        self.assertNotIn("workers share", alone[0].reason)

    def test_admin(self) -> None:
        """
        The admin listener is checked with workers as without: one on
        loopback is fine, one elsewhere without a token is refused.
        """
        config = _config(admin="tcp:9000:interface=127.0.0.1")
        self.assertEqual(check_config(config, MemoryReactorClock()), [])
        problems = check_config(replace(config, admin="tcp:9000"), MemoryReactorClock())
        self.assertEqual([p.key for p in problems], ["admin"])

    def test_make_service(self) -> None:
        """
        C{--workers 2} makes twistd's service a L{WorkerSupervisor};
        C{--workers 1} a single process.
        """
        options = Options()
        options.parseOptions(["--upstream", "127.0.0.1:3000", "--workers", "2"])
        self.assertIsInstance(makeService(options), WorkerSupervisor)
        options = Options()
        options.parseOptions(["--upstream", "127.0.0.1:3000"])
        self.assertNotIsInstance(makeService(options), WorkerSupervisor)


class WorkerProcessTests(TestCase):
    """
    A supervisor and real worker processes, over a real app server.
    """

    def setUp(self) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self._observe)
        self.addCleanup(globalLogPublisher.removeObserver, self._observe)
        self.waiting: list[tuple[str, int, Deferred[None]]] = []

    def _observe(self, event: dict) -> None:
        self.events.append(event)
        text = formatEvent(event)
        for each in list(self.waiting):
            if each[0] in text:
                self.waiting.remove(each)
                each[2].callback(None)

    def _logged(self, text: str) -> int:
        return sum(text in formatEvent(e) for e in self.events)

    def _until(self, text: str, count: int = 1) -> Deferred[None]:
        """
        Fires once C{text} has been logged C{count} times.
        """
        if self._logged(text) >= count:
            return Deferred.fromCoroutine(_nothing())
        done: Deferred[None] = Deferred()
        self.waiting.append((text, count, done))
        return done.addCallback(lambda _: self._until(text, count))

    @inlineCallbacks
    def test_serve_reload_restart_stop(self):
        """
        Two workers serve one socket; SIGHUP reaches both; a worker killed
        is started again and one whose supervisor goes (standard input
        closed) stops; stopping leaves no process.
        """
        _, _, app_port = start_app(self, "A")
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(_toml([app_port], extra="workers = 2\n"))
        supervisor = WorkerSupervisor(load_config(path), reactor, lambda: load_config(path), path)
        supervisor.privilegedStartService()
        previous = signal.getsignal(signal.SIGHUP)
        supervisor.startService()
        stopped = False

        def stop() -> Any:
            if not stopped:
                return supervisor.stopService()

        self.addCleanup(stop)
        self.addCleanup(signal.signal, signal.SIGHUP, previous)
        yield self._until("worker 2: ProxySite starting on")
        yield self._until("worker 1: ProxySite starting on")
        port = next(iter(supervisor._ports.values())).getHost().port
        for _ in range(4):
            self.assertEqual((yield get(port)).body, b"PORT A")

        yield self._until(" ready", 2)
        self.assertTrue(supervisor.reload())
        yield self._until("worker 1: reloaded:")
        yield self._until("worker 2: reloaded:")

        pids = [w.pid for w in supervisor.workers.values()]
        os.kill(pids[0], signal.SIGKILL)
        yield self._until("was killed by SIGKILL")
        yield self._until("worker 1 started", 2)
        supervisor.workers[2].transport.closeStdin()
        yield self._until("worker 2 (pid")
        yield self._until("worker 2 started", 2)
        pids += [w.pid for w in supervisor.workers.values()]
        self.assertEqual((yield get(port)).body, b"PORT A")
        yield self._until(" ready", 4)

        stopped = True
        yield supervisor.stopService()
        self.assertEqual(supervisor.workers, {})
        for pid in pids:
            # Reaped: no such process.
            self.assertRaises(ProcessLookupError, os.kill, pid, 0)
        stops = [formatEvent(e) for e in self.events if "stopped:" in formatEvent(e)]
        self.assertEqual(len(stops), 2, stops)
        self.assertEqual(self._logged("stopped: exited with status 0"), 2, stops)

    @inlineCallbacks
    def test_unix_listener(self):
        """
        Two workers serve a C{unix:} listener with C{mode=660}: the socket
        file keeps that mode, stays (and serves) while a worker stops and
        is started again or is killed and started again, and is removed
        when the supervisor stops.
        """
        _, _, app_port = start_app(self, "A")
        directory = tempfile.mkdtemp(prefix="lbproxy-test-")
        self.addCleanup(shutil.rmtree, directory, True)
        socket_path = os.path.join(directory, "lb.sock")
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(_toml([app_port], f"unix:{socket_path}:mode=660", extra="workers = 2\n"))
        supervisor = WorkerSupervisor(load_config(path), reactor)
        supervisor.privilegedStartService()
        previous = signal.getsignal(signal.SIGHUP)
        supervisor.startService()
        stopped = False

        def stop() -> Any:
            if not stopped:
                return supervisor.stopService()

        self.addCleanup(stop)
        self.addCleanup(signal.signal, signal.SIGHUP, previous)
        agent = Agent.usingEndpointFactory(reactor, _UnixEndpoints(socket_path))

        def served() -> Deferred[bytes]:
            return agent.request(b"GET", b"http://localhost/").addCallback(readBody)

        yield self._until(" ready", 2)
        self.assertEqual(os.stat(socket_path).st_mode & 0o777, 0o660)
        for _ in range(4):
            self.assertEqual((yield served()), b"PORT A")

        supervisor.workers[2].transport.closeStdin()
        yield self._until("worker 2 started", 2)
        yield self._until(" ready", 3)
        self.assertTrue(os.path.exists(socket_path))
        for _ in range(4):
            self.assertEqual((yield served()), b"PORT A")

        os.kill(supervisor.workers[1].pid, signal.SIGKILL)
        yield self._until("was killed by SIGKILL")
        yield self._until(" ready", 4)
        self.assertEqual(os.stat(socket_path).st_mode & 0o777, 0o660)
        for _ in range(4):
            self.assertEqual((yield served()), b"PORT A")

        stopped = True
        yield supervisor.stopService()
        self.assertFalse(os.path.exists(socket_path))

    @inlineCallbacks
    def test_interrupt_then_terminate(self):
        """
        A worker sent SIGINT (Ctrl-C under C{twistd -n} reaches the whole
        process group) and then SIGTERM (from its supervisor) stops once,
        cleanly: no C{ReactorNotRunning} traceback.
        """
        _, _, app_port = start_app(self, "A")
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(_toml([app_port], extra="workers = 2\n"))
        supervisor = WorkerSupervisor(load_config(path), reactor)
        supervisor.privilegedStartService()
        previous = signal.getsignal(signal.SIGHUP)
        supervisor.startService()
        self.addCleanup(supervisor.stopService)
        self.addCleanup(signal.signal, signal.SIGHUP, previous)
        yield self._until(" ready", 2)
        pid = supervisor.workers[1].pid
        os.kill(pid, signal.SIGINT)
        os.kill(pid, signal.SIGTERM)
        yield self._until(f"worker 1 (pid {pid}) exited with status 0")
        yield self._until(" ready", 3)
        self.assertEqual(self._logged(f"worker 1 (pid {pid})"), 1)
        self.assertEqual(self._logged("ReactorNotRunning"), 0)
        self.assertEqual(self._logged("Traceback"), 0)

    @inlineCallbacks
    def test_access_lines_in_twistd_log(self):
        """
        With C{access-log = "-"}, the workers append their access lines to
        twistd's log file through the descriptor the supervisor opened.
        """
        _, _, app_port = start_app(self, "A")
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(_toml([app_port], extra="workers = 2\n").replace('"off"', '"-"'))
        twistd_path = os.path.abspath(self.mktemp())
        supervisor = WorkerSupervisor(
            load_config(path), reactor, twistd_log=TwistdLog(path=twistd_path)
        )
        supervisor.privilegedStartService()
        previous = signal.getsignal(signal.SIGHUP)
        supervisor.startService()
        stopped = False

        def stop() -> Any:
            if not stopped:
                return supervisor.stopService()

        self.addCleanup(stop)
        self.addCleanup(signal.signal, signal.SIGHUP, previous)
        yield self._until(" ready", 2)
        port = next(iter(supervisor._ports.values())).getHost().port
        for n in range(6):
            self.assertEqual((yield get(port, b"/?n=%d" % n)).body, b"PORT A")
        stopped = True
        yield supervisor.stopService()  # the workers flush as they stop
        with open(twistd_path) as f:
            lines = sorted(line for line in f if '" 200 ' in line)
        self.assertEqual(len(lines), 6, lines)
        self.assertIn('"GET /?n=5 HTTP/1.1" 200', lines[-1])

    @inlineCallbacks
    def test_admin_covers_workers(self):
        """
        The supervisor's admin covers both workers: after 10 requests
        C{/api/upstreams} and C{/metrics} count 10 answers, the sum of the
        workers' own counts; a drain POST reaches both (every request then
        goes to B); with one worker killed the admin answers with the
        other, saying one is missing, and the one started again drains A
        too.
        """
        _, _, port_a = start_app(self, "A")
        _, _, port_b = start_app(self, "B")
        path = self.mktemp()
        extra = 'workers = 2\nadmin = "tcp:0:interface=127.0.0.1"\nadmin-token = "s3cret"\n'
        with open(path, "w") as f:
            f.write(_toml([port_a, port_b], extra=extra))
        supervisor = WorkerSupervisor(load_config(path), reactor, lambda: load_config(path), path)
        supervisor.privilegedStartService()
        previous = signal.getsignal(signal.SIGHUP)
        supervisor.startService()
        self.addCleanup(supervisor.stopService)
        self.addCleanup(signal.signal, signal.SIGHUP, previous)
        yield self._until(" ready", 2)
        port = next(iter(supervisor._ports.values())).getHost().port
        admin = (yield supervisor.admin_port()).getHost().port
        for _ in range(10):
            self.assertEqual((yield get(port)).status, 200)

        def served(upstreams: dict) -> dict[str, int]:
            return {s["address"]: s["responses"]["2xx"] for s in upstreams["web"]["servers"]}

        a, b = f"127.0.0.1:{port_a}", f"127.0.0.1:{port_b}"
        combined = served(json.loads((yield admin_request(admin, b"GET", b"/api/upstreams")).body))
        self.assertEqual(sum(combined.values()), 10)
        own = []
        for index in (1, 2):
            own.append(served((yield _private(supervisor, index, "/api/upstreams"))))
        self.assertEqual(combined, {k: own[0][k] + own[1][k] for k in (a, b)})
        metrics = (yield admin_request(admin, b"GET", b"/metrics")).body.decode()
        counted = {
            sample.labels["server"]: sample.value
            for family in text_string_to_metric_families(metrics)
            for sample in family.samples
            if sample.name == "lbproxy_requests_total" and sample.labels["code"] == "2xx"
        }
        self.assertEqual(counted, {k: float(v) for k, v in combined.items()})

        drain = f"/api/upstreams/web/servers/{a}/drain".encode()
        answer = yield admin_request(admin, b"POST", drain, b"Authorization: Bearer s3cret\r\n")
        self.assertEqual(answer.status, 200, answer.body)
        for index in (1, 2):
            states = yield _private(supervisor, index, "/api/upstreams")
            self.assertEqual(states["web"]["servers"][0]["state"], "draining")
        for _ in range(6):
            self.assertEqual((yield get(port)).body, b"PORT B")

        os.kill(supervisor.workers[1].pid, signal.SIGKILL)
        yield self._until("was killed by SIGKILL")
        status = json.loads((yield admin_request(admin, b"GET", b"/api/status")).body)
        self.assertEqual(
            [(w["worker"], w["answered"]) for w in status["lbproxy"]["workers"]],
            [(1, False), (2, True)],
        )
        health = yield admin_request(admin, b"GET", b"/healthz")
        self.assertEqual(health.status, 200, health.body)
        yield self._until("worker 1: the operator's drain or maint applied again to 1 server(s)")
        states = yield _private(supervisor, 1, "/api/upstreams")
        self.assertEqual(states["web"]["servers"][0]["state"], "draining")


def _private(supervisor: WorkerSupervisor, index: int, path: str) -> Deferred[Any]:
    """
    The JSON answer of worker C{index}'s own admin at C{path}.
    """
    agent = Agent.usingEndpointFactory(reactor, _UnixEndpoints(supervisor._admin_path(index)))
    d = agent.request(b"GET", b"http://localhost" + path.encode())
    return d.addCallback(readBody).addCallback(json.loads)


@implementer(IAgentEndpointFactory)
class _UnixEndpoints:
    def __init__(self, path: str) -> None:
        self.path = path

    def endpointForURI(self, uri: Any) -> Any:
        return UNIXClientEndpoint(reactor, self.path)


async def _nothing() -> None:
    return None
