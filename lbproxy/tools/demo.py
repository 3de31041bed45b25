# -*- test-case-name: tests.tools.test_demo -*-
"""
Two small in-process app servers for C{--demo}, answering like the two
express apps of the nginx walkthrough lbproxy replaces.

The app named C{3000} has C{/}, C{/test1} and C{/test3}; the app named
C{3001} has C{/}, C{/test1} and C{/test2}.  Any other path gets express's
own 404 page (C{Cannot GET /path}).  They listen on 127.0.0.1 on ports the
system chooses, so they never collide with real app servers; the names are
the walkthrough's ports, so the answers read the same.
"""

from __future__ import annotations

from html import escape

from twisted.internet.interfaces import IListeningPort, IReactorTCP
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

__all__ = ["DemoApp", "listen_demo_apps"]

#: The walkthrough's routes: app name -> paths it answers.
_ROUTES: dict[str, tuple[bytes, ...]] = {
    "3000": (b"/test1", b"/test3"),
    "3001": (b"/test1", b"/test2"),
}

_NOT_FOUND = (
    '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
    "<title>Error</title>\n</head>\n<body>\n<pre>Cannot {method} {path}</pre>\n"
    "</body>\n</html>\n"
)


class DemoApp(Resource):
    """
    One demo app server: C{GET /} answers C{PORT <name>}, C{GET /testN}
    answers C{PORT <name> /testN} for its routes, anything else 404.
    """

    isLeaf = True

    def __init__(self, name: str) -> None:
        """
        @param name: C{"3000"} or C{"3001"}, the walkthrough's port.
        """
        super().__init__()
        self.name = name
        self._routes = _ROUTES[name]

    def render(self, request: Request) -> bytes:
        """
        Answer as the express app would.
        """
        path = request.path
        request.setHeader(b"X-Powered-By", b"Express")
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        body: bytes
        if request.method in (b"GET", b"HEAD") and path == b"/":
            body = f"PORT {self.name}".encode()
        elif request.method in (b"GET", b"HEAD") and path in self._routes:
            body = f"PORT {self.name} {path.decode()}".encode()
        else:
            request.setResponseCode(404)
            # Escaped as express's finalhandler does: the path is the client's.
            page = _NOT_FOUND.format(
                method=escape(request.method.decode("latin-1")),
                path=escape(path.decode("latin-1")),
            )
            body = page.encode("utf-8")
        if request.method == b"HEAD":
            request.setHeader(b"Content-Length", b"%d" % len(body))
            return b""
        return body


class _QuietSite(Site):
    """
    A Site that writes no access log and no start/stop lines: the proxy's
    own log already shows every request.
    """

    noisy = False

    def log(self, request: object) -> None:
        """
        Log nothing.
        """


def listen_demo_apps(reactor: IReactorTCP) -> list[IListeningPort]:
    """
    Start both demo apps on 127.0.0.1, ports chosen by the system.

    @return: the listening ports, app C{3000} first.
    """
    return [
        # IReactorTCP.listenTCP wants a ServerFactory[_ProtoWithFactory], and
        # Twisted's Factory is invariant in its protocol type: no Site (nor
        # most factories) matches that annotation.
        reactor.listenTCP(
            0,
            _QuietSite(DemoApp(name)),  # type: ignore[arg-type]
            interface="127.0.0.1",
        )
        for name in ("3000", "3001")
    ]
