"""
Tests for L{lbproxy.admin.page}: the servers written in the page as
served, and the page in a real browser: headless Chromium (Debian's
C{chromium} package) loads C{/} from a running admin, runs the page's
script, and the DOM it dumps must show both servers as the script drew
them.  The browser test is skipped, saying why, when Chromium is not
installed.
"""

from __future__ import annotations

import os
import re
import shutil
from html import escape

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from lbproxy.admin.page import PAGE, ago, render_page, server_line, source_line
from lbproxy.admin.resource import AdminResource, AdminSite
from lbproxy.balancing.server import AdminState
from tests.admin.support import FakeProxy
from tests.support import listen

#: Where Debian's package puts it; LBPROXY_CHROMIUM names another.
CHROMIUM = os.environ.get("LBPROXY_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"

#: Chromium's switches for a quiet, throwaway headless run.  The virtual
#: time budget lets the page's script run its first fetch and draw (timers
#: and network included) before the DOM is dumped.
HEADLESS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--virtual-time-budget=5000",
]


class _Collect(ProcessProtocol):
    """
    Collects a process's standard output; C{done} fires with it when the
    process ends.
    """

    def __init__(self) -> None:
        self.out = b""
        self.done: Deferred[bytes] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def processEnded(self, reason: Failure) -> None:
        self.done.callback(self.out)


def run_chromium(testcase: TestCase, *arguments: str) -> Deferred[bytes]:
    """
    Run headless Chromium with C{arguments} (its own profile in a
    temporary directory), killed if it takes over 60 s; fires with its
    standard output.
    """
    profile = testcase.mktemp()
    os.makedirs(profile)
    collect = _Collect()
    process = reactor.spawnProcess(
        collect,
        CHROMIUM,
        [CHROMIUM, *HEADLESS, f"--user-data-dir={profile}", *arguments],
        env={**os.environ, "HOME": profile},
    )

    def kill() -> None:
        if process.pid is not None:
            process.signalProcess("KILL")

    timer = reactor.callLater(60, kill)

    def ended(out: bytes) -> bytes:
        if timer.active():
            timer.cancel()
        return out

    return collect.done.addCallback(ended)


def _server(**fields: object) -> dict[str, object]:
    server: dict[str, object] = {
        "address": "10.0.0.1:80",
        "state": "up",
        "backup": False,
        "down_reason": None,
    }
    server.update(fields)
    return server


def _source(**fields: object) -> dict[str, object]:
    source: dict[str, object] = {
        "url": "dns+a://app.internal:3000",
        "resolver": "127.0.0.1:53",
        "last_lookup": 997.0,
        "last_outcome": "ok",
        "last_error": "",
        "ttl": 9.0,
        "failing_since": None,
        "servers": ["10.0.0.5:3000", "10.0.0.6:3000"],
    }
    source.update(fields)
    return source


