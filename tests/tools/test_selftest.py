"""
Tests for L{lbproxy.tools.selftest} and C{lbproxy selftest URL}: the corpus sent
to a running proxy, judged from the outside.
"""

from __future__ import annotations

import io
import os
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

import lbproxy
from lbproxy.cli import main
from lbproxy.tools.corpus import APP, CASES, Case, Reach
from lbproxy.tools.selftest import (
    Outcome,
    format_table,
    judge,
    parse_target,
    run_selftest,
    split_statuses,
)
from tests.support import start_app, start_proxy

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(lbproxy.__file__)))


def _case(expect: tuple[int, ...]) -> Case:
    return Case("x", b"GET / HTTP/1.1\r\n\r\n", expect, Reach.NONE, "test")


class ParseTargetTests(SynchronousTestCase):
    """
    L{parse_target} reads the URL to test.
    """

    def test_http(self) -> None:
        """
        Host, port, authority and path come from the URL.
        """
        target = parse_target("http://127.0.0.1:8080/app")
        self.assertEqual(
            (target.host, target.port, target.tls, target.authority, target.path),
            ("127.0.0.1", 8080, False, b"127.0.0.1:8080", b"/app/"),
        )

    def test_https_default_port(self) -> None:
        """
        An https URL without a port means TLS on 443, path C{/}.
        """
        target = parse_target("https://lb.example")
        self.assertEqual((target.port, target.tls, target.path), (443, True, b"/"))

    def test_other_schemes(self) -> None:
        """
        Anything but an http(s) URL is a ValueError.
        """
        for url in ("ftp://a/", "127.0.0.1:8080", "http:///x"):
            self.assertRaises(ValueError, parse_target, url)


class SplitStatusesTests(SynchronousTestCase):
    """
    L{split_statuses} finds each answer in the bytes received.
    """

    def test_lengths_and_chunks(self) -> None:
        """
        Answers framed by length and chunked follow each other.
        """
        data = (
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nHTTP"
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
        )
        self.assertEqual(split_statuses(data), ([200, 404, 400], True))

    def test_interim_skipped(self) -> None:
        """
        A 100 Continue is not an answer.
        """
        data = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        self.assertEqual(split_statuses(data), ([200], True))

    def test_until_close(self) -> None:
        """
        An answer without length runs to the end (Twisted's bare 400).
        """
        self.assertEqual(split_statuses(b"HTTP/1.1 400 Bad Request\r\n\r\n"), ([400], True))

    def test_garbage(self) -> None:
        """
        Bytes that are not an answer are reported as not understood.
        """
        self.assertEqual(split_statuses(b"SSH-2.0-OpenSSH\r\n\r\n"), ([], False))


class JudgeTests(SynchronousTestCase):
    """
    L{judge} says why an outcome is not lbproxy's.
    """

    def test_pass(self) -> None:
        """
        The right statuses on a closed connection pass; an app answer may
        be any status but a refusal.
        """
        self.assertEqual(judge(_case((400,)), [400], True), "")
        self.assertEqual(judge(_case((APP, 400)), [404, 400], True), "")

    def test_wrong_status(self) -> None:
        """
        Another status fails.
        """
        self.assertEqual(judge(_case((400,)), [200], True), "expected 400, got 200")

    def test_app_refused(self) -> None:
        """
        A refusal where the app should have answered fails.
        """
        self.assertIn("refused with 400", judge(_case((APP,)), [400], True))

    def test_extra_answer(self) -> None:
        """
        More answers than requests means a request was smuggled.
        """
        self.assertIn("got through", judge(_case((APP,)), [200, 200], True))

    def test_open_connection(self) -> None:
        """
        A connection not closed after the case fails.
        """
        self.assertEqual(judge(_case((400,)), [400], False), "the connection was left open")

    def test_no_answer(self) -> None:
        """
        No answer at all fails.
        """
        self.assertEqual(judge(_case((400,)), [], False), "no answer")


