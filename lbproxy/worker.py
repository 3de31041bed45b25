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

from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.main import CONNECTION_DONE
from twisted.logger import ILogObserver, eventAsText, globalLogBeginner
from twisted.python.failure import Failure
from zope.interface import implementer, provider

from lbproxy.service.service import StartError
from lbproxy.service.workers import READY, WorkerSetup, read_setup

__all__ = ["main", "stderr_observer"]


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
        if self._reactor.running:
            self._reactor.stop()

    def logPrefix(self) -> str:
        return "supervisor"


def serve(setup: WorkerSetup, reactor: Any) -> None:
    """
    Serve as worker C{setup.index} until stopped.

    @raise SystemExit: if it cannot start.
    """
    if setup.config_path is None:
        # Nothing to reload; a stray SIGHUP must not end the worker.
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
