# -*- test-case-name: tests.service.test_twistdlog -*-
"""
twistd's log file, shared with the access lines of C{access-log = "-"}.

twistd's C{LogFile} opens its file without C{O_APPEND} (C{r+b}, then a
seek to the end) and writes at its own offset.  The access log appends
batches to the same file from another descriptor (and, with workers, from
other processes), so twistd's next line was written over the access lines
appended since its last one: 30 requests left 10 lines and a torn one in
a hand test.  L{TwistdLogAppends} sets C{O_APPEND} on twistd's descriptor,
so that every writer appends:

  - at start;
  - after twistd rotates the file on SIGUSR1 (its handler is chained: the
    check is queued right behind twistd's rotation);
  - after a rotation by size, which happens as twistd writes an event: a
    log observer added after twistd's own looks at the file once per
    event (one C{stat}; this process logs few events).

A batch appended by another process in the instant between a rotation and
the check can still be written over by twistd's first line in the new
file.
"""

from __future__ import annotations

import fcntl
import os
import signal
from typing import Any

from twisted.application.service import Service
from twisted.logger import ILogObserver, LogPublisher, globalLogPublisher
from zope.interface import provider

__all__ = ["TwistdLogAppends", "append_everywhere"]


def append_everywhere(path: str) -> int:
    """
    Set C{O_APPEND} on every descriptor this process has open for writing
    on the file at C{path} (Linux: found in C{/proc/self/fd}).

    @return: how many descriptors were changed.
    """
    try:
        target = os.stat(path)
        names = os.listdir("/proc/self/fd")
    except OSError:
        return 0
    changed = 0
    for name in names:
        fd = int(name)
        try:
            found = os.fstat(fd)
            if (found.st_dev, found.st_ino) != (target.st_dev, target.st_ino):
                continue
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            if flags & os.O_ACCMODE == os.O_RDONLY or flags & os.O_APPEND:
                continue
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_APPEND)
        except OSError:
            # Closed since the listing (the listing's own descriptor).
            continue
        changed += 1
    return changed


class TwistdLogAppends(Service):
    """
    Keeps twistd's descriptor of its log file appending; see the module
    docstring.
    """

    def __init__(
        self, path: str, reactor: Any, publisher: LogPublisher = globalLogPublisher
    ) -> None:
        """
        @param path: twistd's log file.
        @param reactor: runs the check after a SIGUSR1 rotation.
        @param publisher: the log publisher twistd's observer is on.
        """
        self.path = path
        self._reactor = reactor
        self._publisher = publisher
        self._inode = -1
        self._previous_usr1: Any = None

        @provider(ILogObserver)
        def observe(event: Any) -> None:
            self.check()

        self._observer = observe

    def check(self) -> None:
        """
        Set C{O_APPEND} again if the file at the path is a new one (the
        first time, and after each rotation).
        """
        try:
            inode = os.stat(self.path).st_ino
        except OSError:
            return
        if inode != self._inode:
            self._inode = inode
            append_everywhere(self.path)

    def _usr1(self, signum: int, frame: Any) -> None:
        if callable(self._previous_usr1):
            self._previous_usr1(signum, frame)
        self._reactor.callFromThread(self.check)

    def startService(self) -> None:
        """
        Check now, after each event logged, and after each SIGUSR1.
        """
        super().startService()  # type: ignore[no-untyped-call]
        self.check()
        self._publisher.addObserver(self._observer)
        self._previous_usr1 = signal.signal(signal.SIGUSR1, self._usr1)

    def stopService(self) -> None:
        """
        Stop checking.
        """
        super().stopService()  # type: ignore[no-untyped-call]
        self._publisher.removeObserver(self._observer)
        signal.signal(signal.SIGUSR1, self._previous_usr1 or signal.SIG_DFL)
        self._previous_usr1 = None
