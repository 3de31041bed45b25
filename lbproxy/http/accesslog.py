# -*- test-case-name: tests.http.test_accesslog -*-
"""
The access log: one line per answered request, formatted once and written
in batches.

Lines are nginx's C{combined} format by default, or JSON objects with the
request id and the upstream's timings (C{--access-log-format json},
L{json_line}).  They are collected and
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

import json
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from lbproxy.http.request import ExchangeRecord

__all__ = [
    "COMBINED",
    "FORMATS",
    "JSON",
    "AccessLog",
    "EventSink",
    "FileSink",
    "KeptSink",
    "LineFormat",
    "LineSink",
    "LoggedRequest",
    "StreamSink",
    "TwistdLog",
    "combined_line",
    "combined_timestamp",
    "iso_timestamp",
    "json_line",
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
    record: ExchangeRecord | None

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


def iso_timestamp(seconds: float) -> str:
    """
    C{2026-12-01T22:24:35+00:00}: the time as nginx's C{$time_iso8601}
    writes it, in UTC.
    """
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(seconds))


_to_json = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode


def _seconds(value: float | None) -> float | None:
    # Microseconds: nginx's milliseconds read 0.000 for a local app server.
    return None if value is None else round(value, 6)


def json_line(timestamp: str, now: float, request: LoggedRequest) -> str:
    """
    One access log line as a JSON object, keys named after nginx's
    variables::

        {"time":"2026-11-25T12:00:00+00:00","request_id":"5f0c...",
         "remote_addr":"10.0.0.7","request_method":"GET","request_uri":"/",
         "server_protocol":"HTTP/1.1","status":200,"body_bytes_sent":9,
         "request_time":0.0042,"pool":"default",
         "upstream_addr":"127.0.0.1:3000","upstream_status":200,
         "upstream_connect_time":0.0,"upstream_header_time":0.0031,
         "upstream_response_time":0.0035,"retries":0,
         "http_referer":null,"http_user_agent":"curl/8.5.0"}

    Times are seconds; a request no server answered has
    C{"upstream_status":null} (and no server tried, C{"upstream_addr":null}).
    Request fields are escaped as in the combined format (L{log_field}).

    @param timestamp: the time (L{iso_timestamp}).
    @param now: the clock's seconds, for C{request_time}.
    @param request: the finished request.
    """
    referrer = request.header(b"referer")
    agent = request.header(b"user-agent")
    record = request.record
    fields: dict[str, Any] = {
        "time": timestamp,
        "request_id": None,
        "remote_addr": log_field(request.client_address),
        "request_method": log_field(request.method),
        "request_uri": log_field(request.target),
        "server_protocol": log_field(request.version),
        "status": request.status,
        "body_bytes_sent": request.bytes_sent,
    }
    if record is not None:
        fields["request_id"] = record.request_id.decode("ascii")
        fields["request_time"] = _seconds(now - record.started)
        fields["pool"] = record.pool
        fields["upstream_addr"] = record.upstream_addr
        fields["upstream_status"] = record.upstream_status or None
        fields["upstream_connect_time"] = _seconds(record.connect_time)
        fields["upstream_header_time"] = _seconds(record.header_time)
        fields["upstream_response_time"] = _seconds(record.response_time)
        fields["retries"] = record.retries
    fields["http_referer"] = log_field(referrer) if referrer is not None else None
    fields["http_user_agent"] = log_field(agent) if agent is not None else None
    return _to_json(fields)


@dataclass(frozen=True, slots=True)
class LineFormat:
    """
    One access log format (C{--access-log-format}).

    @ivar name: its option value.
    @ivar timestamp: the time of a second as its lines write it, made once
        a second.
    @ivar line: a line from the timestamp, the clock's seconds and the
        finished request.
    @ivar tunnel: a tunnel's line from the line of its request, the seconds
        it was open and the bytes the client sent through it.
    """

    name: str
    timestamp: Callable[[float], str]
    line: Callable[[str, float, Any], str]
    tunnel: Callable[[str, float, int], str]


def _combined(timestamp: str, now: float, request: LoggedRequest) -> str:
    return combined_line(timestamp, request)


def _combined_tunnel(line: str, seconds: float, uploaded: int) -> str:
    return f"{line} duration={seconds:.3f} bytes_uploaded={uploaded}"


def _json_tunnel(line: str, seconds: float, uploaded: int) -> str:
    # The line is one JSON object: two more keys before its closing brace.
    return f'{line[:-1]},"duration":{_seconds(seconds)},"bytes_uploaded":{uploaded}}}'


COMBINED = LineFormat("combined", combined_timestamp, _combined, _combined_tunnel)
JSON = LineFormat("json", iso_timestamp, json_line, _json_tunnel)
#: The formats by their option value.
FORMATS = {each.name: each for each in (COMBINED, JSON)}


class FileSink:
    """
    Appends to a file, one C{write} per batch.

    With C{follow=True} the file is reopened when its path names another
    file than the one open (another program rotated it, as twistd's own log
    rotation does), checked at most once per batch.
    """

    def __init__(self, path: str, follow: bool = False, fd: int | None = None) -> None:
        """
        @param path: the file.
        @param follow: reopen the path when it names another file.
        @param fd: a descriptor already open on the file, for appending
            (a worker's, from its supervisor: the file is root's): a
            duplicate is used rather than the path opened now.
        """
        self.path = path
        self._follow = follow
        self._fd = -1
        self._inode = 0
        if fd is None:
            self.reopen()
        else:
            self._fd = os.dup(fd)
            self._inode = os.fstat(self._fd).st_ino

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


class KeptSink:
    """
    A sink opened once and kept by its owner while the access log comes
    and goes: its C{close} leaves it open (a reload that replaces it, or
    one that fails, does not end it); L{release} closes it.

    lbproxy keeps the sink of C{access-log = "-"} so: twistd's log file is
    opened as root, before twistd drops privileges (C{--uid}), and the
    user it switches to could not open it again.
    """

    def __init__(self, sink: LineSink) -> None:
        self.sink = sink

    def write_lines(self, data: bytes) -> None:
        """
        Write C{data} to the kept sink.
        """
        self.sink.write_lines(data)

    def reopen(self) -> None:
        """
        Reopen the kept sink.
        """
        self.sink.reopen()

    def close(self) -> None:
        """
        Leave it open: its owner releases it.
        """

    def release(self) -> None:
        """
        Close the kept sink (its owner stops).
        """
        self.sink.close()


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
        line_format: LineFormat = COMBINED,
    ) -> None:
        """
        @param clock: tells the time and schedules the flush.
        @param sink: where lines go; L{None} for nowhere (C{off}).
        @param line_format: how lines are written; see L{use_format}.
        """
        self._clock = clock
        self.sink = sink
        self.line_format = line_format
        self._lines: list[str] = []
        self._size = 0
        self._flush_call: IDelayedCall | None = None
        self._second = -1
        self._timestamp = ""

    def request_done(self, request: Any, tunnel: tuple[float, int] | None = None) -> None:
        """
        Log C{request}, which was answered.

        @param tunnel: for a tunnel's request, how long the tunnel was open
            and the bytes the client sent through it (L{tunnel_done}).
        """
        if self.sink is None:
            return
        now = self._clock.seconds()
        second = int(now)
        line_format = self.line_format
        if second != self._second:
            self._second = second
            self._timestamp = line_format.timestamp(second)
        line = line_format.line(self._timestamp, now, request)
        if tunnel is not None:
            line = line_format.tunnel(line, *tunnel)
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
        the tunnel, as nginx's C{$body_bytes_sent} counts them), with how
        long it was open and what the client sent through it (HAProxy's
        C{%Tt} and C{%U}): C{duration=SECONDS bytes_uploaded=N} after a
        combined line (its parsers ignore what follows the user agent), the
        keys C{duration} and C{bytes_uploaded} in a JSON one.
        """
        self.request_done(request, (seconds, bytes_received))

    def use_format(self, line_format: LineFormat) -> None:
        """
        Write lines in C{line_format} from now on (a reload).
        """
        if line_format is not self.line_format:
            self.line_format = line_format
            self._second = -1  # its timestamps are written otherwise

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
    @ivar fd: a descriptor open on the file for appending, if one was
        opened before twistd dropped privileges (L{opened}): a worker
        process inherits it.
    """

    path: str | None = None
    stdout: bool = False
    fd: int | None = None

    def opened(self) -> TwistdLog:
        """
        This, with a descriptor open on the file (appending): to be called
        before twistd drops privileges, as twistd opened the file as root.

        @raise OSError: if the file cannot be opened.
        """
        if self.path is None or self.fd is not None:
            return self
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        return replace(self, fd=fd)

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
        Twisted's logger, one event each.  If it carries a descriptor
        (L{TwistdLog.opened}), twistd's file is written through a
        duplicate of it, not opened again.
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
        return FileSink(twistd.path, follow=True, fd=twistd.fd)
    return StreamSink(1)
