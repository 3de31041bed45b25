# -*- test-case-name: tests.service.test_workers -*-
"""
A worker process of C{--workers}: C{python -m lbproxy.worker}, started by
L{lbproxy.service.workers.WorkerSupervisor}, never by hand.

Like L{lbproxy.tap}, a composition root: it reads its
L{WorkerSetup} from standard input, builds the same services as a single
process (L{make_proxy_service}) over the inherited sockets and runs the
reactor until SIGTERM (it drains, as a single process does) or until its
standard input closes (the supervisor is gone).  It logs to standard
error, one C{LEVEL text} line per line of an event, for the supervisor to
log.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import IO, Any

from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.main import CONNECTION_DONE
from twisted.logger import ILogObserver, Logger, eventAsText, globalLogBeginner
from twisted.python.failure import Failure
from zope.interface import implementer, provider

from lbproxy.service.service import StartError
from lbproxy.service.workers import READY, WorkerSetup, read_setup

__all__ = ["main", "stderr_observer", "stop", "take_signals"]

_log = Logger()


def stderr_observer(stream: IO[str]) -> Any:
    """
    A log observer writing each line of each event as C{LEVEL text}.
    """

    @provider(ILogObserver)
    def observe(event: Any) -> None:
        text = eventAsText(event, includeTimestamp=False, includeSystem=False)
        level = event.get("log_level")
        name = level.name if level is not None else "info"
        stream.write("".join(f"{name} {line}\n" for line in text.splitlines()))
        stream.flush()

    return observe


@implementer(IReadDescriptor)
class _SupervisorWatch:
    """
    Stops the reactor when standard input (from the supervisor) closes.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def fileno(self) -> int:
        return 0

    def doRead(self) -> Any:
        if not os.read(0, 4096):
            return CONNECTION_DONE
        return None

    def connectionLost(self, reason: Failure) -> None:
        # (Perhaps while the worker drains after SIGTERM.)
        stop(self._reactor)

    def logPrefix(self) -> str:
        return "supervisor"


def stop(reactor: Any) -> None:
    """
    Stop the reactor unless it is stopping already: C{reactor.stop()}
    again raises L{ReactorNotRunning}, a traceback in the log.
    """
    try:
        reactor.stop()
    except ReactorNotRunning:
        pass


def take_signals(reactor: Any) -> None:
    """
    Once the reactor runs (its own handlers installed): ignore SIGINT, and
    stop on SIGTERM only if not stopping already.

    Ctrl-C under C{twistd -n} sends SIGINT to the whole process group; the
    supervisor handles it and sends SIGTERM to every worker, which would
    then stop a second time.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def terminated(signum: int, frame: object) -> None:
        # As Twisted's own handler: the work in the reactor's thread.
        reactor.callFromThread(_log.info, "Received SIGTERM, shutting down.")
        reactor.callFromThread(stop, reactor)

    signal.signal(signal.SIGTERM, terminated)


def serve(setup: WorkerSetup, reactor: Any) -> None:
    """
    Serve as worker C{setup.index} until stopped.

    @raise SystemExit: if it cannot start.
    """
    # Until its service handles SIGHUP (a reload of the file, or of the
    # command line's options), one must not end the worker.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # Imported here: lbproxy.tap imports the whole proxy, which the
    # worker needs only once its setup has been read.
    from lbproxy.tap import make_proxy_service

    service, _ = make_proxy_service(
        setup.config,
        reactor,
        setup.config_path,
        twistd_log=setup.twistd_log,
        inherited=setup.sockets,
    )
    try:
        service.privilegedStartService()
        service.startService()
    except StartError as e:
        raise SystemExit(f"lbproxy: {e}") from None
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.addReader(_SupervisorWatch(reactor))
    reactor.callWhenRunning(take_signals, reactor)
    # Now SIGHUP reloads (it would end a process that does not handle it).
    reactor.callWhenRunning(lambda: (sys.stderr.write(READY + "\n"), sys.stderr.flush()))
    reactor.run()


def main() -> None:
    """
    The worker process's entry point.
    """
    setup = read_setup(0)
    globalLogBeginner.beginLoggingTo([stderr_observer(sys.stderr)], redirectStandardIO=False)
    from twisted.internet import reactor

    serve(setup, reactor)


if __name__ == "__main__":
    main()
