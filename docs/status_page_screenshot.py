"""
Take docs/status-page.png, the README's picture of the admin status page,
as the browser test opens the page: with headless Chromium.

Run from the source tree (Debian's C{chromium} package installed, or
C{LBPROXY_CHROMIUM} naming one)::

    PYTHONPATH=. python docs/status_page_screenshot.py [OUT.png]

It starts, in one process on loopback, five small app servers (the
C{--demo} apps) and lbproxy over them with its admin: pool C{web} with two
servers, one that does not listen (down after three failed checks) and a
backup; pool C{api} (C{/test2}) with one server.  It sends some requests
(a few answered 404, one refused as malformed), drains the second server,
waits for the checks to take the third out, screenshots C{/} and stops.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import warnings
from typing import Any

from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, readBody

from lbproxy.config.file import load_config
from lbproxy.tap import make_proxy_service
from lbproxy.tools.demo import DemoApp, _QuietSite

CHROMIUM = os.environ.get("LBPROXY_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
WINDOW = "1200,900"


class _Ended(ProcessProtocol):
    def __init__(self) -> None:
        self.done: defer.Deferred[None] = defer.Deferred()

    def processEnded(self, reason: Failure) -> None:
        self.done.callback(None)


class _Malformed(Protocol):
    """
    Sends a request with two Host headers (lbproxy answers 400) and waits
    for the connection to close.
    """

    def __init__(self) -> None:
        self.done: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")

    def connectionLost(self, reason: Failure = None) -> None:
        self.done.callback(None)


def _app(reactor: Any, name: str) -> Any:
    return reactor.listenTCP(0, _QuietSite(DemoApp(name)), interface="127.0.0.1")


async def _main(reactor: Any, out: str) -> None:
    apps = [_app(reactor, name) for name in ("3000", "3001", "3000", "3001", "3001")]
    ports = [app.getHost().port for app in apps]
    # The third server is down: its port was given back, so it refuses.
    await apps[2].stopListening()
    web = ", ".join(f'"127.0.0.1:{port}"' for port in ports[:3])
    config_text = (
        'listen = ["tcp:0:interface=127.0.0.1"]\naccess-log = "off"\n'
        'admin = "tcp:0:interface=127.0.0.1"\nhealth-interval = 1\n'
        f"[upstream.web]\nservers = [{web}, "
        f'{{ address = "127.0.0.1:{ports[3]}", backup = true }}]\n'
        f'[upstream.api]\nservers = ["127.0.0.1:{ports[4]}"]\n'
        '[[route]]\npath = "/test2"\nupstream = "api"\n'
        '[[route]]\nupstream = "web"\n'
    )
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as config_file:
        config_file.write(config_text)
    service, _ = make_proxy_service(load_config(config_file.name), reactor, config_file.name)
    service.startService()
    proxy = (await service.listening_ports())[0].getHost().port
    admin = (await service.admin_port()).getHost().port
    agent = Agent(reactor)
    # readBody warns when an answer arrived whole before it was called
    # (its transport then has no abortConnection): harmless here.
    warnings.filterwarnings("ignore", "Using readBody", DeprecationWarning)
    for path in [b"/"] * 60 + [b"/missing"] * 3 + [b"/test2"] * 12:
        await readBody(await agent.request(b"GET", b"http://127.0.0.1:%d%s" % (proxy, path)))
    malformed = _Malformed()
    await TCP4ClientEndpoint(reactor, "127.0.0.1", proxy).connect(
        Factory.forProtocol(lambda: malformed)
    )
    await malformed.done
    service.admin.act("web", f"127.0.0.1:{ports[1]}", "drain")
    # Three checks at 1 s take the third server out.
    await task.deferLater(reactor, 4, lambda: None)
    profile = tempfile.mkdtemp()
    ended = _Ended()
    reactor.spawnProcess(
        ended,
        CHROMIUM,
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            f"--user-data-dir={profile}",
            f"--window-size={WINDOW}",
            "--virtual-time-budget=5000",
            f"--screenshot={os.path.abspath(out)}",
            f"http://127.0.0.1:{admin}/",
        ],
        env={**os.environ, "HOME": profile},
    )
    await ended.done
    shutil.rmtree(profile, ignore_errors=True)
    os.unlink(config_file.name)
    await service.stopService()
    for app in apps[:2] + apps[3:]:
        await app.stopListening()
    print(f"wrote {out}")


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "docs/status-page.png"
    task.react(lambda reactor: defer.Deferred.fromCoroutine(_main(reactor, target)))
