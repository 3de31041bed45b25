# -*- test-case-name: tests.http.test_accesslog -*-
"""
The access log: one line per answered request, formatted once and written
in batches.

Lines are nginx's C{combined} format by default.  They are collected and
written when 64 KiB are waiting or a second has passed (nginx's
C{access_log ... buffer=64k flush=1s}), with one C{write} per batch: a
logging event per request, as twisted.web's C{Site} does through the twistd
log, cost 30% of the proxy's throughput (bench/RESULTS.md).

Where the lines go (L{open_sink}): a file of their own (C{--access-log
PATH}, appended to and reopened on reload, so that logrotate can move it),
the twistd log's file or standard output (C{-}, the default), or nowhere
(C{off}).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

__all__ = [
    "AccessLog",
    "EventSink",
    "FileSink",
    "LineSink",
    "LoggedRequest",
    "StreamSink",
    "TwistdLog",
    "combined_line",
    "combined_timestamp",
    "log_field",
    "open_sink",
]

#: Bytes that need escaping in a log field: non-printables, C{"} and C{\}.
_NEEDS_ESCAPE = re.compile(rb'[^\x20-\x7e]|["\\]')

#: Flush when this much is waiting (nginx's C{buffer=64k}).
BUFFER_SIZE = 64 * 1024
#: Flush at least this often, in seconds (nginx's C{flush=1s}).
FLUSH_INTERVAL = 1.0

#: Access lines as logging events (L{EventSink}).  Not a class attribute: a
#: L{Logger} read through an instance takes the class's name as namespace.
_access_events = Logger(namespace="lbproxy.access")

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class LoggedRequest(Protocol):
    """
    What the access log reads of a finished request.
    """

    method: bytes
    target: bytes
    version: bytes
    status: int
    bytes_sent: int
    client_address: bytes

    def header(self, name: bytes) -> bytes | None:
        """
        The last value of request header C{name} (lower-case), or L{None}.
        """


class LineSink(Protocol):
    """
    Where batches of lines go.
    """

    def write_lines(self, data: bytes) -> None:
        """
        Write C{data}: whole lines, each ending with a newline.
        """

    def reopen(self) -> None:
        """
        Reopen the destination (after logrotate moved it).
        """

    def close(self) -> None:
        """
        Close the destination.
        """


def log_field(value: bytes) -> str:
    r"""
    A request field as nginx logs it: printable ASCII as is, everything
    else (and C{"} and C{\}) as C{\xHH}, so that a line cannot be forged.
    """
    if _NEEDS_ESCAPE.search(value) is None:
        return value.decode("ascii")
    return "".join(
        chr(b) if 0x20 <= b < 0x7F and b not in (0x22, 0x5C) else f"\\x{b:02X}" for b in value
    )


def combined_timestamp(seconds: float) -> str:
    """
    C{[01/Dec/2026:22:24:35 +0000]}: the time as the combined format
    writes it, in UTC.
    """
    t = time.gmtime(seconds)
    return (
        f"[{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:"
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000]"
    )


def combined_line(timestamp: str, request: LoggedRequest) -> str:
    """
    One access log line in nginx's C{combined} format, without its newline::

        127.0.0.1 - - [25/Nov/2026:12:00:00 +0000] "GET / HTTP/1.1" 200 9 "-" "curl/8"

    @param timestamp: the bracketed time (L{combined_timestamp}).
    @param request: the finished request.
    """
    referrer = request.header(b"referer")
    agent = request.header(b"user-agent")
    return (
        f"{log_field(request.client_address)} - - {timestamp} "
        f'"{log_field(request.method)} {log_field(request.target)} {log_field(request.version)}" '
        f"{request.status} {request.bytes_sent} "
        f'"{log_field(referrer) if referrer is not None else "-"}" '
        f'"{log_field(agent) if agent is not None else "-"}"'
    )


class FileSink:
    """
    Appends to a file, one C{write} per batch.

    With C{follow=True} the file is reopened when its path names another
    file than the one open (another program rotated it, as twistd's own log
    rotation does), checked at most once per batch.
    """

    def __init__(self, path: str, follow: bool = False) -> None:
        self.path = path
        self._follow = follow
        self._fd = -1
        self._inode = 0
        self.reopen()

    def reopen(self) -> None:
        """
        Open the path again (after logrotate moved the file away).
        """
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd
        self._inode = os.fstat(fd).st_ino

    def write_lines(self, data: bytes) -> None:
        """
        Append C{data}.
        """
        if self._follow:
            try:
                moved = os.stat(self.path).st_ino != self._inode
            except OSError:
                moved = True
            if moved:
                self.reopen()
        _write_all(self._fd, data)

    def close(self) -> None:
        """
        Close the file.
        """
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class StreamSink:
    """
    Writes to a file descriptor that lbproxy does not own (standard output).
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def write_lines(self, data: bytes) -> None:
        """
        Write C{data}.
        """
        _write_all(self._fd, data)

    def reopen(self) -> None:
        """
        Nothing to reopen.
        """

    def close(self) -> None:
        """
        Leave the descriptor open: it is not ours.
        """


class EventSink:
    """
    One logging event per line, through Twisted's logger: for a twistd
    logging to something that is not a file (syslog, a custom observer).
    """

    def write_lines(self, data: bytes) -> None:
        """
        Log each line as an event.
        """
        for line in data.decode("utf-8", "replace").splitlines():
            _access_events.info("{line}", line=line)

    def reopen(self) -> None:
        """
        Nothing to reopen.
        """

    def close(self) -> None:
        """
        Nothing to close.
        """


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class AccessLog:
    """
    Formats a line per finished request and writes them in batches.
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        sink: LineSink | None,
        formatter: Callable[[str, Any], str] = combined_line,
    ) -> None:
        """
        @param clock: tells the time and schedules the flush.
        @param sink: where lines go; L{None} for nowhere (C{off}).
        @param formatter: makes a line from the timestamp and the request.
        """
        self._clock = clock
        self.sink = sink
        self._format = formatter
        self._lines: list[str] = []
        self._size = 0
        self._flush_call: IDelayedCall | None = None
        self._second = -1
        self._timestamp = ""

    def request_done(self, request: Any, fields: str = "") -> None:
        """
        Log C{request}, which was answered.

        @param fields: appended to its line (a tunnel's, L{tunnel_done}).
        """
        if self.sink is None:
            return
        now = self._clock.seconds()
        second = int(now)
        if second != self._second:
            self._second = second
            self._timestamp = combined_timestamp(second)
        line = self._format(self._timestamp, request)
        if fields:
            line += fields
        self._lines.append(line)
        self._size += len(line) + 1
        if self._size >= BUFFER_SIZE:
            self.flush()
        elif self._flush_call is None:
            self._flush_call = self._clock.callLater(FLUSH_INTERVAL, self.flush)

    def tunnel_done(self, request: Any, seconds: float, bytes_received: int) -> None:
        """
        Log the tunnel C{request} opened, once it closed: the request's
        line (status 101; its bytes are those sent to the client through
        the tunnel, as nginx's C{$body_bytes_sent} counts them), then
        C{duration=SECONDS bytes_uploaded=N}: how long it was open and what
        the client sent through it (HAProxy's C{%Tt} and C{%U}).  The
        combined format has no field for either; its parsers ignore what
        follows the user agent.
        """
        self.request_done(request, f" duration={seconds:.3f} bytes_uploaded={bytes_received}")

    def flush(self) -> None:
        """
        Write what is waiting, now.
        """
        call, self._flush_call = self._flush_call, None
        if call is not None and call.active():
            call.cancel()
        if not self._lines or self.sink is None:
            return
        lines, self._lines, self._size = self._lines, [], 0
        lines.append("")
        try:
            self.sink.write_lines("\n".join(lines).encode("utf-8", "replace"))
        except OSError as e:
            self._log.error("access log not written: {error}", error=e)

    def replace_sink(self, sink: LineSink | None) -> None:
        """
        Write to C{sink} from now on (a reload), after flushing to the old
        one, which is closed.
        """
        self.flush()
        old, self.sink = self.sink, sink
        if old is not None and old is not sink:
            old.close()

    def close(self) -> None:
        """
        Flush and close (on stop).
        """
        self.flush()
        if self.sink is not None:
            self.sink.close()
            self.sink = None


@dataclass(frozen=True, slots=True)
class TwistdLog:
    """
    Where twistd writes its own log, for C{--access-log -}.

    @ivar path: the log file (an absolute path), if it is a file.
    @ivar stdout: it is standard output (C{twistd -n} without
        C{--logfile}, or C{--logfile -}).
    """

    path: str | None = None
    stdout: bool = False

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None) -> TwistdLog | None:
        """
        Where a twistd with these (its own, the parent's) options logs, as
        its C{UnixAppLogger} decides; L{None} when not under twistd, or
        when it logs to syslog or a custom observer.
        """
        if options is None or options.get("syslog") or options.get("logger"):
            return None
        logfile = options.get("logfile")
        if logfile == "-" or (options.get("nodaemon") and not logfile):
            return cls(stdout=True)
        return cls(path=os.path.abspath(logfile or "twistd.log"))


def open_sink(setting: str, twistd: TwistdLog | None) -> LineSink | None:
    """
    Where the access lines of an C{access-log} setting go.

    @param setting: C{"off"}, C{"-"} (the twistd log) or a file path.
    @param twistd: where twistd logs; L{None} if it is not a file or
        standard output (or there is no twistd): then lines go through
        Twisted's logger, one event each.
    @raise OSError: if a file cannot be opened.
    """
    if setting == "off":
        return None
    if setting != "-":
        return FileSink(setting)
    if twistd is None:
        return EventSink()
    if twistd.path is not None:
        # twistd's LogFile rotates by renaming: follow the path.
        return FileSink(twistd.path, follow=True)
    return StreamSink(1)