class RenderTests(SynchronousTestCase):
    """
    L{render_page}: the pools and servers written in the page as served.
    """

    def test_server_line(self) -> None:
        """
        A server's line gives its address and state, says backup, and why
        it is down.
        """
        self.assertEqual(server_line(_server()), "10.0.0.1:80 up")
        self.assertEqual(
            server_line(_server(state="down", backup=True, down_reason="3 checks failed: 500")),
            "10.0.0.1:80 down (backup): 3 checks failed: 500",
        )

    def test_ago(self) -> None:
        """
        Ages in seconds up to 2 minutes, then minutes up to 2 hours, then
        hours; halves rounded up; a time to come is 0 s ago.
        """
        self.assertEqual(
            [ago(1000 - seconds, 1000) for seconds in (-3, 0.5, 119.4, 150, 7199, 7200, 9000)],
            ["0 s ago", "1 s ago", "119 s ago", "3 min ago", "120 min ago", "2 h ago", "3 h ago"],
        )

    def test_source_line(self) -> None:
        """
        A DNS source's line: its resolver, its last lookup's outcome, age,
        TTL or error and outage, and the servers it gives.
        """
        self.assertEqual(
            source_line(_source(), 1000.0),
            "via 127.0.0.1:53: ok 3 s ago, TTL 9 s; 2 servers: 10.0.0.5:3000 10.0.0.6:3000",
        )
        self.assertEqual(
            source_line(_source(last_error="AAAA: refused (REFUSED)", ttl=0.5), 1000.0),
            "via 127.0.0.1:53: ok 3 s ago (AAAA: refused (REFUSED)), TTL 0.5 s; "
            "2 servers: 10.0.0.5:3000 10.0.0.6:3000",
        )
        self.assertEqual(
            source_line(
                _source(
                    last_outcome="failed",
                    last_error="timed out",
                    failing_since=880.0,
                    servers=["10.0.0.5:3000"],
                ),
                1000.0,
            ),
            "via 127.0.0.1:53: failed 3 s ago (timed out), failing since 2 min ago; "
            "keeps 1 server: 10.0.0.5:3000",
        )
        self.assertEqual(
            source_line(
                _source(
                    resolver="system",
                    last_outcome="empty",
                    last_error="name not found",
                    failing_since=997.0,
                    ttl=None,
                    servers=[],
                ),
                1000.0,
            ),
            "via system: empty 3 s ago (name not found), failing since 3 s ago; no servers",
        )
        self.assertEqual(
            source_line(_source(last_lookup=None, last_outcome="", ttl=None, servers=[]), 1000.0),
            "via 127.0.0.1:53: not looked up yet; no servers",
        )

    def test_sources_listed_and_escaped(self) -> None:
        """
        A pool's DNS sources are a list before its servers, each its URL
        and line, escaped.
        """
        page = render_page(
            {
                "web": {
                    "balance": "roundrobin",
                    "discovery": [_source(url="dns+a://<b>:1", last_error="a & b")],
                    "servers": [],
                }
            },
            1000.0,
        )
        main = re.search(rb'<main id="pools">(.*?)</main>', page, re.DOTALL)
        assert main is not None
        self.assertEqual(
            main.group(1),
            b"<section><h2>web</h2>"
            b'<div class="pool-meta">balance roundrobin</div>'
            b'<ul class="sources"><li>dns+a://&lt;b&gt;:1 via 127.0.0.1:53: ok 3 s ago '
            b"(a &amp; b), TTL 9 s; 2 servers: 10.0.0.5:3000 10.0.0.6:3000</li></ul>"
            b"<ul></ul></section>",
        )

    def test_listed_and_escaped(self) -> None:
        """
        Each pool is a heading and a list of its servers in the page's
        C{main}, every value escaped; the rest of the page is as shipped.
        """
        page = render_page(
            {
                "web": {"balance": "roundrobin", "discovery": [], "servers": [_server()]},
                "a<b": {
                    "balance": "roundrobin",
                    "discovery": [],
                    "servers": [_server(state="down", down_reason="<script>x</script> & co")],
                },
            },
            0.0,
        )
        main = re.search(rb'<main id="pools">(.*?)</main>', page, re.DOTALL)
        assert main is not None
        self.assertEqual(
            main.group(1),
            b"<section><h2>web</h2>"
            b'<div class="pool-meta">balance roundrobin</div>'
            b"<ul><li>10.0.0.1:80 up</li></ul></section>"
            b"<section><h2>a&lt;b</h2>"
            b'<div class="pool-meta">balance roundrobin</div>'
            b"<ul><li>10.0.0.1:80 down: &lt;script&gt;x&lt;/script&gt; &amp; co</li></ul>"
            b"</section>",
        )
        self.assertEqual(page.replace(main.group(1), b""), PAGE)


class StatusPageTests(TestCase):
    """
    The status page, opened by headless Chromium.
    """

    def setUp(self) -> None:
        if not os.access(CHROMIUM, os.X_OK):
            raise SkipTest(
                f"no Chromium at {CHROMIUM} (apt-get install chromium, or set LBPROXY_CHROMIUM)"
            )
        self.proxy = FakeProxy()
        self.port = listen(self, AdminSite(AdminResource(self.proxy.core)))

    @inlineCallbacks
    def test_script_draws_servers(self):
        """
        After the page's script ran, the DOM names both servers, each in a
        card with its state (one drained), and the pool with its strategy:
        none of which the served HTML holds.
        """
        _, sent = self.proxy.request()
        self.proxy.answer(sent, 200, 0.003)
        self.proxy.pool.set_admin(self.proxy.pool.servers[1], AdminState.DRAINING)
        dom = yield run_chromium(self, "--dump-dom", f"http://127.0.0.1:{self.port}/")
        cards = re.findall(
            rb'<article class="server (\w+)"><div class="title">'
            rb'<span class="address">([^<]+)</span>',
            dom,
        )
        self.assertEqual(cards, [(b"up", b"10.0.0.1:80"), (b"draining", b"10.0.0.2:80")], dom)
        self.assertIn(b"<h2>web</h2>", dom)
        self.assertIn(b"balance roundrobin", dom)
        self.assertIn(b"<dd>2xx 1</dd>", dom)
        self.assertNotIn(b"10.0.0.1:80", PAGE)

    @inlineCallbacks
    def test_script_draws_sources(self):
        """
        The script draws each DNS source as its URL and the line
        L{source_line} writes (the script's copy says the same), escaped.
        """
        sources = self.proxy.add_sources()
        sources[1].last_error = "<b>timed</b> out"
        dom = yield run_chromium(self, "--dump-dom", f"http://127.0.0.1:{self.port}/")
        drawn = re.findall(
            rb'<li class="source (\w+)"><span class="url">([^<]+)</span>([^<]*)</li>', dom
        )
        upstreams = self.proxy.core.upstreams()
        now = self.proxy.clock.seconds()
        self.assertEqual(
            drawn,
            [
                (
                    (source["last_outcome"] or "none").encode(),
                    source["url"].encode(),
                    b" " + escape(source_line(source, now), quote=False).encode(),
                )
                for source in upstreams["web"]["discovery"]
            ],
            dom,
        )
        self.assertEqual(len(drawn), 3)
        self.assertIn(b"&lt;b&gt;timed&lt;/b&gt; out", dom)
