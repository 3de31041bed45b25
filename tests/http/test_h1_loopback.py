"""
Tests for L{lbproxy.http.h1} on real sockets, through the whole proxy:
many slow clients, an early answer to an upload, pipelining through app
servers.  Every wait is for an event (a connection, bytes read, an
answer), never for time.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.protocol import ClientCreator, Factory, Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from lbproxy.http.site import ProxySite
from lbproxy.twistedinternals import unsent_bytes
from tests.support import listen, parse_responses, raw_request, start_app, start_proxy

_GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


class _Accepted:
    """
    Watches a site's connections: fires C{opened(n)} once C{n} are open,
    and C{read(n)} once they have read C{n} bytes in all.
    """

    def __init__(self, site: ProxySite) -> None:
        self.connections: list[Any] = []
        self.bytes_read = 0
        self._waiting: list[tuple[str, int, Deferred[None]]] = []
        opened = site.connection_opened

        def connection_opened(connection: Any) -> None:
            opened(connection)
            self.connections.append(connection)
            data_received = connection.dataReceived

            def counting(data: bytes) -> None:
                self.bytes_read += len(data)
                data_received(data)
                self._check()

            connection.dataReceived = counting
            self._check()

        site.connection_opened = connection_opened  # type: ignore[method-assign]

    def opened(self, count: int) -> Deferred[None]:
        """
        Fires once C{count} connections have opened.
        """
        return self._wait("opened", count)

    def read(self, count: int) -> Deferred[None]:
        """
        Fires once the connections have read C{count} bytes in all.
        """
        return self._wait("read", count)

    def _wait(self, what: str, count: int) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        self._waiting.append((what, count, waiter))
        self._check()
        return waiter

    def _check(self) -> None:
        now = {"opened": len(self.connections), "read": self.bytes_read}
        for entry in list(self._waiting):
            what, count, waiter = entry
            if now[what] >= count:
                self._waiting.remove(entry)
                waiter.callback(None)


class SlowlorisTests(TestCase):
    """
    Many slow clients on real sockets, with the header timeout on a
    L{Clock}: they hold connections, not the proxy.
    """

    @inlineCallbacks
    def test_thousand_slow_clients(self) -> Any:
        """
        1,000 clients sending a head one byte per (simulated) second do not
        stop a normal client from being served, and each gets 408 when the
        2 s header timeout has passed since its first byte, not later.
        """
        count = 1000
        _, _, app_port = start_app(self, "3000")
        clock = Clock()
        proxy_port, site, _ = start_proxy(self, [app_port], clock=clock, client_header_timeout=2.0)
        accepted = _Accepted(site)
        refused_at: list[float] = []
        site.refusals.refused = lambda reason, peer, status: refused_at.append(clock.seconds())  # type: ignore[method-assign]
        clients: list[Any] = []
        self.addCleanup(lambda: [c.transport.abortConnection() for c, _ in clients if c.transport])
        # In batches of 50, Twisted's listen backlog, so no SYN is dropped
        # (a dropped SYN is retried a second later).
        for batch in range(50, count + 1, 50):
            clients += [raw_request(proxy_port, _GET[:1]) for _ in range(50)]
            yield accepted.opened(batch)
        yield accepted.read(count)

        response = yield _get(proxy_port)
        self.assertEqual(response.status, 200)

        clock.advance(1)
        for client, _ in clients:
            client.transport.write(_GET[1:2])
        yield accepted.read(2 * count + len(_REQUEST % b"/"))
        self.assertEqual(refused_at, [])

        clock.advance(1)
        self.assertEqual(refused_at, [2.0] * count)
        answers = yield gatherResults([done for _, done in clients])
        self.assertEqual({parse_responses(answer)[0].status for answer in answers}, {408})


_REQUEST = b"GET %s HTTP/1.1\r\nHost: test.example\r\nConnection: close\r\n\r\n"


def _get(port: int, target: bytes = b"/") -> Deferred[Any]:
    """
    One request with C{Connection: close}; fires with the parsed answer.
    """
    _, done = raw_request(port, _REQUEST % target)
    return done.addCallback(lambda data: parse_responses(data)[-1])


class _EarlyAnswerApp(Protocol):
    """
    An app server that, once a request's first bytes are in, stops reading
    and answers with C{size} bytes at once.
    """

    def __init__(self, size: int, connections: list[_EarlyAnswerApp]) -> None:
        self.size = size
        connections.append(self)
        self.answered = False

    def dataReceived(self, data: bytes) -> None:
        if not self.answered:
            self.answered = True
            self.transport.pauseProducing()
            head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % self.size
            self.transport.write(head + b"a" * self.size)


class _Uploader(Protocol):
    """
    A client that uploads C{total} bytes as fast as its transport takes
    them (a push producer), and reads its answer only when told to
    (C{reading}); C{answered} fires once C{size} bytes of answer body are
    in, C{lost} when the connection is.
    """

    def __init__(self, total: int, size: int) -> None:
        self.total = total
        self.size = size
        self.sent = 0
        self.paused = False
        self.head: bytes | None = b""
        self.body = 0
        self.answered: Deferred[None] = Deferred()
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.reading(False)
        self.transport.write(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % self.total
        )
        self.transport.registerProducer(self, True)
        self.resumeProducing()

    def reading(self, reading: bool) -> None:
        """
        Read the answer, or stop reading it.
        """
        if self.transport.connected:
            if reading:
                self.transport.resumeProducing()
            else:
                self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        chunk = b"u" * 65536
        while not self.paused and self.sent < self.total:
            piece = chunk[: self.total - self.sent]
            self.sent += len(piece)
            self.transport.write(piece)

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.paused = True

    def dataReceived(self, data: bytes) -> None:
        if self.head is not None:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            data = self.head.partition(b"\r\n\r\n")[2]
            self.head = None
        self.body += len(data)
        if self.body >= self.size and not self.answered.called:
            self.answered.callback(None)

    def connectionLost(self, reason: Failure) -> None:
        self.lost.callback(None)


class _PacedClient:
    """
    Stands before the proxy resource and watches the client connection,
    to make the client's write buffer fill and drain over and over: the
    uploader reads its answer only while lbproxy's write buffer for it is
    full (the connection was paused), and stops each time it has drained,
    until the answer is finished.  C{attached} fires with the upstream
    transport the request's body is attached to; C{fills} counts the
    times the write buffer filled.
    """

    def __init__(self, site: ProxySite, uploader: _Uploader) -> None:
        self.handler = site.settings.handler
        site.settings.handler = self
        self.uploader = uploader
        self.attached: Deferred[Any] = Deferred()
        self.fills = 0
        self.finished = False
        opened = site.connection_opened

        def connection_opened(connection: Any) -> None:
            opened(connection)
            pause, resume = connection.pauseProducing, connection.resumeProducing

            def paused() -> None:
                pause()
                self.fills += 1
                uploader.reading(True)

            def resumed() -> None:
                resume()
                if not self.finished:
                    uploader.reading(False)

            def answer_done(request: Any) -> None:
                self.finished = True
                done(request)
                uploader.reading(True)

            done = connection.answer_done
            connection.pauseProducing = paused
            connection.resumeProducing = resumed
            connection.answer_done = answer_done

        site.connection_opened = connection_opened  # type: ignore[method-assign]

    def handle(self, request: Any) -> None:
        attach = request.body.attach

        def attaching(transport: Any, sent: Any = None) -> None:
            attach(transport, sent)
            if not self.attached.called:
                self.attached.callback(transport)

        request.body.attach = attaching
        self.handler.handle(request)


class EarlyAnswerUploadTests(TestCase):
    """
    On real sockets: an upload the app server stopped reading stays held
    back while an early answer streams to the same client.
    """

    timeout = 60

    @inlineCallbacks
    def test_answer_draining_does_not_read_held_upload(self) -> Any:
        """
        The app server stops reading a 256 MB upload and answers 16 MB at
        once.  While that answer streams to the client, whose write buffer
        fills and drains again and again, lbproxy keeps the upload paused:
        what it holds for the app server stays under 1 MB instead of
        growing with every drain.
        """
        size, total = 16 * 1024 * 1024, 256 * 1024 * 1024
        apps: list[_EarlyAnswerApp] = []
        app_port = listen(self, Factory.forProtocol(lambda: _EarlyAnswerApp(size, apps)))
        proxy_port, site, client = start_proxy(self, [app_port])
        uploader = _Uploader(total, size)
        paced = _PacedClient(site, uploader)
        upstream_closed: Deferred[None] = Deferred()
        closed = client.connection_closed

        def connection_closed(connection: Any) -> None:
            closed(connection)
            if not upstream_closed.called:
                upstream_closed.callback(None)

        client.connection_closed = connection_closed  # type: ignore[method-assign]
        yield ClientCreator(reactor, lambda: uploader).connectTCP("127.0.0.1", proxy_port)
        self.addCleanup(lambda: upstream_closed)
        self.addCleanup(site.close_connections)
        self.addCleanup(lambda: uploader.lost)
        self.addCleanup(lambda: uploader.transport.abortConnection())
        self.addCleanup(lambda: [app.transport.abortConnection() for app in apps])
        upstream = yield paced.attached
        yield uploader.answered
        self.assertGreater(paced.fills, 1)
        # One read past Twisted's 64 kB write buffer, not the answer's worth
        # of upload (20 MB when a drain resumed reading).
        self.assertLess(unsent_bytes(upstream), 1024 * 1024)


class _HoldingApp(Resource):
    """
    An app server that holds C{/slow} until released (C{arrived} fires
    then) and answers anything else at once with its path.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bytes] = []
        self.held: list[Any] = []
        self.arrived: Deferred[None] = Deferred()

    def render(self, request: Any) -> Any:
        self.seen.append(request.path)
        if request.path == b"/slow":
            self.held.append(request)
            self.arrived.callback(None)
            return NOT_DONE_YET
        return request.path


