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

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from lbproxy.admin.page import PAGE, render_page, server_line
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

    def test_listed_and_escaped(self) -> None:
        """
        Each pool is a heading and a list of its servers in the page's
        C{main}, every value escaped; the rest of the page is as shipped.
        """
        page = render_page(
            {
                "web": {"balance": "roundrobin", "servers": [_server()]},
                "a<b": {
                    "balance": "roundrobin",
                    "servers": [_server(state="down", down_reason="<script>x</script> & co")],
                },
            }
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