class FormatTableTests(SynchronousTestCase):
    """
    L{format_table} prints a line per case and a summary.
    """

    def test_table(self) -> None:
        """
        Each case's mark, name, expected and got statuses and source, the
        reason of a failure, and the totals.
        """
        good = Outcome(CASES[0], (400,), True, True, "")
        bad = Outcome(CASES[1], (200,), True, False, "expected 400, got 200")
        table = format_table("http://127.0.0.1:8080/", [good, bad])
        lines = table.splitlines()
        self.assertEqual(lines[0], "lbproxy selftest http://127.0.0.1:8080/: 2 cases")
        self.assertTrue(lines[3].startswith("PASS  cl-te  400"), lines[3])
        self.assertTrue(lines[4].startswith("FAIL  te-cl  400       200"), lines[4])
        self.assertIn("-> expected 400, got 200", lines[5])
        self.assertEqual(lines[-1], "1 passed, 1 failed")


class RunSelftestTests(TestCase):
    """
    L{run_selftest} against real servers on loopback.
    """

    @inlineCallbacks
    def test_lbproxy_passes(self):
        """
        Every case passes against lbproxy in front of app servers.
        """
        _, _, port_a = start_app(self, "3000")
        _, _, port_b = start_app(self, "3001")
        proxy_port, _, _ = start_proxy(self, [port_a, port_b])
        outcomes = yield Deferred.fromCoroutine(
            run_selftest(reactor, f"http://127.0.0.1:{proxy_port}/", timeout=10.0)
        )
        failed = [(o.case.name, o.statuses, o.note) for o in outcomes if not o.passed]
        self.assertEqual(failed, [])
        self.assertEqual(len(outcomes), len(CASES))

    @inlineCallbacks
    def test_lenient_server_fails(self):
        """
        A server that answers 200 to anything and keeps the connection
        fails: wrong statuses, extra answers, connections left open.
        """

        class Lenient(Protocol):
            def dataReceived(self, data: bytes) -> None:
                for _ in range(data.count(b"HTTP/1.1\r\n")):
                    self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

        port = reactor.listenTCP(0, Factory.forProtocol(Lenient), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        cases = {case.name: case for case in CASES}
        chosen = [cases["cl-te"], cases["te-cl"], cases["chunked-valid"]]
        outcomes = yield Deferred.fromCoroutine(
            run_selftest(reactor, f"http://127.0.0.1:{port.getHost().port}/", 0.5, chosen)
        )
        self.assertEqual(
            [o.note for o in outcomes],
            [
                "expected 400, got 200",
                "more answers than requests: a request got through on its own",
                "the connection was left open",
            ],
        )


class SelftestCommandTests(TestCase):
    """
    C{lbproxy selftest URL}, the console command.
    """

    def test_bad_url(self) -> None:
        """
        A URL that is not http(s) is reported with status 2, without
        running anything.
        """
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        self.assertEqual(main(["selftest", "ftp://x/"]), 2)
        self.assertIn("is not an http:// or https:// URL", stderr.getvalue())

    @inlineCallbacks
    def test_command(self):
        """
        Run as a program against lbproxy, it prints a passing line per case
        and the totals, and exits 0.
        """
        _, _, app_port = start_app(self, "3000")
        proxy_port, _, _ = start_proxy(self, [app_port])
        env = dict(os.environ, PYTHONPATH=_ROOT)
        out, err, code = yield getProcessOutputAndValue(
            sys.executable,
            ["-m", "lbproxy.cli", "selftest", f"http://127.0.0.1:{proxy_port}/"],
            env=env,
            path=_ROOT,
        )
        self.assertEqual(code, 0, out + err)
        lines = out.decode().splitlines()
        self.assertEqual(lines[-1], f"{len(CASES)} passed, 0 failed")
        self.assertEqual(sum(line.startswith("PASS  ") for line in lines), len(CASES))
