"""
Tests for L{lbproxy.service.twistdlog}: twistd's log file descriptor made
to append, so that access lines appended by others are not written over.
"""

from __future__ import annotations

import fcntl
import os
import signal
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import LogPublisher
from twisted.trial.unittest import SynchronousTestCase

from lbproxy.service.twistdlog import TwistdLogAppends, append_everywhere


def _like_twistd(path: str) -> Any:
    """
    Open C{path} as twistd's C{LogFile} does: read-write, unbuffered, at
    its end, without C{O_APPEND}.
    """
    opened = open(path, "rb+", 0)  # noqa: SIM115
    opened.seek(0, 2)
    return opened


def _appends(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND)


class AppendEverywhereTests(SynchronousTestCase):
    """
    L{append_everywhere} sets C{O_APPEND} on this process's descriptors of
    a file.
    """

    def setUp(self) -> None:
        self.path = self.mktemp()
        with open(self.path, "wb") as f:
            f.write(b"start\n")

    def _read(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read()

    def test_lines_appended_by_another_writer_are_kept(self) -> None:
        """
        A line twistd writes after another descriptor appended goes after
        it, not over it.
        """
        twistd = _like_twistd(self.path)
        self.addCleanup(twistd.close)
        self.assertEqual(append_everywhere(self.path), 1)
        other = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self.addCleanup(os.close, other)
        os.write(other, b"access line\n")
        twistd.write(b"twistd line\n")
        self.assertEqual(self._read(), b"start\naccess line\ntwistd line\n")

    def test_without_it_lines_are_written_over(self) -> None:
        """
        The bug this fixes: without C{O_APPEND}, twistd's next line is
        written over what another descriptor appended.
        """
        twistd = _like_twistd(self.path)
        self.addCleanup(twistd.close)
        other = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self.addCleanup(os.close, other)
        os.write(other, b"access line\n")
        twistd.write(b"twistd line\n")
        self.assertEqual(self._read(), b"start\ntwistd line\n")

    def test_read_only_and_other_files_untouched(self) -> None:
        """
        Descriptors open for reading only, or on other files, are left as
        they are.
        """
        reading = open(self.path, "rb")  # noqa: SIM115
        self.addCleanup(reading.close)
        elsewhere = self.mktemp()
        other = open(elsewhere, "wb", 0)  # noqa: SIM115
        self.addCleanup(other.close)
        self.assertEqual(append_everywhere(self.path), 0)
        self.assertFalse(_appends(other.fileno()))

    def test_missing_file(self) -> None:
        """
        A path with no file changes nothing.
        """
        self.assertEqual(append_everywhere(self.mktemp()), 0)


class _Reactor(Clock):
    """
    A clock that runs C{callFromThread} calls when told.
    """

    def __init__(self) -> None:
        super().__init__()
        self.from_thread: list[Any] = []

    def callFromThread(self, f: Any, *args: Any) -> None:
        self.from_thread.append((f, args))

    def run_from_thread(self) -> None:
        calls, self.from_thread = self.from_thread, []
        for f, args in calls:
            f(*args)


class TwistdLogAppendsTests(SynchronousTestCase):
    """
    L{TwistdLogAppends} keeps twistd's descriptor appending through
    rotations.
    """

    def setUp(self) -> None:
        self.path = self.mktemp()
        open(self.path, "wb").close()
        self.reactor = _Reactor()
        self.publisher = LogPublisher()
        previous = signal.getsignal(signal.SIGUSR1)
        self.addCleanup(signal.signal, signal.SIGUSR1, previous)
        self.rotations: list[int] = []
        # twistd's own SIGUSR1 handler (it rotates its log file).
        signal.signal(signal.SIGUSR1, lambda signum, frame: self.rotations.append(signum))
        self.service = TwistdLogAppends(self.path, self.reactor, self.publisher)

    def _rotate(self) -> Any:
        """
        Rotate as twistd's C{LogFile} does: rename, then open a new file.
        """
        os.rename(self.path, self.path + ".1")
        return open(self.path, "wb+", 0)  # noqa: SIM115

    def test_start(self) -> None:
        """
        Starting sets C{O_APPEND} on twistd's descriptor.
        """
        twistd = _like_twistd(self.path)
        self.addCleanup(twistd.close)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.assertTrue(_appends(twistd.fileno()))

    def test_rotation_by_size(self) -> None:
        """
        After an event (during which twistd may have rotated its file by
        size), the new file's descriptor appends too.
        """
        first = _like_twistd(self.path)
        self.addCleanup(first.close)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        second = self._rotate()
        self.addCleanup(second.close)
        self.assertFalse(_appends(second.fileno()))
        self.publisher({"log_format": "rotated"})
        self.assertTrue(_appends(second.fileno()))

    def test_rotation_by_signal(self) -> None:
        """
        SIGUSR1 still reaches twistd's handler, and the check runs after
        the rotation it queues.
        """
        first = _like_twistd(self.path)
        self.addCleanup(first.close)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        handler = signal.getsignal(signal.SIGUSR1)
        assert callable(handler)
        handler(signal.SIGUSR1, None)
        self.assertEqual(self.rotations, [signal.SIGUSR1])
        second = self._rotate()
        self.addCleanup(second.close)
        self.reactor.run_from_thread()
        self.assertTrue(_appends(second.fileno()))

    def test_stop(self) -> None:
        """
        Stopping gives SIGUSR1 back to twistd's handler and stops watching
        events.
        """
        previous = signal.getsignal(signal.SIGUSR1)
        self.service.startService()
        self.service.stopService()
        self.assertIs(signal.getsignal(signal.SIGUSR1), previous)
        twistd = self._rotate()
        self.addCleanup(twistd.close)
        self.publisher({"log_format": "after stop"})
        self.assertFalse(_appends(twistd.fileno()))
