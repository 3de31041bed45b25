"""
Tests for the client end of tunnels in L{lbproxy.http.h1} and
L{lbproxy.http.h1request}: which requests offer an upgrade, and how a
C{101} ends HTTP on the connection.  Driven by hand on a L{StringTransport}
and a L{Clock}, as L{tests.http.test_h1}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from lbproxy.http.h1 import EAGER_READ
from lbproxy.tools.corpus import CASES
from tests.http.fakes import ClientSideTestCase

_UPGRADE = (
    b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\n"
    b"Upgrade: websocket\r\nSec-WebSocket-Key: k\r\n\r\n"
)
_SWITCH_HEADERS = [(b"Upgrade", b"websocket"), (b"Connection", b"upgrade")]


class _Receiver:
    """
    A tunnel's side (L{lbproxy.interfaces.TunnelReceiver}): records what
    the connection reports.
    """

    def __init__(self) -> None:
        self.data = b""
        self.read_closed = False
        self.lost: Failure | None = None

    def tunnel_data(self, data: bytes) -> None:
        self.data += data

    def tunnel_read_closed(self) -> None:
        self.read_closed = True

    def tunnel_lost(self, reason: Failure) -> None:
        self.lost = reason


class OfferTests(ClientSideTestCase):
    """
    An HTTP/1.1 request with C{Connection: upgrade}, an C{Upgrade} header
    and no body offers an upgrade (C{request.upgrade}); no other does.
    """

    def upgrade_of(self, data: bytes) -> bytes | None:
        """
        The C{upgrade} of the request C{data} makes.
        """
        protocol, _ = self.connection()
        protocol.dataReceived(data)
        [request] = self.handler.requests
        return request.upgrade  # type: ignore[no-any-return]

    def test_websocket(self) -> None:
        """
        A WebSocket handshake offers C{websocket}.
        """
        self.assertEqual(self.upgrade_of(_UPGRADE), b"websocket")

    def test_without_connection_token(self) -> None:
        """
        C{Upgrade} without C{Connection: upgrade} is no offer.
        """
        data = b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n"
        self.assertIsNone(self.upgrade_of(data))

    def test_http10(self) -> None:
        """
        HTTP/1.0 has no upgrade.
        """
        data = b"GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
        self.assertIsNone(self.upgrade_of(data))

    def test_with_body(self) -> None:
        """
        A request with a body is proxied as a plain request.
        """
        data = (
            b"POST / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
            b"Content-Length: 2\r\n\r\nhi"
        )
        self.assertIsNone(self.upgrade_of(data))

    def test_h2c_corpus_case(self) -> None:
        """
        The corpus's h2c smuggling attempt offers nothing: it stays a
        plain request.
        """
        [case] = [case for case in CASES if case.name == "upgrade-h2c"]
        self.assertIsNone(self.upgrade_of(case.render(b"a")))

    def test_plain_request(self) -> None:
        """
        A request without C{Connection} offers nothing.
        """
        self.assertIsNone(self.upgrade_of(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"))


class SwitchTests(ClientSideTestCase):
    """
    C{switch_protocols} answers C{101} and turns the connection into a
    tunnel's client end: what the client sends is no longer HTTP.
    """

    def switch(self, before: bytes = b"") -> tuple[Any, Any, _Receiver]:
        """
        Send an upgrade request (and C{before} in a later read), answer it
        with a 101, attach a receiver.

        @return: the connection, its transport and the receiver.
        """
        protocol, transport = self.connection()
        protocol.dataReceived(_UPGRADE)
        if before:
            protocol.dataReceived(before)
        self.paused_before = transport.producerState == "paused"
        [self.request] = self.handler.requests
        end = self.request.switch_protocols(b"Switching Protocols", _SWITCH_HEADERS)
        self.assertIs(end, protocol)
        receiver = _Receiver()
        end.attach(receiver)
        return protocol, transport, receiver

    def test_101_head(self) -> None:
        """
        The client gets the 101 with exactly the headers given: nothing of
        HTTP framing is added.
        """
        _, transport, _ = self.switch()
        self.assertEqual(
            transport.value(),
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: upgrade\r\n\r\n",
        )

    def test_bytes_go_to_the_tunnel(self) -> None:
        """
        What the client sent after the request, before and after the
        switch, goes to the tunnel as it is, never to the handler, even
        when it looks like a request.
        """
        protocol, _, receiver = self.switch(b"GET /a HTTP/1.1\r\n")
        protocol.dataReceived(b"Host: a\r\n\r\n\x81\x00")
        self.assertEqual(receiver.data, b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n\x81\x00")
        self.assertEqual(len(self.handler.requests), 1)

    def test_paused_pipeline_resumes(self) -> None:
        """
        Bytes that paused reading while the upgrade waited for its answer
        go to the tunnel, and reading resumes.
        """
        _, transport, receiver = self.switch(b"x" * (EAGER_READ + 1))
        self.assertTrue(self.paused_before)
        self.assertEqual(receiver.data, b"x" * (EAGER_READ + 1))
        self.assertEqual(transport.producerState, "producing")

    def test_producer_unregistered(self) -> None:
        """
        The connection leaves the transport's producer slot to the tunnel.
        """
        protocol, transport, _ = self.switch()
        self.assertIsNone(transport.producer)

    def test_no_http_timeouts(self) -> None:
        """
        No HTTP timeout closes a tunnel's connection (the tunnel has its
        own).
        """
        _, transport, _ = self.switch()
        self.clock.advance(7200)
        self.assertFalse(transport.disconnecting)

    def test_close_and_fin_told(self) -> None:
        """
        The client's FIN and its close go to the tunnel; the close logs
        nothing by itself.
        """
        protocol, _, receiver = self.switch()
        protocol.readConnectionLost()
        self.assertTrue(receiver.read_closed)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIsInstance(receiver.lost, Failure)
        self.assertEqual(self.logged(), [])

    def test_access_line_at_close(self) -> None:
        """
        The request is logged once its tunnel closes: status 101, the bytes
        sent to the client, then the tunnel's duration and the bytes the
        client sent.
        """
        self.switch()
        self.assertEqual(self.logged(), [])
        self.request.tunnel_closed(1234, 567, 12.3456)
        [line] = self.logged()
        self.assertTrue(
            line.endswith(
                '"GET /chat HTTP/1.1" 101 1234 "-" "-" duration=12.346 bytes_uploaded=567'
            ),
            line,
        )
