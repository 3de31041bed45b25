# -*- test-case-name: tests.service.test_service -*-
"""
SIGHUP while a service stops gracefully.

Putting the handler from before the start back when the stop begins
would, under twistd, put back C{SIG_DFL}: logrotate's C{kill -HUP} during
the drain (up to C{drain-timeout}) would end the process, cutting the
requests in flight and leaving the pidfile.  So from the start of the
stop to its end SIGHUP is ignored (said once in the log), and the old
handler comes back only once stopped.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

__all__ = ["ignore_sighup_while_stopping"]

_log = Logger()


def ignore_sighup_while_stopping(reactor: Any, previous: Any) -> Callable[..., Any]:
    """
    Ignore SIGHUP from now on, logging the first one.

    @param reactor: logs in its thread (a signal handler runs between
        any two bytecodes).
    @param previous: the handler to put back once stopped; L{None} if
        the service never handled SIGHUP: then nothing changes.
    @return: what puts C{previous} back: called with a result (as a
        Deferred's callback and errback both), it returns it.
    """
    if previous is None:
        return lambda result=None: result
    said: list[bool] = []

    def ignored(signum: int, frame: object) -> None:
        if not said:
            said.append(True)
            reactor.callFromThread(_log.info, "SIGHUP: reload ignored while stopping")

    signal.signal(signal.SIGHUP, ignored)

    def restore(result: Any = None) -> Any:
        signal.signal(signal.SIGHUP, previous)
        return result

    return restore
