"""
The malformed-input corpus (L{lbproxy.tools.corpus}) against a real lbproxy in
front of a recording app server, all on loopback: one test per case, each
checking the answers and what the app server saw.
"""

from __future__ import annotations

from typing import Any

import httptools
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from lbproxy.tools.corpus import APP, CASES, MARKER, Case, Reach
from lbproxy.tools.selftest import Target, run_case
from tests.support import get, start_proxy

#: The path of the request sent after each case to flush the proxy.
_SENTINEL = b"/lbproxy-test-sentinel"


class _RecordingApp(Protocol):
    """
    An app server connection that records every byte and every complete
    request (parsed by llhttp), answering each with C{200 ok}.
    """

    def __init__(self, owner: _Recorder) -> None:
        self.owner = owner
        self.raw = b""
        self.requests: list[dict[str, Any]] = []
        self.parser = httptools.HttpRequestParser(self)
        self.partial: dict[str, Any] = {}
        self.broken = False

    def connectionMade(self) -> None:
        self.owner.connections.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.raw += data
        if self.broken:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.broken = True
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        pass

    # llhttp callbacks

    def on_message_begin(self) -> None:
        self.partial = {"url": b"", "headers": [], "body": b""}

    def on_url(self, url: bytes) -> None:
        self.partial["url"] += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.partial["headers"].append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self.partial["body"] += body

    def on_message_complete(self) -> None:
        self.partial["method"] = self.parser.get_method()
        self.requests.append(self.partial)
        self.partial = {}
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


class _Recorder:
    """
    Everything the app server saw, over all its connections.
    """

    def __init__(self) -> None:
        self.connections: list[_RecordingApp] = []

    def requests(self) -> list[dict[str, Any]]:
        """
        The complete requests, the sentinel left out.
        """
        return [
            request
            for connection in self.connections
            for request in connection.requests
            if request["url"] != _SENTINEL
        ]

    def raw(self) -> bytes:
        return b"".join(connection.raw for connection in self.connections)


class CorpusTests(TestCase):
    """
    Every corpus case gets lbproxy's answer, and the app server behind it
    sees only what the case allows.  (One test per case is added below.)
    """

    def setUp(self) -> None:
        self.recorder = _Recorder()
        port = reactor.listenTCP(
            0, Factory.forProtocol(lambda: _RecordingApp(self.recorder)), interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        self.addCleanup(self._close_app_connections)
        self.proxy_port, _, _ = start_proxy(self, [port.getHost().port])

    def _close_app_connections(self) -> None:
        for connection in self.recorder.connections:
            connection.transport.abortConnection()

    @inlineCallbacks
    def check(self, case: Case):
        """
        Run C{case}, then a sentinel request, and check the answers and
        what the app server saw.
        """
        target = Target("127.0.0.1", self.proxy_port, False, b"lbproxy.test", b"/")
        outcome = yield Deferred.fromCoroutine(run_case(reactor, target, case, timeout=10.0))
        expected = tuple(200 if status == APP else status for status in case.expect)
        self.assertEqual(outcome.statuses, expected, outcome.note)
        self.assertTrue(outcome.closed, "lbproxy left the connection open")
        # Anything lbproxy forwarded because of the case has been written
        # upstream by now; the sentinel's round trip lets it arrive.
        sentinel = yield get(self.proxy_port, _SENTINEL)
        self.assertEqual(sentinel.status, 200)
        raw = self.recorder.raw()
        self.assertNotIn(MARKER, raw)
        requests = self.recorder.requests()
        if case.reach is Reach.NONE:
            for connection in self.recorder.connections:
                self.assertTrue(
                    connection.raw == b"" or connection.raw.startswith(b"GET " + _SENTINEL),
                    connection.raw,
                )
        elif case.reach is Reach.ANSWERED:
            self.assertEqual(len(requests), case.expect.count(APP))
            for connection in self.recorder.connections:
                self.assertFalse(connection.broken, connection.raw)
                self.assertEqual(connection.partial, {}, "a partial request was forwarded")
        else:
            self.assertEqual(requests, [])


def _test_for(case: Case) -> Any:
    def test(self: CorpusTests) -> Any:
        return self.check(case)

    test.__name__ = "test_" + case.name.replace("-", "_").replace(".", "_")
    test.__doc__ = f"Corpus case {case.name}: {case.source}."
    return test


for _case in CASES:
    _method = _test_for(_case)
    setattr(CorpusTests, _method.__name__, _method)
del _case, _method


class CorpusShapeTests(TestCase):
    """
    The corpus itself: big enough, named uniquely, every case sourced.
    """

    def test_size(self) -> None:
        """
        There are at least 40 cases, with unique names.
        """
        names = [case.name for case in CASES]
        self.assertGreaterEqual(len(names), 40)
        self.assertEqual(len(set(names)), len(names))

    def test_sources(self) -> None:
        """
        Every case names where it comes from.
        """
        for case in CASES:
            self.assertTrue(case.source.strip(), case.name)

    def test_issue_sources_covered(self) -> None:
        """
        The CVEs the issue names each have a case.
        """
        sources = " ".join(case.source for case in CASES)
        for cve in (
            "CVE-2020-10108",
            "CVE-2020-10109",
            "CVE-2022-24801",
            "CVE-2023-46137",
            "CVE-2023-40225",
        ):
            self.assertIn(cve, sources)
