"""
Tests for L{lbproxy.proxy.exchange}: one request's way through the proxy,
driven on a L{Clock} with fakes of both sides (no socket, no real time), as
Twisted's own C{test_proxy} drives its proxy.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lbproxy.errors import (
    ConnectFailed,
    InternalError,
    InvalidResponse,
    ReadTimeout,
    ResponseTruncated,
    StaleConnection,
)
from lbproxy.proxy.exchange import VIA_TOKEN, ProxyExchange, State
from lbproxy.upstream.body import StreamingBody
from tests.proxy.fakes import FakeClientRequest, FakeProducer, resource


class _Reader:
    """
    A client transport as a request body pauses it.
    """

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass


class ExchangeTests(SynchronousTestCase):
    """
    L{ProxyExchange} relays an answer, retries, answers 502/503/504 and
    resets the client, each decision on the failure kind.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.proxy, self.upstream = resource(self.clock)
        self.pool = self.proxy.router.pools["web"]

    def start(self, **request: object) -> tuple[ProxyExchange, FakeClientRequest]:
        client = FakeClientRequest(**request)  # type: ignore[arg-type]
        exchange = ProxyExchange(self.proxy, client)
        exchange.start()
        return exchange, client

    def test_relays_answer(self) -> None:
        """
        Status, reason, end-to-end headers and body go to the client as
        they come; the exchange is the answer's producer and ends with it.
        """
        exchange, client = self.start()
        self.assertIs(exchange.state, State.WAITING)
        [sent] = self.upstream.sent
        sent.sink.response_headers(
            201,
            b"Made",
            [(b"X-A", b"1"), (b"Connection", b"close"), (b"Keep-Alive", b"5")],
            FakeProducer(),
        )
        self.assertIs(exchange.state, State.RELAYING)
        assert client.record is not None
        self.assertEqual(
            client.answer,
            (201, b"Made", [(b"X-A", b"1"), (b"X-Request-Id", client.record.request_id)]),
        )
        self.assertIs(client.producer, exchange)
        sent.sink.response_body(b"abc")
        sent.sink.response_read_done()
        sent.sink.response_done()
        self.assertEqual((client.written, client.flushes, client.finished), (b"abc", 1, True))
        self.assertIs(exchange.state, State.DONE)
        self.assertEqual(self.proxy.exchanges, set())

    def test_upstream_request(self) -> None:
        """
        The app server gets the method and target as sent, the client's
        headers, C{X-Forwarded-*} and lbproxy's C{Via}.
        """
        self.start(method=b"DELETE", target=b"/a?b=1", headers=[(b"Host", b"h"), (b"X", b"y")])
        head = self.upstream.sent[0].request.head
        self.assertTrue(head.startswith(b"DELETE /a?b=1 HTTP/1.1\r\nHost: h\r\nX: y\r\n"), head)
        self.assertIn(b"X-Forwarded-For: 10.0.0.9\r\n", head)
        self.assertIn(b"Via: 1.1 " + VIA_TOKEN + b"\r\n", head)

    def test_connect_failure_tries_next_server(self) -> None:
        """
        A failed connection goes to the next server and counts against the
        first (nginx's C{proxy_next_upstream error}).
        """
        exchange, client = self.start()
        first = self.upstream.sent[0]
        first.sink.response_failed(ConnectFailed("connection refused"))
        self.assertEqual(len(self.upstream.sent), 2)
        second = self.upstream.sent[1]
        self.assertIsNot(second.server, first.server)
        self.assertFalse(first.server.up)  # max-fails 1
        self.assertIs(exchange.state, State.WAITING)
        self.assertIsNone(client.answer)

    def test_every_server_failed(self) -> None:
        """
        When every server failed to connect: 502.
        """
        exchange, client = self.start()
        self.upstream.sent[0].sink.response_failed(ConnectFailed("connection refused"))
        self.upstream.sent[1].sink.response_failed(ConnectFailed("connection refused"))
        assert client.answer is not None
        self.assertEqual(client.answer[0], 502)
        self.assertIn(b"no upstream server could be reached", client.written)
        self.assertTrue(client.finished)
        self.assertIs(exchange.state, State.DONE)

    def test_max_tries(self) -> None:
        """
        A request is tried on at most C{max-tries} servers.
        """
        self.proxy, self.upstream = resource(self.clock, servers=3, max_tries=2)
        _, client = self.start()
        self.upstream.sent[0].sink.response_failed(ConnectFailed("refused"))
        self.upstream.sent[1].sink.response_failed(ConnectFailed("refused"))
        self.assertEqual(len(self.upstream.sent), 2)
        assert client.answer is not None
        self.assertEqual(client.answer[0], 502)

    def test_no_server_up(self) -> None:
        """
        No server in rotation: 503 at once, nothing sent.
        """
        for server in self.pool.servers:
            self.pool.attempt_failed(server, "test")
        _, client = self.start()
        self.assertEqual(self.upstream.sent, [])
        assert client.answer is not None
        self.assertEqual(client.answer[0], 503)

    def test_read_timeout(self) -> None:
        """
        A server silent past the read timeout: 504, counted against it, no
        retry (the server may be working on the request).
        """
        exchange, client = self.start()
        sent = self.upstream.sent[0]
        sent.sink.response_failed(ReadTimeout("no answer for 60 s"))
        assert client.answer is not None
        self.assertEqual(client.answer[0], 504)
        self.assertEqual(len(self.upstream.sent), 1)
        self.assertFalse(sent.server.up)

    def test_invalid_answer(self) -> None:
        """
        An answer that is not HTTP: 502, counted against the server.
        """
        _, client = self.start()
        sent = self.upstream.sent[0]
        sent.sink.response_failed(InvalidResponse("not HTTP"))
        assert client.answer is not None
        self.assertEqual(client.answer[0], 502)
        self.assertFalse(sent.server.up)

    def test_internal_error_not_counted(self) -> None:
        """
        A bug in lbproxy: 502, and the server stays in rotation.
        """
        _, client = self.start()
        sent = self.upstream.sent[0]
        sent.sink.response_failed(InternalError("a bug"))
        assert client.answer is not None
        self.assertEqual(client.answer[0], 502)
        self.assertTrue(sent.server.up)

    def test_failure_after_answer_started_resets_client(self) -> None:
        """
        Once the answer has begun, a failure resets the client: a truncated
        body must never look complete; no retry.
        """
        exchange, client = self.start()
        sent = self.upstream.sent[0]
        sent.sink.response_headers(200, b"OK", [(b"Content-Length", b"10")], FakeProducer())
        sent.sink.response_body(b"abc")
        sent.sink.response_failed(ResponseTruncated("closed mid-body"))
        self.assertTrue(client.aborted)
        self.assertFalse(client.finished)
        self.assertEqual(len(self.upstream.sent), 1)
        self.assertIs(exchange.state, State.DONE)

    def test_stale_idempotent_resent_once(self) -> None:
        """
        A GET whose pooled connection was closed before any answer goes
        again on a fresh connection, once; the server is not blamed.
        """
        _, client = self.start()
        first = self.upstream.sent[0]
        first.sink.response_failed(StaleConnection("reused connection closed"))
        second = self.upstream.sent[1]
        self.assertTrue(second.fresh)
        self.assertIs(second.server, first.server)
        self.assertTrue(first.server.up)
        second.sink.response_failed(StaleConnection("again"))
        assert client.answer is not None
        self.assertEqual(client.answer[0], 502)

    def test_stale_post_not_resent(self) -> None:
        """
        A POST is not sent twice: the server may have acted on it (502, as
        nginx).
        """
        _, client = self.start(method=b"POST")
        self.upstream.sent[0].sink.response_failed(StaleConnection("closed"))
        self.assertEqual(len(self.upstream.sent), 1)
        assert client.answer is not None
        self.assertEqual(client.answer[0], 502)

    def test_stale_with_body_sent_not_resent(self) -> None:
        """
        A PUT whose body already went out is not sent again.
        """
        body = StreamingBody(_Reader(), 3)
        _, client = self.start(method=b"PUT", body=body)
        body.sent_any = True
        self.upstream.sent[0].sink.response_failed(StaleConnection("closed"))
        self.assertEqual(len(self.upstream.sent), 1)
        assert client.answer is not None
        self.assertEqual(client.answer[0], 502)

    def test_client_gone(self) -> None:
        """
        A client that leaves abandons the upstream exchange; later news
        from upstream is ignored.
        """
        exchange, client = self.start()
        sent = self.upstream.sent[0]
        exchange.client_gone()
        self.assertTrue(sent.abandoned)
        self.assertIs(exchange.state, State.DONE)
        self.assertEqual(self.proxy.exchanges, set())
        sent.sink.response_headers(200, b"OK", [], FakeProducer())
        sent.sink.response_done()
        self.assertIsNone(client.answer)

    def test_backpressure(self) -> None:
        """
        The client's pauses reach the upstream connection, and resumes too.
        """
        exchange, _ = self.start()
        producer = FakeProducer()
        self.upstream.sent[0].sink.response_headers(200, b"OK", [], producer)
        exchange.pauseProducing()
        self.assertTrue(producer.paused)
        exchange.resumeProducing()
        self.assertFalse(producer.paused)

    def test_send_timeout(self) -> None:
        """
        A client paused for the send timeout, taking no byte, is reset with
        its upstream exchange.
        """
        self.proxy, self.upstream = resource(self.clock, send_timeout=8.0)
        exchange, client = self.start()
        sent = self.upstream.sent[0]
        sent.sink.response_headers(200, b"OK", [], FakeProducer())
        client.pending = 1000
        exchange.pauseProducing()
        self.clock.advance(7.9)
        self.assertFalse(client.aborted)
        self.clock.advance(0.1)
        self.assertTrue(client.aborted)
        self.assertTrue(sent.abandoned)
        self.assertIs(exchange.state, State.DONE)

    def test_slow_client_not_timed_out(self) -> None:
        """
        A client that keeps taking bytes while paused is not stalled.
        """
        self.proxy, self.upstream = resource(self.clock, send_timeout=8.0)
        exchange, client = self.start()
        self.upstream.sent[0].sink.response_headers(200, b"OK", [], FakeProducer())
        client.pending = 10_000
        exchange.pauseProducing()
        for _ in range(10):
            self.clock.advance(2)
            client.pending -= 100
        self.assertFalse(client.aborted)

    def test_no_route(self) -> None:
        """
        With routes and none matching: 404, nothing sent.
        """
        from lbproxy.balancing.routes import Router
        from lbproxy.config.model import RouteConfig

        self.proxy.router = Router(
            (RouteConfig("web", host="only.example"),), self.proxy.router.pools
        )
        _, client = self.start()
        assert client.answer is not None
        self.assertEqual(client.answer[0], 404)
        self.assertEqual(self.upstream.sent, [])

    def test_loop(self) -> None:
        """
        A request that already passed through this process: 508.
        """
        _, client = self.start(headers=[(b"Host", b"h"), (b"Via", b"1.1 " + VIA_TOKEN)])
        assert client.answer is not None
        self.assertEqual(client.answer[0], 508)
        self.assertEqual(self.upstream.sent, [])

    def test_abort(self) -> None:
        """
        C{abort} (the drain ran out) resets the client and abandons the
        upstream exchange.
        """
        exchange, client = self.start()
        exchange.abort()
        self.assertTrue(client.aborted)
        self.assertTrue(self.upstream.sent[0].abandoned)
        self.assertEqual(self.proxy.exchanges, set())