class PipeliningIntegrationTests(TestCase):
    """
    On real sockets, through app servers: pipelined answers come back in
    order.
    """

    @inlineCallbacks
    def test_slow_first_answer(self) -> Any:
        """
        The first request's answer is slow and the second's would be fast:
        the second is not sent to an app server until the first is
        answered (a whole request on another connection, sent after the
        first arrived, gets there before it), and the client gets both
        answers in order.
        """
        app = _HoldingApp()
        app_site = Site(app)
        port = reactor.listenTCP(0, app_site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        proxy_port, _, _ = start_proxy(self, [port.getHost().port])
        client, done = raw_request(
            proxy_port,
            b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\nGET /fast HTTP/1.1\r\nHost: a\r\n"
            b"Connection: close\r\n\r\n",
        )
        yield app.arrived
        other = yield _get(proxy_port, b"/other")
        self.assertEqual(other.body, b"/other")
        self.assertEqual(app.seen, [b"/slow", b"/other"])
        self.assertEqual(client.received, b"")
        held = app.held.pop()
        held.write(b"/slow")
        held.finish()
        responses = parse_responses((yield done))
        self.assertEqual([r.body for r in responses], [b"/slow", b"/fast"])
        self.assertEqual(app.seen, [b"/slow", b"/other", b"/fast"])
