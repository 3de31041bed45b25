"""
Tests for L{lbproxy.proxy.tunnel}: two switched connections joined byte
for byte, with backpressure, half-close, the tunnel timeout and the close,
driven on a L{Clock} with fake ends over L{StringTransport}s.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from lbproxy.proxy.exchange import ProxyExchange, State
from lbproxy.proxy.tunnel import CLOSE_GRACE, Tunnel, open_tunnel, switch_headers
from tests.proxy.fakes import FakeClientRequest, FakeEnd, resource

_DONE = Failure(ConnectionDone())


class TunnelTests(SynchronousTestCase):
    """
    L{Tunnel} relays bytes both ways as they come, paces each side by the
    other, and closes both when either closes.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.closed: list[Tunnel] = []

    def tunnel(
        self,
        client: FakeEnd | None = None,
        upstream: FakeEnd | None = None,
        timeout: float = 3600.0,
    ) -> Tunnel:
        """
        A tunnel between C{client} and C{upstream} (plain TCP ends by
        default); C{self.closed} records its close.
        """
        self.client = client or FakeEnd()
        self.upstream = upstream or FakeEnd()
        return Tunnel(self.client, self.upstream, self.clock, timeout, self.closed.append, "t")

    def test_bytes_both_ways(self) -> None:
        """
        What each end read past the handshake goes through at attach, then
        every read as it comes; each way is counted.
        """
        tunnel = self.tunnel(FakeEnd(pending=b"early"), FakeEnd(pending=b"\x81\x00"))
        self.assertEqual(self.upstream.transport.value(), b"early")
        self.assertEqual(self.client.transport.value(), b"\x81\x00")
        self.client.receiver.tunnel_data(b"ping")
        self.upstream.receiver.tunnel_data(b"pong!")
        self.assertEqual(self.upstream.transport.value(), b"earlyping")
        self.assertEqual(self.client.transport.value(), b"\x81\x00pong!")
        self.assertEqual((tunnel.bytes_from_client, tunnel.bytes_to_client), (9, 7))

    def test_slow_client_pauses_upstream(self) -> None:
        """
        When the client's transport is full, reading from the app server
        pauses until it drained; the other way is not touched.
        """
        self.tunnel()
        producer = self.client.transport.producer
        producer.pauseProducing()
        self.assertEqual(self.upstream.transport.producerState, "paused")
        self.assertEqual(self.client.transport.producerState, "producing")
        producer.resumeProducing()
        self.assertEqual(self.upstream.transport.producerState, "producing")

    def test_slow_upstream_pauses_client(self) -> None:
        """
        When the app server's transport is full, reading from the client
        pauses until it drained.
        """
        self.tunnel()
        producer = self.upstream.transport.producer
        producer.pauseProducing()
        self.assertEqual(self.client.transport.producerState, "paused")
        producer.resumeProducing()
        self.assertEqual(self.client.transport.producerState, "producing")

    def test_half_close_passed_on(self) -> None:
        """
        The client's FIN becomes a FIN to the app server, which can still
        answer; the app server's FIN then ends the tunnel.
        """
        self.tunnel()
        self.client.receiver.tunnel_read_closed()
        self.assertTrue(self.upstream.transport.write_closed)
        self.assertFalse(self.upstream.transport.disconnecting)
        self.assertFalse(self.client.transport.disconnecting)
        self.upstream.receiver.tunnel_data(b"last words")
        self.assertEqual(self.client.transport.value(), b"last words")
        self.upstream.receiver.tunnel_read_closed()
        self.assertTrue(self.client.transport.write_closed)
        self.assertTrue(self.client.transport.disconnecting)
        self.assertTrue(self.upstream.transport.disconnecting)

    def test_fin_not_resumed(self) -> None:
        """
        A side that sent its FIN is never read again, even when the other
        side's buffer drains (Twisted would report the FIN again).
        """
        tunnel = self.tunnel()
        tunnel.client.pauseProducing()
        self.client.receiver.tunnel_read_closed()
        tunnel.client.resumeProducing()
        self.assertEqual(self.client.transport.producerState, "paused")

    def test_fin_into_tls_closes(self) -> None:
        """
        A FIN that would have to pass into a connection that cannot be
        half-closed (TLS) closes the tunnel.
        """
        self.tunnel(upstream=FakeEnd(half_close=False))
        self.client.receiver.tunnel_read_closed()
        self.assertFalse(self.upstream.transport.write_closed)
        self.assertTrue(self.upstream.transport.disconnecting)
        self.assertTrue(self.client.transport.disconnecting)

    def test_close_passed_on(self) -> None:
        """
        When the app server closes, the client's connection is closed once
        it has what was written to it; the tunnel is over when both are
        closed, and says so once.
        """
        tunnel = self.tunnel()
        self.clock.advance(5)
        self.upstream.receiver.tunnel_data(b"bye")
        self.upstream.receiver.tunnel_lost(_DONE)
        self.assertTrue(self.client.transport.disconnecting)
        self.assertFalse(self.client.transport.aborted)
        self.assertIsNone(self.client.transport.producer)
        self.assertEqual(self.closed, [])
        self.clock.advance(1)
        self.client.receiver.tunnel_lost(_DONE)
        self.client.receiver.tunnel_lost(_DONE)
        self.assertEqual(self.closed, [tunnel])
        self.assertEqual(tunnel.seconds, 6)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_bytes_to_a_closing_side_dropped(self) -> None:
        """
        Once one side closed, what the other still sends is not written.
        """
        self.tunnel()
        self.upstream.receiver.tunnel_lost(_DONE)
        self.client.receiver.tunnel_data(b"too late")
        self.assertEqual(self.upstream.transport.value(), b"")

    def test_close_grace(self) -> None:
        """
        A side that does not take its last bytes within L{CLOSE_GRACE}
        seconds of the close is aborted.
        """
        self.tunnel()
        self.client.receiver.tunnel_lost(_DONE)
        self.clock.advance(CLOSE_GRACE - 0.1)
        self.assertFalse(self.upstream.transport.aborted)
        self.clock.advance(0.1)
        self.assertTrue(self.upstream.transport.aborted)

    def test_tunnel_timeout(self) -> None:
        """
        A tunnel that carried no byte either way for its timeout is closed
        (and logged); a byte either way starts the count again.
        """
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.tunnel(timeout=60)
        self.clock.advance(50)
        self.upstream.receiver.tunnel_data(b"x")
        self.clock.advance(50)
        self.client.receiver.tunnel_data(b"y")
        self.clock.advance(59.9)
        self.assertFalse(self.client.transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(self.client.transport.disconnecting)
        self.assertTrue(self.upstream.transport.disconnecting)
        self.assertTrue(any("tunnel timeout" in e.get("log_format", "") for e in events), events)

    def test_abort(self) -> None:
        """
        Aborting drops both connections and ends the tunnel at once; their
        close, reported later, changes nothing.
        """
        tunnel = self.tunnel()
        tunnel.abort()
        self.assertTrue(self.client.transport.aborted)
        self.assertTrue(self.upstream.transport.aborted)
        self.assertEqual(self.closed, [tunnel])
        self.client.receiver.tunnel_lost(_DONE)
        self.upstream.receiver.tunnel_lost(_DONE)
        tunnel.abort()
        self.assertEqual(self.closed, [tunnel])

    def test_abort_after_close(self) -> None:
        """
        Aborting a tunnel that already closed does nothing.
        """
        tunnel = self.tunnel()
        self.client.receiver.tunnel_lost(_DONE)
        self.upstream.receiver.tunnel_lost(_DONE)
        tunnel.abort()
        self.assertFalse(self.client.transport.aborted)
        self.assertEqual(self.closed, [tunnel])


class OpenTunnelTests(SynchronousTestCase):
    """
    L{open_tunnel} answers the client's upgrade with the app server's 101
    and logs the request when the tunnel closes.
    """

    def test_switch_headers(self) -> None:
        """
        The client's 101 carries the server's C{Upgrade} with
        C{Connection: upgrade}, then the headers relayed (the exchange
        drops the server's other hop-by-hop headers:
        L{ExchangeTunnelTests.test_101_gets_the_request_id}).
        """
        headers = [
            (b"Upgrade", b"websocket"),
            (b"Connection", b"Upgrade, X-Hop"),
            (b"X-Hop", b"1"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Sec-WebSocket-Accept", b"abc="),
        ]
        relayed = [(b"Sec-WebSocket-Accept", b"abc="), (b"X-Request-Id", b"id")]
        self.assertEqual(
            switch_headers(headers, relayed),
            [(b"Upgrade", b"websocket"), (b"Connection", b"upgrade"), *relayed],
        )

    def test_logged_at_close(self) -> None:
        """
        Once both connections closed, the request is logged with the bytes
        each way and the tunnel's duration, then the owner is told.
        """
        clock = Clock()
        request = FakeClientRequest(upgrade=b"websocket")
        upstream = FakeEnd()
        told: list[bool] = []
        open_tunnel(
            request,
            b"Switching Protocols",
            switch_headers([(b"Upgrade", b"websocket")], []),
            upstream,
            clock,
            60.0,
            lambda: told.append(request.tunnel_log is not None),
            "t",
        )
        self.assertEqual(
            request.answer,
            (101, b"Switching Protocols", switch_headers([(b"Upgrade", b"websocket")], [])),
        )
        request.end.receiver.tunnel_data(b"abc")
        upstream.receiver.tunnel_data(b"de")
        clock.advance(2.5)
        request.end.receiver.tunnel_lost(_DONE)
        upstream.receiver.tunnel_lost(_DONE)
        self.assertEqual(request.tunnel_log, (2, 3, 2.5))
        self.assertEqual(told, [True])


_WS_HEADERS = [
    (b"Host", b"example.com"),
    (b"Connection", b"Upgrade"),
    (b"Upgrade", b"websocket"),
    (b"Sec-WebSocket-Key", b"k"),
]
_SWITCHED = [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")]


class ExchangeTunnelTests(SynchronousTestCase):
    """
    L{ProxyExchange} forwards an upgrade request, turns a 101 into a
    tunnel, and stays in flight, an active connection of its server, until
    the tunnel closes.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.proxy, self.upstream = resource(self.clock)

    def start(self, **request: object) -> tuple[ProxyExchange, FakeClientRequest]:
        request.setdefault("headers", list(_WS_HEADERS))
        request.setdefault("upgrade", b"websocket")
        client = FakeClientRequest(**request)  # type: ignore[arg-type]
        exchange = ProxyExchange(self.proxy, client)
        exchange.start()
        return exchange, client

    def switch(self) -> tuple[ProxyExchange, FakeClientRequest, FakeEnd]:
        """
        An upgrade request the app server answered with 101.
        """
        exchange, client = self.start()
        connection = FakeEnd()
        self.upstream.sent[0].sink.response_switched(b"Switching Protocols", _SWITCHED, connection)
        return exchange, client, connection

    def test_upgrade_forwarded(self) -> None:
        """
        The app server gets C{Connection: upgrade} and the client's
        C{Upgrade}, once each, and the request says what it offers.
        """
        self.start()
        [sent] = self.upstream.sent
        head = sent.request.head
        self.assertEqual(head.lower().count(b"\r\nupgrade: "), 1, head)
        self.assertEqual(head.lower().count(b"\r\nconnection: "), 1, head)
        self.assertIn(b"\r\nConnection: upgrade\r\nUpgrade: websocket\r\n", head)
        self.assertIn(b"\r\nSec-WebSocket-Key: k\r\n", head)
        self.assertEqual(sent.request.upgrade, b"websocket")

    def test_plain_request_not(self) -> None:
        """
        A request that offers no upgrade goes without C{Upgrade}, even if
        its client sent one.
        """
        self.start(upgrade=None)
        [sent] = self.upstream.sent
        self.assertNotIn(b"upgrade", sent.request.head.lower())
        self.assertIsNone(sent.request.upgrade)

    def test_tunnel_in_flight_until_closed(self) -> None:
        """
        After the 101 the exchange is a tunnel: in flight (a drain waits
        for it) and an active connection of its server, until both
        connections closed; then the attempt ends with 101, no response
        time, and the request is logged.
        """
        exchange, client, connection = self.switch()
        self.assertIs(exchange.state, State.TUNNEL)
        assert client.answer is not None
        self.assertEqual(client.answer[0], 101)
        self.assertEqual(
            client.answer[2][:2], [(b"Upgrade", b"websocket"), (b"Connection", b"upgrade")]
        )
        server = self.upstream.sent[0].server
        self.assertEqual(server.active, 1)
        drained = self.proxy.drained()
        self.assertNoResult(drained)
        self.clock.advance(30)
        connection.receiver.tunnel_data(b"hello")
        client.end.receiver.tunnel_lost(_DONE)
        connection.receiver.tunnel_lost(_DONE)
        self.assertIs(exchange.state, State.DONE)
        self.successResultOf(drained)
        self.assertEqual(server.active, 0)
        self.assertEqual(server.stats.by_class["1xx"], 1)
        self.assertEqual(server.stats.failures, 0)
        self.assertEqual(server.stats.latency.percentiles(self.clock.seconds(), [0.5]), [None])
        self.assertEqual(client.tunnel_log, (5, 0, 30.0))

    def test_101_gets_the_request_id(self) -> None:
        """
        The client's 101 carries the request's C{X-Request-Id}, once, in
        place of the app server's own, and no hop-by-hop header the app
        server's C{Connection} named; as every other answer does.
        """
        exchange, client = self.start()
        connection = FakeEnd()
        switched = [
            (b"Upgrade", b"websocket"),
            (b"Connection", b"Upgrade, X-Hop"),
            (b"X-Hop", b"1"),
            (b"X-Request-Id", b"forged"),
            (b"Sec-WebSocket-Accept", b"abc="),
        ]
        self.upstream.sent[0].sink.response_switched(b"Switching Protocols", switched, connection)
        assert client.answer is not None and client.record is not None
        headers = client.answer[2]
        self.assertEqual(
            [value for name, value in headers if name.lower() == b"x-request-id"],
            [client.record.request_id],
        )
        self.assertNotIn(b"x-hop", [name.lower() for name, _ in headers])
        self.assertIn((b"Sec-WebSocket-Accept", b"abc="), headers)

    def test_101_recorded(self) -> None:
        """
        The access log's record of a tunnel has the app server's status,
        101, and when its head came.
        """
        self.clock.advance(1)
        exchange, client = self.start()
        self.clock.advance(0.25)
        self.upstream.sent[0].sink.response_switched(b"Switching Protocols", _SWITCHED, FakeEnd())
        assert client.record is not None
        self.assertEqual(client.record.upstream_status, 101)
        self.assertEqual(client.record.header_time, 0.25)

    def test_drain_aborts_tunnels(self) -> None:
        """
        When the drain runs out, a tunnel's two connections are aborted,
        its access line is written and its exchange ends, all at once (the
        stop closes the log next).
        """
        exchange, client, connection = self.switch()
        self.proxy.abort_all()
        self.assertTrue(client.end.transport.aborted)
        self.assertTrue(connection.transport.aborted)
        self.assertEqual(self.proxy.exchanges, set())
        self.assertEqual(self.upstream.sent[0].server.active, 0)
        self.assertIsNotNone(client.tunnel_log)

    def test_tunnel_timeout_of_the_resource(self) -> None:
        """
        A tunnel takes the resource's tunnel timeout when it opens; a later
        change (a reload) leaves it alone.
        """
        self.proxy.tunnel_timeout = 30.0
        _, client, connection = self.switch()
        self.proxy.tunnel_timeout = 3600.0
        self.clock.advance(30)
        self.assertTrue(connection.transport.disconnecting)
        self.assertTrue(client.end.transport.disconnecting)

    def test_switch_after_client_gone(self) -> None:
        """
        A 101 that comes after the client left is dropped with its
        connection.
        """
        exchange, client = self.start()
        exchange.client_gone()
        connection = FakeEnd()
        self.upstream.sent[0].sink.response_switched(b"Switching Protocols", _SWITCHED, connection)
        self.assertTrue(connection.transport.aborted)
        self.assertIsNone(client.answer)
