"""
The nginx walkthrough of C{shared/seed}, with lbproxy in nginx's place: the
two real express apps behind C{--upstream localhost:A,localhost:B}.

Needs node and express: C{.ci/run} installs express and sets
C{LBPROXY_NODE_PATH}.  Without them these tests skip; the same behaviour is
covered with in-process apps by C{tests.proxy.test_proxy} and C{tests.tools.test_demo}.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

from lbproxy.config.model import Config, PoolConfig, ServerConfig
from lbproxy.tap import build_site
from tests.support import get, listen

_SEED = Path(__file__).parent / "seed"


def _node_path() -> str:
    node_path = os.environ.get("LBPROXY_NODE_PATH", "")
    if not shutil.which("node"):
        raise SkipTest("node is not installed")
    if not node_path or not (Path(node_path) / "express").is_dir():
        raise SkipTest("express is not installed (set LBPROXY_NODE_PATH; .ci/run does)")
    return node_path


class _NodeApp(ProcessProtocol):
    """
    A node process that prints C{listening PORT} once it listens.
    """

    def __init__(self) -> None:
        self.listening: Deferred[int] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self._out = b""

    def outReceived(self, data: bytes) -> None:
        self._out += data
        if not self.listening.called and b"\n" in self._out:
            line = self._out.split(b"\n", 1)[0]
            if line.startswith(b"listening "):
                self.listening.callback(int(line.split()[1]))

    def errReceived(self, data: bytes) -> None:
        self._out += data

    def processEnded(self, reason: object) -> None:
        if not self.listening.called:
            self.listening.errback(RuntimeError(f"node exited: {self._out!r}"))
        self.ended.callback(None)


class SeedWalkthroughTests(TestCase):
    """
    The walkthrough's curl session, answered by the real express apps.
    """

    @inlineCallbacks
    def _start_app(self, script: str, keepalive_ms: int | None = None):
        env = {
            "PATH": os.environ.get("PATH", ""),
            "NODE_PATH": self.node_path,
            "PORT": "0",
        }
        if keepalive_ms is not None:
            env["KEEPALIVE_MS"] = str(keepalive_ms)
        app = _NodeApp()
        process = reactor.spawnProcess(
            app, shutil.which("node"), ["node", str(_SEED / script)], env=env
        )

        def stop():
            if app.ended.called:
                return None
            process.signalProcess("TERM")
            return app.ended

        self.addCleanup(stop)
        port = yield app.listening
        return port

    @inlineCallbacks
    def setUp(self):
        self.node_path = _node_path()
        self.port_a = yield self._start_app("app3000.js")
        self.port_b = yield self._start_app("app3001.js")

    def _proxy(self, **settings):
        servers = (
            ServerConfig("localhost", self.port_a),
            ServerConfig("localhost", self.port_b),
        )
        config = Config(pools=(PoolConfig("default", servers),), access_log="off", **settings)
        site, client = build_site(config, reactor)
        self.addCleanup(client.close_idle)
        return listen(self, site), client

    @inlineCallbacks
    def test_alternates(self):
        """
        Six C{GET /} alternate exactly: PORT 3000, PORT 3001, ...
        """
        proxy_port, _ = self._proxy()
        bodies = []
        for _ in range(6):
            bodies.append((yield get(proxy_port)).body)
        self.assertEqual(bodies, [b"PORT 3000", b"PORT 3001"] * 3)

    @inlineCallbacks
    def test_route_on_one_server_only(self):
        """
        C{/test2}, which only the second app has, answers once with the
        first app's own 404 page and once with 200 from the second.
        """
        proxy_port, _ = self._proxy()
        first = yield get(proxy_port, b"/test2")
        second = yield get(proxy_port, b"/test2")
        self.assertEqual(first.status, 404)
        self.assertIn(b"<pre>Cannot GET /test2</pre>", first.body)
        self.assertEqual((second.status, second.body), (200, b"PORT 3001 /test2"))

    @inlineCallbacks
    def test_app_sees_host_and_client_address(self):
        """
        The app sees the client's Host and an X-Forwarded-For with
        127.0.0.1.
        """
        proxy_port, _ = self._proxy()
        response = yield get(proxy_port, b"/headers")
        headers = json.loads(response.body)
        self.assertEqual(headers["host"], "test.example")
        self.assertEqual(headers["x-forwarded-for"], "127.0.0.1")
        self.assertEqual(headers["x-forwarded-proto"], "http")

    @inlineCallbacks
    def test_idle_close_by_node(self):
        """
        Node closing idle keep-alive connections (here after 50 ms) costs no
        request: closed connections leave the pool and the next request
        goes out on a fresh one.
        """
        yield self._start_apps_with_keepalive(50)
        proxy_port, client = self._proxy(upstream_idle_timeout=60.0)
        statuses = []
        for _ in range(4):
            statuses.append((yield get(proxy_port)).status)
        # Wait until node has closed the idle connections (polling the
        # pool, not sleeping for a guessed time).
        for _ in range(500):
            if not any(client._idle.values()):
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertFalse(any(client._idle.values()), "idle connections were not dropped")
        for _ in range(4):
            statuses.append((yield get(proxy_port)).status)
        self.assertEqual(statuses, [200] * 8)

    @inlineCallbacks
    def _start_apps_with_keepalive(self, keepalive_ms):
        """
        Start a second pair of apps (the first pair stays up, unused).
        """
        self.port_a = yield self._start_app("app3000.js", keepalive_ms)
        self.port_b = yield self._start_app("app3001.js", keepalive_ms)