class RequestIdTests(SynchronousTestCase):
    """
    Each request's id goes to the app server and back to the client as
    C{X-Request-Id}: the client's own if valid, else a new one.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.proxy, self.upstream = resource(self.clock)

    def start(self, *headers: tuple[bytes, bytes]) -> FakeClientRequest:
        client = FakeClientRequest(headers=[(b"Host", b"h"), *headers])
        ProxyExchange(self.proxy, client).start()
        return client

    def sent_ids(self) -> list[bytes]:
        """
        The C{X-Request-Id} values of the last request sent upstream.
        """
        head = self.upstream.sent[-1].request.head
        return [
            line.split(b": ", 1)[1]
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"x-request-id:")
        ]

    def answered_ids(self, client: FakeClientRequest) -> list[bytes]:
        assert client.answer is not None
        return [v for n, v in client.answer[2] if n.lower() == b"x-request-id"]

    def test_kept(self) -> None:
        """
        A valid id the client sent is the request's: upstream, back to the
        client (in place of the app server's own) and in the record.
        """
        client = self.start((b"X-Request-Id", b"0f7c-42:a.b_c"))
        self.assertEqual(self.sent_ids(), [b"0f7c-42:a.b_c"])
        self.upstream.sent[0].sink.response_headers(
            200, b"OK", [(b"X-Request-Id", b"the-app-s")], FakeProducer()
        )
        self.assertEqual(self.answered_ids(client), [b"0f7c-42:a.b_c"])
        assert client.record is not None
        self.assertEqual(client.record.request_id, b"0f7c-42:a.b_c")

    def test_replaced(self) -> None:
        """
        An id with other characters, or longer than 128, is replaced by a
        new one; the app server sees only the new one.
        """
        for bad in (b"a b", b"<script>", b"x" * 129, b""):
            client = self.start((b"X-Request-Id", bad))
            assert client.record is not None
            new = client.record.request_id
            self.assertNotEqual(new, bad)
            self.assertRegex(new, rb"^[0-9a-f]{24}$")
            self.assertEqual(self.sent_ids(), [new])

    def test_generated(self) -> None:
        """
        Without one, each request gets a new id, different from the last.
        """
        first, second = self.start(), self.start()
        assert first.record is not None and second.record is not None
        self.assertNotEqual(first.record.request_id, second.record.request_id)
        self.assertEqual(self.sent_ids(), [second.record.request_id])

    def test_on_lbproxy_answers(self) -> None:
        """
        lbproxy's own error answers carry the id too.
        """
        client = self.start((b"X-Request-Id", b"abc"))
        for sent in list(self.upstream.sent):
            sent.sink.response_failed(ConnectFailed("refused"))
        self.upstream.sent[-1].sink.response_failed(ConnectFailed("refused"))
        assert client.answer is not None
        self.assertEqual(client.answer[0], 502)
        self.assertEqual(self.answered_ids(client), [b"abc"])


class RecordTests(SynchronousTestCase):
    """
    The exchange notes in the request's record what the access log writes:
    the pool, the last server tried, its status and timings, the retries.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.proxy, self.upstream = resource(self.clock)

    def test_answered(self) -> None:
        """
        An answer on the first try: its server, status, connect, header and
        response times from the attempt's start, no retry.
        """
        client = FakeClientRequest()
        ProxyExchange(self.proxy, client).start()
        sent = self.upstream.sent[0]
        self.clock.advance(0.25)
        sent.sink.connection_ready()
        self.clock.advance(0.5)
        sent.sink.response_headers(200, b"OK", [], FakeProducer())
        self.clock.advance(1)
        sent.sink.response_done()
        record = client.record
        assert record is not None
        self.assertEqual(
            (
                record.started,
                record.pool,
                record.upstream_addr,
                record.upstream_status,
                record.connect_time,
                record.header_time,
                record.response_time,
                record.retries,
            ),
            (1000.0, "web", sent.server.address, 200, 0.25, 0.75, 1.75, 0),
        )

    def test_retried(self) -> None:
        """
        After a failed attempt the record holds the last one's server, and
        counts the retry; the first attempt's times are forgotten.
        """
        client = FakeClientRequest()
        ProxyExchange(self.proxy, client).start()
        first = self.upstream.sent[0]
        first.sink.connection_ready()
        first.sink.response_failed(ConnectFailed("refused"))
        second = self.upstream.sent[1]
        record = client.record
        assert record is not None
        self.assertEqual(
            (record.upstream_addr, record.connect_time, record.retries),
            (second.server.address, None, 1),
        )
        second.sink.response_failed(ConnectFailed("refused"))
        self.assertEqual((record.upstream_status, record.response_time), (0, None))

    def test_not_routed(self) -> None:
        """
        A request no server was tried for has no upstream in its record.
        """
        client = FakeClientRequest(headers=[(b"Host", b"h"), (b"Via", b"1.1 " + VIA_TOKEN)])
        ProxyExchange(self.proxy, client).start()
        record = client.record
        assert record is not None
        self.assertEqual((record.upstream_addr, record.retries), (None, 0))
