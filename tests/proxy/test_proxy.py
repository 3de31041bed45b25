"""
Integration tests: lbproxy between a raw client and real app servers, all
on 127.0.0.1 with system-chosen ports.
"""

from __future__ import annotations

import hashlib

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ConnectionLost
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support import (
    get,
    parse_responses,
    pattern_digest,
    raw_request,
    refused_port,
    start_app,
    start_proxy,
)


def _request(method: bytes, path: bytes, extra: bytes = b"", body: bytes = b"") -> bytes:
    return (
        method
        + b" "
        + path
        + b" HTTP/1.1\r\nHost: test.example\r\n"
        + extra
        + b"Connection: close\r\n\r\n"
        + body
    )


class BalancingTests(TestCase):
    """
    Requests alternate over the servers and answers pass through unchanged.
    """

    def setUp(self) -> None:
        self.app_a, self.site_a, port_a = start_app(self, "3000")
        self.app_b, self.site_b, port_b = start_app(self, "3001")
        self.proxy_port, self.site, self.client = start_proxy(self, [port_a, port_b])

    @inlineCallbacks
    def test_alternates_in_order(self):
        """
        Six requests alternate exactly between the two servers, first first.
        """
        bodies = []
        for _ in range(6):
            response = yield get(self.proxy_port)
            bodies.append(response.body)
        self.assertEqual(bodies, [b"PORT 3000", b"PORT 3001"] * 3)

    @inlineCallbacks
    def test_not_found_passes_through(self):
        """
        An app server's 404, status, reason and body, reaches the client.
        """
        response = yield get(self.proxy_port, b"/test2")
        self.assertEqual((response.status, response.reason), (404, b"Not Found"))
        self.assertEqual(response.body, b"Cannot GET /test2")

    @inlineCallbacks
    def test_post_body_passes_through(self):
        """
        A POST body reaches the app server whole, with its length.
        """
        body = bytes(range(256)) * 40
        _, done = raw_request(
            self.proxy_port,
            _request(b"POST", b"/echo", b"Content-Length: %d\r\n" % len(body), body),
        )
        response = parse_responses((yield done))[0]
        self.assertEqual(response.body, body)
        seen = self.app_a.requests[0]
        self.assertEqual(seen.headers[b"content-length"], [b"%d" % len(body)])

    @inlineCallbacks
    def test_chunked_request_body(self):
        """
        A chunked request body reaches the app server whole, chunked again
        (it is streamed, so its length is not known in advance).
        """
        chunked = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        _, done = raw_request(
            self.proxy_port,
            _request(b"POST", b"/echo", b"Transfer-Encoding: chunked\r\n", chunked),
        )
        response = parse_responses((yield done))[0]
        self.assertEqual(response.body, b"hello world")
        seen = self.app_a.requests[0]
        self.assertEqual(seen.body, b"hello world")
        self.assertEqual(seen.headers[b"transfer-encoding"], [b"chunked"])
        self.assertNotIn(b"content-length", seen.headers)

    @inlineCallbacks
    def test_keepalive_reuses_upstream_connections(self):
        """
        Twenty requests open one connection per app server, not twenty.
        """
        for _ in range(20):
            yield get(self.proxy_port)
        self.assertEqual((self.site_a.connections, self.site_b.connections), (1, 1))

    @inlineCallbacks
    def test_headers_forwarded(self):
        """
        The app server sees the client's Host, an X-Forwarded-For ending
        with the client's address, X-Forwarded-Proto/Host, and no
        hop-by-hop headers (nor those Connection names).
        """
        _, done = raw_request(
            self.proxy_port,
            b"GET / HTTP/1.1\r\nHost: test.example\r\nX-Forwarded-For: 10.1.1.1\r\n"
            b"X-Secret: 1\r\nConnection: X-Secret, close\r\nKeep-Alive: timeout=5\r\n\r\n",
        )
        response = parse_responses((yield done))[0]
        self.assertEqual(response.header(b"connection"), [b"close"])
        seen = self.app_a.requests[0].headers
        self.assertEqual(seen[b"host"], [b"test.example"])
        self.assertEqual(seen[b"x-forwarded-for"], [b"10.1.1.1, 127.0.0.1"])
        self.assertEqual(seen[b"x-forwarded-proto"], [b"http"])
        self.assertEqual(seen[b"x-forwarded-host"], [b"test.example"])
        self.assertNotIn(b"x-secret", seen)
        self.assertNotIn(b"keep-alive", seen)

    @inlineCallbacks
    def test_target_forwarded_byte_for_byte(self):
        """
        The request target reaches the app server exactly as sent: no
        percent-decoding, no dot-segment removal.
        """
        target = b"/a%2Fb/../c%20d?x=%41&y=1+2"
        yield get(self.proxy_port, target)
        self.assertEqual(self.app_a.requests[0].uri, target)

    @inlineCallbacks
    def test_repeated_headers_stay_repeated(self):
        """
        Two Set-Cookie headers from the app server stay two.
        """
        response = yield get(self.proxy_port, b"/cookies")
        self.assertEqual(response.header(b"set-cookie"), [b"a=1", b"b=2"])

    @inlineCallbacks
    def test_head(self):
        """
        A HEAD answer keeps the app server's Content-Length and has no body;
        the upstream connection stays usable.
        """
        _, done = raw_request(
            self.proxy_port,
            b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nHEAD / HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        data = yield done
        first, rest = data.split(b"\r\n\r\n", 1)
        self.assertIn(b"Content-Length: 9", first)
        self.assertTrue(rest.startswith(b"HTTP/1.1 200"), rest)
        second, last = rest.split(b"\r\n\r\n", 1)
        self.assertEqual(parse_responses(last)[0].body, b"PORT 3000")
        self.assertEqual(self.site_a.connections, 1)

    @inlineCallbacks
    def test_no_body_statuses(self):
        """
        204 and 304 answers pass through with no body and no chunking.
        """
        for status in (204, 304):
            response = yield get(self.proxy_port, b"/status/%d" % status)
            self.assertEqual(response.status, status)
            self.assertEqual(response.header(b"transfer-encoding"), [])

    @inlineCallbacks
    def test_chunked_answer(self):
        """
        An answer without a length reaches an HTTP/1.1 client chunked and
        whole.
        """
        response = yield get(self.proxy_port, b"/chunked")
        self.assertEqual(response.body, b"first,second,third")
        self.assertEqual(response.header(b"transfer-encoding"), [b"chunked"])

    @inlineCallbacks
    def test_http10_client(self):
        """
        An HTTP/1.0 client never gets chunked encoding; the connection
        closes after the answer.  The status line says HTTP/1.1, lbproxy's
        version, as nginx's does (RFC 9110 section 6.2).
        """
        _, done = raw_request(self.proxy_port, b"GET /chunked HTTP/1.0\r\n\r\n")
        data = yield done
        head, body = data.split(b"\r\n\r\n", 1)
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
        self.assertIn(b"\r\nConnection: close", head)
        self.assertNotIn(b"chunked", head.lower())
        self.assertEqual(body, b"first,second,third")

    @inlineCallbacks
    def test_pipelined_requests_answered_in_order(self):
        """
        Pipelined requests get their answers in order.
        """
        _, done = raw_request(
            self.proxy_port,
            b"GET /test1 HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /cookies HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        responses = parse_responses((yield done))
        self.assertEqual(
            [r.body for r in responses], [b"Cannot GET /test1", b"PORT 3001", b"cookies"]
        )

    @inlineCallbacks
    def test_expect_continue(self):
        """
        C{Expect: 100-continue} gets a 100 from lbproxy, then the answer;
        the app server sees no Expect.
        """
        _, done = raw_request(
            self.proxy_port,
            _request(b"POST", b"/echo", b"Expect: 100-continue\r\nContent-Length: 2\r\n", b"hi"),
        )
        responses = parse_responses((yield done))
        self.assertEqual([r.status for r in responses], [100, 200])
        self.assertEqual(responses[1].body, b"hi")
        self.assertNotIn(b"expect", self.app_a.requests[0].headers)


class FailureTests(TestCase):
    """
    Failing app servers give 502/504, fail over, or abort the client.
    """

    @inlineCallbacks
    def test_failover_on_connection_refused(self):
        """
        A refused connection sends the request to the next server.
        """
        _, _, live = start_app(self, "3001")
        proxy_port, _, _ = start_proxy(self, [refused_port(self), live])
        bodies = []
        for _ in range(3):
            bodies.append((yield get(proxy_port)).body)
        self.assertEqual(bodies, [b"PORT 3001"] * 3)
        self.flushLoggedErrors()

    @inlineCallbacks
    def test_all_refused_is_502(self):
        """
        When no server accepts the connection the client gets 502 with a
        short text body.
        """
        proxy_port, _, _ = start_proxy(self, [refused_port(self), refused_port(self)])
        response = yield get(proxy_port)
        self.assertEqual(response.status, 502)
        self.assertIn(b"no upstream server could be reached", response.body)

    @inlineCallbacks
    def test_read_timeout_is_504(self):
        """
        An app server silent past the read timeout gives 504.
        """
        arrived: Deferred[None] = Deferred()

        class Silent(Protocol):
            def dataReceived(self, data):
                if not arrived.called:
                    arrived.callback(None)

        port = reactor.listenTCP(0, Factory.forProtocol(Silent), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        clock = Clock()
        proxy_port, _, _ = start_proxy(self, [port.getHost().port], clock=clock, read_timeout=3.0)
        response_d = get(proxy_port)
        yield arrived
        clock.advance(2.9)
        self.assertNoResult(response_d)
        clock.advance(0.2)
        response = yield response_d
        self.assertEqual(response.status, 504)

    def _serve(self, answer: bytes, close: bool = True) -> int:
        class Fixed(Protocol):
            def dataReceived(self, data):
                self.transport.write(answer)
                if close:
                    self.transport.loseConnection()

        port = reactor.listenTCP(0, Factory.forProtocol(Fixed), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @inlineCallbacks
    def test_garbage_is_502(self):
        """
        An app server that does not speak HTTP gives 502, not a 200.
        """
        proxy_port, _, _ = start_proxy(self, [self._serve(b"SSH-2.0-OpenSSH\r\n\r\n")])
        response = yield get(proxy_port)
        self.assertEqual(response.status, 502)

    @inlineCallbacks
    def test_truncated_body_aborts_client(self):
        """
        An app server closing in the middle of a body makes lbproxy abort
        the client connection: the client never gets a complete answer.
        """
        upstream = self._serve(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        proxy_port, _, _ = start_proxy(self, [upstream])
        client, done = raw_request(proxy_port, _request(b"GET", b"/"))
        data = yield done
        # Whatever arrived (the head and part of the body may be dropped by
        # the abort), the connection was reset, not closed cleanly.
        self.assertNotIn(b"0123456789" + b"x" * 90, data)
        self.assertTrue(client.reason.check(ConnectionLost), client.reason)

    @inlineCallbacks
    def test_closed_before_answer_is_502(self):
        """
        A fresh connection closed before any answer gives 502.
        """
        proxy_port, _, _ = start_proxy(self, [self._serve(b"")])
        response = yield get(proxy_port)
        self.assertEqual(response.status, 502)


class StaleConnectionTests(TestCase):
    """
    A keep-alive connection the app server closes as a request goes out.
    """

    def _start(self):
        """
        An app server that answers the first request on each connection and
        closes the connection, without answering, when a second arrives:
        exactly the race of an idle close.
        """
        connections = []

        class OneShot(Protocol):
            def connectionMade(self):
                connections.append(self)
                self.count = 0

            def dataReceived(self, data):
                self.count += 1
                if self.count == 1:
                    self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                else:
                    self.transport.loseConnection()

        port = reactor.listenTCP(0, Factory.forProtocol(OneShot), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port, connections

    @inlineCallbacks
    def test_get_is_retried_on_fresh_connection(self):
        """
        A GET on a connection that closes with no answer is sent again on
        a new connection: the client sees 200, never 502.
        """
        upstream, connections = self._start()
        proxy_port, _, _ = start_proxy(self, [upstream])
        first = yield get(proxy_port)
        second = yield get(proxy_port)
        self.assertEqual((first.status, second.status), (200, 200))
        self.assertEqual(len(connections), 2)
        self.flushLoggedErrors()

    @inlineCallbacks
    def test_post_is_not_retried(self):
        """
        A POST on such a connection is not sent twice (the server may have
        acted on it): the client gets 502, as from nginx.
        """
        upstream, connections = self._start()
        proxy_port, _, _ = start_proxy(self, [upstream])
        yield get(proxy_port)
        _, done = raw_request(proxy_port, _request(b"POST", b"/", b"Content-Length: 1\r\n", b"x"))
        response = parse_responses((yield done))[0]
        self.assertEqual(response.status, 502)
        self.assertEqual(len(connections), 1)

    @inlineCallbacks
    def test_idle_connection_closed_by_server_leaves_pool(self):
        """
        When the app server closes an idle pooled connection, it leaves the
        pool at once.
        """
        _, site, port = start_app(self, "3000")
        proxy_port, _, client = start_proxy(self, [port])
        yield get(proxy_port)
        server = client._idle and next(iter(client._idle))
        self.assertEqual(client.idle_count(server), 1)
        for channel in list(site._channels if hasattr(site, "_channels") else []):
            channel.transport.loseConnection()
        connection = client._idle[server][0]
        lost: Deferred[None] = Deferred()
        original = connection.connectionLost

        def connection_lost(reason):
            original(reason)
            lost.callback(None)

        connection.connectionLost = connection_lost
        connection.transport.loseConnection()
        yield lost
        self.assertEqual(client.idle_count(server), 0)


class StreamingTests(TestCase):
    """
    Bodies are relayed as they arrive with backpressure both ways.
    """

    @inlineCallbacks
    def test_large_answer_to_slow_reader(self):
        """
        A 50 MB answer to a client that stops reading: the app server is
        paused long before it has sent everything (lbproxy does not buffer
        the body), and once the client reads again it gets every byte.
        """
        total = 50 * 1024 * 1024
        app, _, port = start_app(self, "3000")
        proxy_port, _, _ = start_proxy(self, [port])
        client, done = raw_request(proxy_port, _request(b"GET", b"/big/%d" % total))
        first: Deferred[None] = Deferred()

        def pause_on_first_data(c):
            if not first.called:
                c.transport.pauseProducing()
                first.callback(None)

        client.on_data = pause_on_first_data
        yield first
        # Real time is needed here: the socket buffers between the app,
        # lbproxy and the client fill as the kernel moves bytes, and no
        # event says "the app server is held back for good"; so the reactor
        # is polled (never slept) until the app stays paused.
        stream = None
        last_sent, stable = -1, 0
        for _ in range(400):
            yield deferLater(reactor, 0.02, lambda: None)
            if app.streams:
                stream = app.streams[0]
                if stream.paused and stream.sent == last_sent:
                    stable += 1
                    if stable >= 10:
                        break
                else:
                    stable = 0
                last_sent = stream.sent
        self.assertIsNotNone(stream)
        self.assertTrue(stream.paused, "the app server was never held back")
        self.assertLess(stream.sent, total // 2)
        client.on_data = None
        client.transport.resumeProducing()
        data = yield done
        body = data.split(b"\r\n\r\n", 1)[1]
        self.assertEqual(len(body), total)
        self.assertEqual(hashlib.sha256(body).hexdigest(), pattern_digest(total))

    @inlineCallbacks
    def test_client_that_never_reads_is_closed(self):
        """
        With C{--send-timeout 2}, a client that asks for a large answer and
        reads nothing is disconnected once lbproxy has held bytes for it for
        2 s, and its upstream connection is closed, not pooled: no exchange
        and no connection is left.
        """
        total = 50 * 1024 * 1024
        app, _, port = start_app(self, "3000")
        clock = Clock()
        proxy_port, site, client_pool = start_proxy(self, [port], clock=clock, send_timeout=2.0)
        client, done = raw_request(proxy_port, _request(b"GET", b"/big/%d" % total))
        client.made.addCallback(lambda _: client.transport.pauseProducing())
        # Poll the reactor (no sleeping) until lbproxy holds the answer back
        # because the client's buffer is full.
        exchange = None
        for _ in range(500):
            yield deferLater(reactor, 0.01, lambda: None)
            exchanges = list(site.resource.exchanges)
            if exchanges and exchanges[0]._paused:
                exchange = exchanges[0]
                break
        self.assertIsNotNone(exchange, "the client was never held back")
        upstream_closed = app.streams[0].request.notifyFinish()
        clock.advance(1.9)
        self.assertNoResult(done)
        clock.advance(0.1)
        # Read again, to see what lbproxy did to the connection: a reset,
        # long before the whole answer arrived.
        client.transport.resumeProducing()
        data = yield done
        self.assertLess(len(data), total)
        self.assertTrue(client.reason.check(ConnectionLost), client.reason)
        yield self.assertFailure(upstream_closed, Exception)
        self.assertEqual(site.resource.exchanges, set())
        self.assertEqual(sum(len(idle) for idle in client_pool._idle.values()), 0)
        self.assertLess(app.streams[0].sent, total)

    @inlineCallbacks
    def test_client_gone_cancels_upstream(self):
        """
        A client that leaves in the middle of an answer makes lbproxy drop
        the upstream connection instead of pooling it half-read, and
        nothing is logged as an unhandled error.
        """
        total = 20 * 1024 * 1024
        app, site, port = start_app(self, "3000")
        proxy_port, _, client_pool = start_proxy(self, [port])
        client, done = raw_request(proxy_port, _request(b"GET", b"/big/%d" % total))
        got_data: Deferred[None] = Deferred()

        def abort_on_data(c):
            if not got_data.called:
                got_data.callback(None)
                c.transport.abortConnection()

        client.on_data = abort_on_data
        yield got_data
        yield done
        for _ in range(200):
            if app.streams and app.streams[0].paused is True and not app.streams[0].request.channel:
                break
            yield deferLater(reactor, 0.01, lambda: None)
            server = next(iter(client_pool._endpoints), None)
            if (
                server is not None
                and client_pool.idle_count(server) == 0
                and not any(c.connected for c in client_pool._idle.get(server, []))
            ):
                break
        server = next(iter(client_pool._endpoints))
        self.assertEqual(client_pool.idle_count(server), 0)


class AccessLogTests(TestCase):
    """
    One access line per request, in combined log format.
    """

    @inlineCallbacks
    def test_access_line_in_file(self):
        """
        With C{access_log} a path, each request writes one combined-format
        line there: client, request line, status, bytes, referrer, agent.
        """
        _, _, port = start_app(self, "3000")
        path = self.mktemp()
        proxy_port, site, _ = start_proxy(self, [port], access_log=path)
        yield get(proxy_port, b"/", headers=b"User-Agent: curl/8\r\nReferer: http://r/\r\n")
        site.access_log.flush()  # lines are written at least once a second
        with open(path) as f:
            lines = f.readlines()
        self.assertEqual(len(lines), 1)
        self.assertRegex(
            lines[0],
            r'^127\.0\.0\.1 - - \[[^]]+\] "GET / HTTP/1\.1" 200 9 "http://r/" "curl/8"$',
        )


class _RecordingBackend(Protocol):
    """
    An app server that records raw request bytes, calls C{on_data} for
    each piece, and answers C{answer} once it has C{expect} bytes.
    """

    def __init__(self, owner: UploadTests) -> None:
        self.owner = owner
        self.received = b""

    def connectionMade(self) -> None:
        self.owner.backends.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self.owner.on_backend_data(self)


class UploadTests(TestCase):
    """
    Request bodies go upstream as they arrive, with backpressure.
    """

    def setUp(self) -> None:
        self.backends: list[_RecordingBackend] = []
        self.on_backend_data = lambda backend: None
        port = reactor.listenTCP(
            0, Factory.forProtocol(lambda: _RecordingBackend(self)), interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        self.backend_port = port.getHost().port

    def _answer_when_complete(self, total: int, answer: bytes = b"") -> None:
        def on_data(backend: _RecordingBackend) -> None:
            head, _, body = backend.received.partition(b"\r\n\r\n")
            if len(body) == total:
                backend.transport.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(answer or b"%d" % total), answer or b"%d" % total)
                )

        self.on_backend_data = on_data

    @inlineCallbacks
    def test_body_reaches_app_before_request_ends(self):
        """
        The app server gets the head and the first part of the body while
        the client has not sent the rest yet.
        """
        proxy_port, _, _ = start_proxy(self, [self.backend_port])
        first_part: Deferred[None] = Deferred()

        def on_data(backend):
            if b"first-half" in backend.received and not first_part.called:
                first_part.callback(None)
            if backend.received.endswith(b"second-half"):
                backend.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

        self.on_backend_data = on_data
        client, done = raw_request(
            proxy_port,
            b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 21\r\nConnection: close\r\n\r\n"
            b"first-half",
        )
        yield first_part
        head = self.backends[0].received.split(b"\r\n\r\n")[0]
        self.assertIn(b"Content-Length: 21", head)
        client.transport.write(b"second-half")
        response = parse_responses((yield done))[0]
        self.assertEqual((response.status, response.body), (200, b"ok"))

    @inlineCallbacks
    def test_failover_keeps_the_body(self):
        """
        A refused connection sends the request, body included, to the next
        server: nothing of it was lost while connecting.
        """
        proxy_port, _, _ = start_proxy(self, [refused_port(self), self.backend_port])
        self._answer_when_complete(5)
        _, done = raw_request(
            proxy_port, _request(b"POST", b"/", b"Content-Length: 5\r\n", b"12345")
        )
        response = parse_responses((yield done))[0]
        self.assertEqual((response.status, response.body), (200, b"5"))
        self.assertTrue(self.backends[0].received.endswith(b"\r\n\r\n12345"))
        self.flushLoggedErrors()

    @inlineCallbacks
    def test_early_answer(self):
        """
        An app server that answers (413) before the body is all there: the
        client gets that answer once it has sent its body, and the upstream
        connection is not reused.
        """
        proxy_port, _, client_pool = start_proxy(self, [self.backend_port])
        answered: Deferred[None] = Deferred()

        def on_data(backend):
            if not answered.called:
                backend.transport.write(
                    b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\n\r\nbig"
                )
                answered.callback(None)

        self.on_backend_data = on_data
        client, done = raw_request(
            proxy_port,
            b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nConnection: close\r\n\r\n12345",
        )
        yield answered
        client.transport.write(b"67890")
        response = parse_responses((yield done))[0]
        self.assertEqual((response.status, response.body), (413, b"big"))
        self.assertEqual(sum(len(idle) for idle in client_pool._idle.values()), 0)

    @inlineCallbacks
    def test_stalled_body_is_the_clients_408(self):
        """
        A body that stalls is the client's failure: it gets 408 after the
        body timeout, the read timeout (shorter) never fires while the body
        is incomplete, and the server is not counted: with max-fails 1 the
        next client gets 200 from it.
        """
        clock = Clock()
        proxy_port, site, _ = start_proxy(self, [self.backend_port], clock=clock, read_timeout=5.0)
        partial: Deferred[None] = Deferred()

        def on_data(backend):
            if backend.received.startswith(b"GET"):
                if backend.received.endswith(b"\r\n\r\n"):
                    backend.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            elif backend.received.endswith(b"12345") and not partial.called:
                partial.callback(None)

        self.on_backend_data = on_data
        _, done = raw_request(
            proxy_port, b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345"
        )
        yield partial
        clock.advance(30)
        self.assertNoResult(done)
        clock.advance(31)
        response = parse_responses((yield done))[0]
        self.assertEqual(response.status, 408)
        self.assertTrue(site.resource.router.only.servers[0].up)
        after = yield get(proxy_port)
        self.assertEqual((after.status, after.body), (200, b"ok"))
        self.assertEqual(site.resource.exchanges, set())

    @inlineCallbacks
    def test_read_timeout_starts_when_the_body_is_sent(self):
        """
        After a slow upload the app server has the whole read timeout from
        the moment the body was sent: with a 5 s read timeout, a body that
        took 7 s and an answer 4 s after it is relayed (not a 504 from an
        earlier check of the timer), and the server stays in rotation.
        """
        clock = Clock()
        proxy_port, site, _ = start_proxy(self, [self.backend_port], clock=clock, read_timeout=5.0)
        arrived = [Deferred(), Deferred()]

        def on_data(backend):
            for waiter, tail in zip(arrived, (b"12345", b"67890"), strict=True):
                if backend.received.endswith(tail) and not waiter.called:
                    waiter.callback(None)

        self.on_backend_data = on_data
        client, done = raw_request(
            proxy_port,
            b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nConnection: close\r\n\r\n12345",
        )
        yield arrived[0]
        # The timer's check at 5 s finds the body incomplete, then 2 s more.
        clock.advance(5)
        clock.advance(2)
        client.transport.write(b"67890")
        yield arrived[1]
        clock.advance(4)
        self.assertNoResult(done)
        self.backends[0].transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        response = parse_responses((yield done))[0]
        self.assertEqual((response.status, response.body), (200, b"ok"))
        self.assertTrue(site.resource.router.only.servers[0].up)

    @inlineCallbacks
    def test_slow_app_server_holds_the_client_back(self):
        """
        An app server that stops reading makes lbproxy stop reading from
        the uploading client (its send buffer fills and it is paused) long
        before the upload is over; once the app reads again, every byte
        arrives.
        """
        total = 40 * 1024 * 1024
        proxy_port, _, _ = start_proxy(self, [self.backend_port])
        stalled: Deferred[None] = Deferred()

        def on_data(backend):
            if not stalled.called:
                backend.transport.pauseProducing()
                stalled.callback(None)

        self.on_backend_data = on_data
        client, done = raw_request(
            proxy_port,
            b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
            % total,
        )
        yield client.made
        uploader = _Uploader(client.transport, total)
        yield stalled
        # Real time is needed here: the socket buffers between the client,
        # lbproxy and the app fill as the kernel moves bytes, and no event
        # says "the client is held back for good"; so the reactor is polled
        # (never slept) until the uploader stays paused.
        stable, last = 0, -1
        for _ in range(500):
            yield deferLater(reactor, 0.02, lambda: None)
            if uploader.paused and uploader.sent == last:
                stable += 1
                if stable >= 10:
                    break
            else:
                stable = 0
            last = uploader.sent
        self.assertTrue(uploader.paused, "the client was never held back")
        self.assertLess(uploader.sent, total // 2)
        self._answer_when_complete(total)
        self.backends[0].transport.resumeProducing()
        self.on_backend_data(self.backends[0])
        response = parse_responses((yield done))[0]
        self.assertEqual(response.body, b"%d" % total)


class _Uploader:
    """
    Writes C{total} bytes to a transport as a push producer, recording
    whether the transport holds it back.
    """

    def __init__(self, transport, total: int) -> None:
        self.transport = transport
        self.total = total
        self.sent = 0
        self.paused = False
        transport.registerProducer(self, True)
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        chunk = b"u" * 65536
        while not self.paused and self.sent < self.total:
            piece = chunk[: self.total - self.sent]
            self.sent += len(piece)
            self.transport.write(piece)
        if self.sent >= self.total and not self.paused:
            self.transport.unregisterProducer()

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.paused = True


class LoopTests(TestCase):
    """
    lbproxy marks what it forwards with C{Via} and refuses its own loops.
    """

    @inlineCallbacks
    def test_via_added(self):
        """
        The app server sees a C{Via} entry naming this lbproxy, after any
        the client sent.
        """
        from lbproxy.proxy.exchange import VIA_TOKEN

        app, _, port = start_app(self, "3000")
        proxy_port, _, _ = start_proxy(self, [port])
        yield get(proxy_port, headers=b"Via: 1.0 corporate-proxy\r\n")
        self.assertEqual(
            app.requests[0].headers[b"via"], [b"1.0 corporate-proxy", b"1.1 " + VIA_TOKEN]
        )

    @inlineCallbacks
    def test_loop_is_508(self):
        """
        A proxy configured to send requests to itself answers 508 at the
        second pass instead of forwarding until the headers overflow.
        """
        from lbproxy.config.model import Config, PoolConfig, ServerConfig
        from lbproxy.tap import build_site
        from tests.support import free_port

        port = free_port()
        config = Config(
            pools=(PoolConfig("default", (ServerConfig("127.0.0.1", port),)),),
            access_log="off",
        )
        site, client = build_site(config, reactor)
        listening = reactor.listenTCP(port, site, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        self.addCleanup(client.close_idle)
        response = yield get(port)
        self.assertEqual(response.status, 508)
        self.assertIn(b"loops", response.body)


class InternalErrorTests(TestCase):
    """
    A bug in lbproxy costs one answer, never an app server's place in
    rotation, and never leaves an exchange in flight.
    """

    @inlineCallbacks
    def test_bug_in_a_response_callback_keeps_the_server(self):
        """
        An exception while relaying an answer's headers (inside an httptools
        callback) is logged with its traceback and answered 502; with
        C{max-fails 1} the server stays in rotation and the next request
        gets 200 from it.
        """
        from lbproxy.proxy import exchange as resource

        calls = []
        original = resource.end_to_end

        def buggy(*args):
            calls.append(args)
            if len(calls) == 1:
                raise ZeroDivisionError("a bug in lbproxy")
            return original(*args)

        self.patch(resource, "end_to_end", buggy)
        app, _, port = start_app(self, "3000")
        proxy_port, site, _ = start_proxy(self, [port])
        first = yield get(proxy_port)
        self.assertEqual(first.status, 502)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        server = site.resource.router.only.servers[0]
        self.assertTrue(server.up)
        second = yield get(proxy_port)
        self.assertEqual((second.status, second.body), (200, b"PORT 3000"))
        self.assertEqual(site.resource.exchanges, set())

    @inlineCallbacks
    def test_processing_failed_ends_the_exchange(self):
        """
        An exception escaping the resource's render answers 500 and ends
        the exchange (a graceful stop would otherwise wait for it).
        """
        from lbproxy.balancing.pool import Pool

        def broken_pick(self, exclude=()):
            raise RuntimeError("a bug in lbproxy")

        self.patch(Pool, "pick", broken_pick)
        _, _, port = start_app(self, "3000")
        proxy_port, site, _ = start_proxy(self, [port])
        response = yield get(proxy_port)
        self.assertEqual(response.status, 500)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(site.resource.exchanges, set())
        self.assertEqual(site.resource.in_flight, 0)


class UpstreamHeadLimitTests(TestCase):
    """
    C{--max-upstream-headers-size}: an app server's head too large is 502.
    """

    @inlineCallbacks
    def test_too_big_header_is_502(self):
        """
        An answer whose head is larger than the limit gets the client a
        502, one log line naming the server and the reason, and (as in
        nginx, an invalid header) counts as the server's failure.
        """
        from twisted.logger import formatEvent, globalLogPublisher

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        big = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Big: " + b"b" * 70000 + b"\r\n\r\nok"
        upstream = FailureTests._serve(self, big, close=False)
        proxy_port, site, client = start_proxy(self, [upstream])
        response = yield get(proxy_port)
        self.assertEqual(response.status, 502)
        text = [formatEvent(e) for e in events]
        # One line for the failure (the pool's DOWN line is another matter).
        lines = [t for t in text if "too big header" in t and "DOWN" not in t]
        self.assertEqual(len(lines), 1)
        self.assertIn(f"127.0.0.1:{upstream}", lines[0])
        self.assertFalse(site.resource.router.only.servers[0].up)
        self.assertEqual(sum(len(idle) for idle in client._idle.values()), 0)

    @inlineCallbacks
    def test_limit_option(self):
        """
        A smaller limit refuses a head the default accepts.
        """
        _, _, port = start_app(self, "3000")
        proxy_port, _, _ = start_proxy(self, [port], max_upstream_headers_size=50)
        response = yield get(proxy_port)
        self.assertEqual(response.status, 502)


class _FakeUpstreamClient:
    """
    Stands for an L{lbproxy.upstream.client.UpstreamClient}: records the exchanges
    sent and abandoned, on a L{Clock}.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.sinks: list = []
        self.abandoned: list = []

    def send(self, server, request, sink):
        self.sinks.append(sink)
        return lambda: self.abandoned.append(sink)


class _UpstreamProducer:
    """
    Stands for the upstream connection as the client side's producer.
    """

    paused = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass


class _LayeredTransport(StringTransport):
    """
    A client transport over a socket transport whose write buffer the test
    sets, as a TLS transport sits over TCP.
    """

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        from twisted.internet.abstract import FileDescriptor

        self.transport = FileDescriptor(clock)  # type: ignore[arg-type]
        self.transport.dataBuffer = b"x" * 100_000


class SendTimeoutTests(SynchronousTestCase):
    """
    A client that takes no byte of its answer for C{send_timeout} seconds
    is closed with its upstream connection (nginx's C{send_timeout}).
    """

    def setUp(self) -> None:
        from lbproxy.config.model import Config, PoolConfig, ServerConfig
        from lbproxy.http.accesslog import AccessLog
        from lbproxy.http.site import ProxySite
        from lbproxy.proxy.resource import BalancingProxyResource
        from lbproxy.service.service import build_router

        self.clock = Clock()
        self.upstream = _FakeUpstreamClient(self.clock)
        config = Config(pools=(PoolConfig("p", (ServerConfig("127.0.0.1", 3000),)),))
        self.resource = BalancingProxyResource(
            build_router(config, self.clock), self.upstream, send_timeout=8.0
        )
        self.site = ProxySite(self.resource, config, AccessLog(self.clock, None), self.clock)

    def _answering(self, transport: StringTransport | None = None):
        """
        A client whose request is being answered: headers and some body
        relayed, the upstream connection registered as producer.
        """
        protocol = self.site.buildProtocol(None)
        transport = transport or StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        [sink] = self.upstream.sinks
        producer = _UpstreamProducer()
        sink.response_headers(200, b"OK", [(b"Content-Length", b"1000000")], producer)
        sink.response_body(b"x" * 1000)
        return transport, producer, sink

    def test_stalled_client_closed(self) -> None:
        """
        Paused (its buffer full) for the send timeout, the client is
        aborted and the upstream exchange abandoned, not pooled.
        """
        transport, producer, sink = self._answering()
        transport.producer.pauseProducing()
        self.assertTrue(producer.paused)
        self.clock.advance(7.9)
        self.assertFalse(transport.disconnected)
        self.assertEqual(self.upstream.abandoned, [])
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnected)
        self.assertEqual(self.upstream.abandoned, [sink])
        self.assertEqual(self.resource.exchanges, set())

    def test_resumed_client_kept(self) -> None:
        """
        A client that takes its buffer before the timeout resumes the
        upstream connection; a later stall has the whole timeout again.
        """
        transport, producer, _ = self._answering()
        transport.producer.pauseProducing()
        self.clock.advance(7)
        transport.producer.resumeProducing()
        self.assertFalse(producer.paused)
        self.clock.advance(7)
        transport.producer.pauseProducing()
        self.clock.advance(7)
        self.assertFalse(transport.disconnected)
        self.clock.advance(1)
        self.assertTrue(transport.disconnected)

    def test_slow_reader_kept(self) -> None:
        """
        A client that keeps taking bytes, however slowly (its buffer never
        empties, so Twisted never resumes the producer), is not closed;
        once it stops, it is, a send timeout after its last byte was seen.
        """
        transport, _, _ = self._answering(_LayeredTransport(self.clock))
        socket = transport.transport
        transport.producer.pauseProducing()
        for _ in range(5):
            # The client takes 1000 bytes; checks run every quarter of the
            # timeout (2 s).
            socket.offset += 1000
            self.clock.advance(2)
        self.assertFalse(transport.disconnected)
        # The last bytes taken were seen at 10 s: closed at 18 s.
        self.clock.advance(7.9)
        self.assertFalse(transport.disconnected)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnected)

    def test_answer_done_stops_the_timer(self) -> None:
        """
        Once the whole answer has been relayed the exchange is over: the
        send timeout no longer applies (the idle timeout does).
        """
        transport, _, sink = self._answering()
        transport.producer.pauseProducing()
        sink.response_done()
        self.clock.advance(60)
        self.assertFalse(transport.disconnected)
        self.assertEqual(self.upstream.abandoned, [])

    def test_new_timeout_on_reload(self) -> None:
        """
        The resource's current send timeout applies (a reload sets it).
        """
        transport, _, _ = self._answering()
        self.resource.send_timeout = 2.0
        transport.producer.pauseProducing()
        self.clock.advance(2)
        self.assertTrue(transport.disconnected)
