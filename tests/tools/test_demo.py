"""
Tests for L{lbproxy.tools.demo}: the two express-like demo app servers, served for
real on 127.0.0.1 and fetched with raw HTTP/1.1.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.server import Site

from lbproxy.tools.demo import DemoApp, listen_demo_apps


class _Response:
    """
    A response as it came over the wire.

    @ivar status: the status code.
    @ivar headers: lower-cased header names to their (last) value.
    @ivar body: everything after the header block.
    """

    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        status_line, *lines = head.split(b"\r\n")
        self.status = int(status_line.split(b" ")[1])
        self.headers = {}
        for line in lines:
            name, _, value = line.partition(b":")
            self.headers[name.strip().lower()] = value.strip()


class _OneRequest(Protocol):
    """
    Send one request with C{Connection: close} and collect the response
    until the server closes, so both ends are closed when it fires.
    """

    def __init__(self, request: bytes) -> None:
        self._request = request
        self._received: list[bytes] = []
        self.done: Deferred[_Response] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self._request)

    def dataReceived(self, data: bytes) -> None:
        self._received.append(data)

    def connectionLost(self, reason: Failure) -> None:
        self.done.callback(_Response(b"".join(self._received)))


@inlineCallbacks
def _fetch(port: IListeningPort, method: bytes, path: bytes):  # type: ignore[no-untyped-def]
    """
    Send C{method path} to C{port} and return the L{_Response}.
    """
    request = b"%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" % (method, path)
    protocol = _OneRequest(request)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
    yield connectProtocol(endpoint, protocol)
    response = yield protocol.done
    return response


class DemoAppTests(TestCase):
    """
    L{DemoApp} answers as the walkthrough's express apps do.
    """

    def _listen(self, name: str) -> IListeningPort:
        """
        Serve the demo app C{name} on 127.0.0.1, a port the system chooses,
        until the test ends.
        """
        port = reactor.listenTCP(0, Site(DemoApp(name)), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port

    @inlineCallbacks
    def test_root(self):  # type: ignore[no-untyped-def]
        """
        C{GET /} answers C{PORT 3000}, as HTML from Express.
        """
        response = yield _fetch(self._listen("3000"), b"GET", b"/")
        self.assertEqual(
            (
                response.status,
                response.body,
                response.headers[b"content-type"],
                response.headers[b"x-powered-by"],
            ),
            (200, b"PORT 3000", b"text/html; charset=utf-8", b"Express"),
        )

    @inlineCallbacks
    def test_root_other_app(self):  # type: ignore[no-untyped-def]
        """
        App C{3001} answers C{GET /} with C{PORT 3001}.
        """
        response = yield _fetch(self._listen("3001"), b"GET", b"/")
        self.assertEqual((response.status, response.body), (200, b"PORT 3001"))

    @inlineCallbacks
    def test_route(self):  # type: ignore[no-untyped-def]
        """
        C{GET /test1} answers C{PORT 3000 /test1}.
        """
        response = yield _fetch(self._listen("3000"), b"GET", b"/test1")
        self.assertEqual((response.status, response.body), (200, b"PORT 3000 /test1"))

    @inlineCallbacks
    def test_route_query(self):  # type: ignore[no-untyped-def]
        """
        The query string does not change the route.
        """
        response = yield _fetch(self._listen("3000"), b"GET", b"/test1?x=1")
        self.assertEqual((response.status, response.body), (200, b"PORT 3000 /test1"))

    @inlineCallbacks
    def test_missing_route(self):  # type: ignore[no-untyped-def]
        """
        App C{3000} has no C{/test2}: 404 with express's C{Cannot GET} page.
        """
        response = yield _fetch(self._listen("3000"), b"GET", b"/test2")
        self.assertEqual(response.status, 404)
        self.assertIn(b"<pre>Cannot GET /test2</pre>", response.body)

    @inlineCallbacks
    def test_other_app_route(self):  # type: ignore[no-untyped-def]
        """
        App C{3001} has C{/test2}.
        """
        response = yield _fetch(self._listen("3001"), b"GET", b"/test2")
        self.assertEqual((response.status, response.body), (200, b"PORT 3001 /test2"))

    @inlineCallbacks
    def test_other_method(self):  # type: ignore[no-untyped-def]
        """
        A method other than GET and HEAD gets the 404 page naming it.
        """
        response = yield _fetch(self._listen("3000"), b"POST", b"/")
        self.assertEqual(response.status, 404)
        self.assertIn(b"<pre>Cannot POST /</pre>", response.body)

    @inlineCallbacks
    def test_not_found_escaped(self):  # type: ignore[no-untyped-def]
        """
        The 404 page escapes the path as HTML, as express does.
        """
        response = yield _fetch(self._listen("3000"), b"GET", b"/<b>&")
        self.assertIn(b"<pre>Cannot GET /&lt;b&gt;&amp;</pre>", response.body)

    @inlineCallbacks
    def test_head(self):  # type: ignore[no-untyped-def]
        """
        C{HEAD /} has no body but the C{Content-Length} of C{GET /}.
        """
        response = yield _fetch(self._listen("3000"), b"HEAD", b"/")
        self.assertEqual(
            (response.status, response.headers[b"content-length"], response.body),
            (200, b"9", b""),
        )


class ListenDemoAppsTests(TestCase):
    """
    L{listen_demo_apps} starts both apps on loopback.
    """

    @inlineCallbacks
    def test_both_apps(self):  # type: ignore[no-untyped-def]
        """
        App C{3000} then app C{3001} listen on 127.0.0.1, on two ports the
        system chose.
        """
        ports = listen_demo_apps(reactor)
        for port in ports:
            self.addCleanup(port.stopListening)
        bodies = []
        for port in ports:
            response = yield _fetch(port, b"GET", b"/")
            bodies.append((port.getHost().host, response.body))
        self.assertEqual(bodies, [("127.0.0.1", b"PORT 3000"), ("127.0.0.1", b"PORT 3001")])
        self.assertNotEqual(ports[0].getHost().port, ports[1].getHost().port)
