"""
Tests for L{lbproxy.http.accesslog}: the combined line, the batching (on
a L{Clock}), the sinks, and where twistd's own log is.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.scripts._twistd_unix import ServerOptions
from twisted.trial.unittest import SynchronousTestCase

from lbproxy.http.accesslog import (
    BUFFER_SIZE,
    JSON,
    AccessLog,
    EventSink,
    FileSink,
    KeptSink,
    StreamSink,
    TwistdLog,
    combined_line,
    combined_timestamp,
    iso_timestamp,
    json_line,
    open_sink,
)
from lbproxy.http.request import ExchangeRecord
from tests.http.fakes import MemorySink


class _FinishedRequest:
    """
    The parts of a finished request an access line reads
    (L{lbproxy.http.accesslog.LoggedRequest}).
    """

    def __init__(
        self,
        target: bytes = b"/",
        headers: dict[bytes, bytes] | None = None,
        client_address: bytes = b"10.0.0.7",
    ) -> None:
        self.method = b"GET"
        self.target = target
        self.version = b"HTTP/1.1"
        self.status = 200
        self.bytes_sent = 9
        self.client_address = client_address
        self._headers = headers or {}
        self.record: ExchangeRecord | None = None

    def header(self, name: bytes) -> bytes | None:
        return self._headers.get(name)


_TIME = "[25/Nov/2026:12:00:00 +0000]"


class CombinedLineTests(SynchronousTestCase):
    """
    L{combined_line} writes nginx's C{combined} format.
    """

    def test_plain(self) -> None:
        """
        Address unquoted, request line, status, bytes, referrer and agent
        quoted, as nginx writes them.
        """
        line = combined_line(
            _TIME,
            _FinishedRequest(headers={b"referer": b"http://r/", b"user-agent": b"curl/8"}),
        )
        self.assertEqual(
            line,
            '10.0.0.7 - - [25/Nov/2026:12:00:00 +0000] "GET / HTTP/1.1" 200 9 "http://r/" "curl/8"',
        )

    def test_missing_headers_are_dashes(self) -> None:
        """
        No Referer or User-Agent gives C{"-"} for each.
        """
        line = combined_line(_TIME, _FinishedRequest())
        self.assertTrue(line.endswith('200 9 "-" "-"'), line)

    def test_escapes(self) -> None:
        """
        Quotes, backslashes, control and non-ASCII bytes are written as
        C{\\xHH}, so a request cannot forge or break a log line.
        """
        line = combined_line(
            _TIME,
            _FinishedRequest(target=b'/a"b\\c\n\xff', headers={b"user-agent": b'x" 200 1 "'}),
        )
        self.assertIn('"GET /a\\x22b\\x5Cc\\x0A\\xFF HTTP/1.1"', line)
        self.assertTrue(line.endswith('"x\\x22 200 1 \\x22"'), line)
        self.assertNotIn("\n", line)

    def test_unix_client(self) -> None:
        """
        A client on a UNIX socket (its address C{unix:}) is logged as
        C{unix:}, as nginx logs C{$remote_addr}.
        """
        line = combined_line(_TIME, _FinishedRequest(client_address=b"unix:"))
        self.assertTrue(line.startswith("unix: - - ["), line)

    def test_timestamp(self) -> None:
        """
        The time is written in UTC as the combined format has it.
        """
        self.assertEqual(combined_timestamp(1764675875.9), "[02/Dec/2025:11:44:35 +0000]")


class JSONLineTests(SynchronousTestCase):
    """
    L{json_line} writes a JSON object a line, named after nginx's variables,
    with what the exchange recorded.
    """

    def _proxied(self) -> _FinishedRequest:
        request = _FinishedRequest(headers={b"user-agent": b"curl/8"})
        record = request.record = ExchangeRecord(b"5f0c0a1b", 100.0)
        record.pool = "default"
        record.upstream_addr = "127.0.0.1:3000"
        record.upstream_status = 200
        record.connect_time = 0.0
        record.header_time = 0.0031
        record.response_time = 0.0035
        record.retries = 1
        return request

    def test_fields(self) -> None:
        """
        Every field, in order: the request's, then the exchange's, times in
        seconds (the total from the record's start to now).
        """
        line = json_line("2026-11-25T12:00:00+00:00", 100.0042, self._proxied())
        self.assertEqual(
            line,
            '{"time":"2026-11-25T12:00:00+00:00","request_id":"5f0c0a1b",'
            '"remote_addr":"10.0.0.7","request_method":"GET","request_uri":"/",'
            '"server_protocol":"HTTP/1.1","status":200,"body_bytes_sent":9,'
            '"request_time":0.0042,"pool":"default","upstream_addr":"127.0.0.1:3000",'
            '"upstream_status":200,"upstream_connect_time":0.0,'
            '"upstream_header_time":0.0031,"upstream_response_time":0.0035,'
            '"retries":1,"http_referer":null,"http_user_agent":"curl/8"}',
        )

    def test_no_answer(self) -> None:
        """
        An attempt that got no answer logs its server with a null status
        and times; a request never proxied has no upstream fields.
        """
        request = self._proxied()
        assert request.record is not None
        request.record.upstream_status = 0
        request.record.header_time = request.record.response_time = None
        fields = json.loads(json_line("t", 100.0, request))
        self.assertEqual(
            (fields["upstream_addr"], fields["upstream_status"], fields["upstream_response_time"]),
            ("127.0.0.1:3000", None, None),
        )
        fields = json.loads(json_line("t", 100.0, _FinishedRequest()))
        self.assertEqual((fields["request_id"], fields["status"]), (None, 200))
        self.assertNotIn("upstream_addr", fields)

    def test_escapes(self) -> None:
        """
        Request fields are escaped as in the combined format, then as JSON:
        a line stays one line of ASCII.
        """
        request = _FinishedRequest(
            target=b'/a"b\n\xff', headers={b"user-agent": b'x"}\n{"forged":1'}
        )
        line = json_line("t", 0.0, request)
        self.assertNotIn("\n", line)
        fields = json.loads(line)
        self.assertEqual(fields["request_uri"], "/a\\x22b\\x0A\\xFF")
        self.assertEqual(fields["http_user_agent"], "x\\x22}\\x0A{\\x22forged\\x22:1")
        self.assertNotIn("forged", fields)

    def test_timestamp(self) -> None:
        """
        The time is ISO 8601 in UTC, as nginx's C{$time_iso8601}.
        """
        self.assertEqual(iso_timestamp(1764675875.9), "2025-12-02T11:44:35+00:00")

    def test_in_the_log(self) -> None:
        """
        An access log in the JSON format writes these lines, the time of
        each its second's; a format changed by a reload starts at once.
        """
        clock = Clock()
        clock.advance(1764675875.5)
        sink = MemorySink()
        log = AccessLog(clock, sink)
        log.request_done(_FinishedRequest())
        log.use_format(JSON)
        log.request_done(self._proxied())
        log.flush()
        combined, line = sink.lines
        self.assertTrue(combined.startswith("10.0.0.7 - - [02/Dec/2025:11:44:35"), combined)
        self.assertEqual(json.loads(line)["time"], "2025-12-02T11:44:35+00:00")

    def test_tunnel_keys(self) -> None:
        """
        A tunnel's JSON line is still one JSON object, with its C{duration}
        and C{bytes_uploaded} as keys (a combined line has them after the
        user agent).
        """
        clock = Clock()
        clock.advance(1764675875.5)
        sink = MemorySink()
        log = AccessLog(clock, sink, JSON)
        log.tunnel_done(self._proxied(), 12.3456789, 567)
        log.flush()
        [line] = sink.lines
        fields = json.loads(line)
        self.assertEqual((fields["duration"], fields["bytes_uploaded"]), (12.345679, 567))


class BatchingTests(SynchronousTestCase):
    """
    L{AccessLog} writes its lines in batches: when 64 KiB are waiting or
    a second after the first line of a batch (nginx's C{buffer=64k
    flush=1s}).
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1764675875.5)
        self.sink = MemorySink()
        self.log = AccessLog(self.clock, self.sink)

    def test_nothing_before_a_second(self) -> None:
        """
        Lines are not written before a second has passed.
        """
        self.log.request_done(_FinishedRequest())
        self.clock.advance(0.5)
        self.log.request_done(_FinishedRequest())
        self.clock.advance(0.49)
        self.assertEqual(self.sink.batches, [])

    def test_written_after_a_second(self) -> None:
        """
        A second after the first line, every waiting line is written in
        one write, each ending with a newline.
        """
        self.log.request_done(_FinishedRequest(b"/1"))
        self.clock.advance(0.5)
        self.log.request_done(_FinishedRequest(b"/2"))
        self.clock.advance(0.5)
        [batch] = self.sink.batches
        self.assertEqual(batch.count(b"\n"), 2)
        self.assertTrue(batch.endswith(b"\n"))
        self.assertEqual(
            [line.split('"')[1] for line in self.sink.lines], ["GET /1 HTTP/1.1", "GET /2 HTTP/1.1"]
        )

    def test_time_of_each_line(self) -> None:
        """
        Each line has the time its request was logged.
        """
        self.log.request_done(_FinishedRequest())
        self.clock.advance(0.6)
        self.log.request_done(_FinishedRequest())
        self.log.flush()
        self.assertEqual(
            [line.split(" ")[3] for line in self.sink.lines],
            ["[02/Dec/2025:11:44:35", "[02/Dec/2025:11:44:36"],
        )

    def test_written_at_64_kib(self) -> None:
        """
        Once 64 KiB are waiting they are written at once, without waiting
        for the second.
        """
        request = _FinishedRequest(b"/" + b"a" * 1000)
        count = 0
        while not self.sink.batches:
            self.log.request_done(request)
            count += 1
        [batch] = self.sink.batches
        self.assertGreaterEqual(len(batch), BUFFER_SIZE)
        self.assertLess(len(batch) - len(batch) // count, BUFFER_SIZE)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_flush(self) -> None:
        """
        L{AccessLog.flush} writes what is waiting now, and leaves no timer.
        """
        self.log.request_done(_FinishedRequest())
        self.log.flush()
        self.assertEqual(len(self.sink.lines), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_flush_nothing(self) -> None:
        """
        Flushing with nothing waiting writes nothing.
        """
        self.log.flush()
        self.assertEqual(self.sink.batches, [])

    def test_next_batch_has_its_own_second(self) -> None:
        """
        After a batch is written, the next line starts a new second.
        """
        self.log.request_done(_FinishedRequest())
        self.clock.advance(1)
        self.clock.advance(5)
        self.log.request_done(_FinishedRequest())
        self.clock.advance(0.9)
        self.assertEqual(len(self.sink.batches), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(self.sink.batches), 2)

    def test_off(self) -> None:
        """
        Without a sink (C{off}) nothing is kept and no timer runs.
        """
        log = AccessLog(self.clock, None)
        log.request_done(_FinishedRequest())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_replace_sink(self) -> None:
        """
        A new sink (a reload) gets the lines from then on; what was waiting
        goes to the old one, which is closed.
        """
        self.log.request_done(_FinishedRequest(b"/old"))
        new = MemorySink()
        self.log.replace_sink(new)
        self.log.request_done(_FinishedRequest(b"/new"))
        self.log.flush()
        self.assertTrue(self.sink.closed)
        self.assertEqual([line.split('"')[1] for line in self.sink.lines], ["GET /old HTTP/1.1"])
        self.assertEqual([line.split('"')[1] for line in new.lines], ["GET /new HTTP/1.1"])
        self.assertFalse(new.closed)

    def test_close(self) -> None:
        """
        Closing (a stop) writes what is waiting and closes the sink.
        """
        self.log.request_done(_FinishedRequest())
        self.log.close()
        self.assertEqual(len(self.sink.lines), 1)
        self.assertTrue(self.sink.closed)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_write_error_logged(self) -> None:
        """
        A sink that cannot be written to (a full disk) costs the batch and
        an error in the log, not the request.
        """

        class FullDisk(MemorySink):
            def write_lines(self, data: bytes) -> None:
                raise OSError(28, "No space left on device")

        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        log = AccessLog(self.clock, FullDisk())
        log.request_done(_FinishedRequest())
        log.flush()
        self.assertEqual(
            [formatEvent(e) for e in events],
            ["access log not written: [Errno 28] No space left on device"],
        )


class FileSinkTests(SynchronousTestCase):
    """
    L{FileSink} appends to a file, and follows it when it is renamed.
    """

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.path = os.path.join(directory, "access.log")

    def _read(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def test_appends(self) -> None:
        """
        Lines are appended to what the file already holds.
        """
        with open(self.path, "wb") as f:
            f.write(b"before\n")
        sink = FileSink(self.path)
        self.addCleanup(sink.close)
        sink.write_lines(b"one\n")
        sink.write_lines(b"two\n")
        self.assertEqual(self._read(self.path), b"before\none\ntwo\n")

    def test_follows_renamed_file(self) -> None:
        """
        Following, once the file was renamed (twistd's log rotation: the
        log moves to C{.1} and a new one starts) the next batch goes to a
        new file at the path.
        """
        sink = FileSink(self.path, follow=True)
        self.addCleanup(sink.close)
        sink.write_lines(b"one\n")
        os.rename(self.path, self.path + ".1")
        sink.write_lines(b"two\n")
        self.assertEqual(self._read(self.path + ".1"), b"one\n")
        self.assertEqual(self._read(self.path), b"two\n")

    def test_follows_rotated_file(self) -> None:
        """
        Following, when the rotating program already started a new file at
        the path, the next batch goes there.
        """
        sink = FileSink(self.path, follow=True)
        self.addCleanup(sink.close)
        sink.write_lines(b"one\n")
        os.rename(self.path, self.path + ".1")
        with open(self.path, "wb") as f:
            f.write(b"twistd\n")
        sink.write_lines(b"two\n")
        self.assertEqual(self._read(self.path), b"twistd\ntwo\n")

    def test_not_following_until_reopened(self) -> None:
        """
        Not following (a file of lbproxy's own), lines go to the renamed
        file until the sink is reopened (on reload, after logrotate).
        """
        sink = FileSink(self.path)
        self.addCleanup(sink.close)
        os.rename(self.path, self.path + ".1")
        sink.write_lines(b"one\n")
        sink.reopen()
        sink.write_lines(b"two\n")
        self.assertEqual(self._read(self.path + ".1"), b"one\n")
        self.assertEqual(self._read(self.path), b"two\n")


class KeptSinkTests(SynchronousTestCase):
    """
    L{KeptSink} outlives the access log's use of it.
    """

    def test_close_keeps(self) -> None:
        """
        Replaced, or closed with the access log, it stays open; lines go
        through; L{KeptSink.release} closes it.
        """
        inner = MemorySink()
        kept = KeptSink(inner)
        log = AccessLog(Clock(), kept)
        log.replace_sink(MemorySink())
        log.replace_sink(kept)
        kept.write_lines(b"one\n")
        kept.reopen()
        log.close()
        self.assertEqual((inner.lines, inner.reopened, inner.closed), (["one"], 1, False))
        kept.release()
        self.assertTrue(inner.closed)


def _refuse_open(*args: Any, **kwargs: Any) -> int:
    """
    C{os.open} as the user twistd switched to sees twistd's log file, which
    is root's.
    """
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))


class InheritedFileSinkTests(SynchronousTestCase):
    """
    L{FileSink} over a descriptor already open (a worker's, opened by its
    supervisor before twistd dropped privileges), and L{TwistdLog.opened},
    which opens it.
    """

    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        self.twistd = TwistdLog(path=self.path).opened()
        assert self.twistd.fd is not None
        self.addCleanup(os.close, self.twistd.fd)

    def _read(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read()

    def test_opened(self) -> None:
        """
        L{TwistdLog.opened} opens the file for appending, once; a twistd
        logging elsewhere has nothing to open.
        """
        fd = self.twistd.fd
        assert fd is not None
        self.assertEqual(os.fstat(fd).st_ino, os.stat(self.path).st_ino)
        self.assertTrue(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND)
        self.assertIs(self.twistd.opened(), self.twistd)
        stdout = TwistdLog(stdout=True)
        self.assertIs(stdout.opened(), stdout)

    def test_no_open(self) -> None:
        """
        C{-} with a descriptor writes through it (a duplicate, the sink's
        own to close) without opening the path, which the user could not.
        """
        self.patch(os, "open", _refuse_open)
        sink = open_sink("-", self.twistd)
        sink.write_lines(b"one\n")
        sink.close()
        self.assertEqual(self._read(), b"one\n")
        assert self.twistd.fd is not None
        os.fstat(self.twistd.fd)  # still open

    def test_follows_rotated_file(self) -> None:
        """
        It still follows twistd's rotation: the new file twistd made (as
        the user it switched to) is opened.
        """
        sink = open_sink("-", self.twistd)
        self.addCleanup(sink.close)
        sink.write_lines(b"one\n")
        os.rename(self.path, self.path + ".1")
        sink.write_lines(b"two\n")
        self.assertEqual(self._read(), b"two\n")


def _twistd(*arguments: str) -> TwistdLog | None:
    """
    Where twistd logs with these options, as lbproxy finds it.
    """
    options = ServerOptions()
    options.parseOptions(list(arguments))
    return TwistdLog.from_options(options)


class TwistdLogTests(SynchronousTestCase):
    """
    L{TwistdLog.from_options} finds where twistd logs, from twistd's own
    options, as its C{UnixAppLogger} decides.
    """

    def test_nodaemon(self) -> None:
        """
        C{twistd -n} logs to standard output.
        """
        self.assertEqual(_twistd("-n"), TwistdLog(stdout=True))

    def test_logfile(self) -> None:
        """
        C{--logfile PATH} logs to that file, by its absolute path.
        """
        self.assertEqual(
            _twistd("--logfile", "logs/lb.log"), TwistdLog(path=os.path.abspath("logs/lb.log"))
        )

    def test_nodaemon_logfile(self) -> None:
        """
        C{twistd -n --logfile PATH} logs to the file, not standard output.
        """
        self.assertEqual(
            _twistd("-n", "--logfile", "/var/log/lb.log"), TwistdLog(path="/var/log/lb.log")
        )

    def test_logfile_dash(self) -> None:
        """
        C{--logfile -} is standard output.
        """
        self.assertEqual(_twistd("-n", "--logfile", "-"), TwistdLog(stdout=True))

    def test_daemon_default(self) -> None:
        """
        A daemon without C{--logfile} logs to C{twistd.log} in the current
        directory.
        """
        self.assertEqual(_twistd(), TwistdLog(path=os.path.abspath("twistd.log")))

    def test_syslog(self) -> None:
        """
        C{--syslog} is not a file: no place to write to.
        """
        self.assertIsNone(_twistd("--syslog"))

    def test_not_twistd(self) -> None:
        """
        Without twistd's options there is no twistd log.
        """
        self.assertIsNone(TwistdLog.from_options(None))


class OpenSinkTests(SynchronousTestCase):
    """
    L{open_sink} picks where the lines of an C{access-log} setting go.
    """

    def test_off(self) -> None:
        """
        C{off} is nowhere.
        """
        self.assertIsNone(open_sink("off", TwistdLog(stdout=True)))

    def test_path(self) -> None:
        """
        A path is a file of its own, not followed (reopened on reload).
        """
        path = self.mktemp()
        sink = open_sink(path, None)
        self.addCleanup(sink.close)
        self.assertIsInstance(sink, FileSink)
        sink.write_lines(b"one\n")
        os.rename(path, path + ".1")
        sink.write_lines(b"two\n")
        self.assertFalse(os.path.exists(path))

    def test_twistd_file(self) -> None:
        """
        C{-} under a twistd logging to a file appends to that file,
        following it through twistd's rotation.
        """
        path = os.path.abspath(self.mktemp())
        sink = open_sink("-", TwistdLog(path=path))
        self.addCleanup(sink.close)
        sink.write_lines(b"one\n")
        os.rename(path, path + ".1")
        sink.write_lines(b"two\n")
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"two\n")

    def test_twistd_stdout(self) -> None:
        """
        C{-} under C{twistd -n} writes to standard output.
        """
        self.assertIsInstance(open_sink("-", TwistdLog(stdout=True)), StreamSink)

    def test_no_twistd_file(self) -> None:
        """
        C{-} when twistd logs elsewhere (syslog) logs one event per line
        through Twisted's logger.
        """
        sink = open_sink("-", None)
        self.assertIsInstance(sink, EventSink)
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        sink.write_lines(b"one\ntwo\n")
        self.assertEqual([formatEvent(e) for e in events], ["one", "two"])

    def test_event_namespace(self) -> None:
        """
        Access lines logged as events are in the C{lbproxy.access}
        namespace, for an observer to tell them from the rest of the log.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        EventSink().write_lines(b"one\n")
        self.assertEqual([e["log_namespace"] for e in events], ["lbproxy.access"])
