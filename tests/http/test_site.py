"""
Tests for L{lbproxy.http.site}: the factory's side of its connections
(tracking, closing them on stop, settings replaced on reload, the
rate-limited log of refusals, HTTP/2 by ALPN), driven by hand on a
L{Clock}.  The connections themselves are tested in
L{tests.http.test_h1}; real TLS in L{tests.test_tls}.
"""

from __future__ import annotations

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import RemoteSettingsChanged, ResponseReceived
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from lbproxy.http.h1 import HTTP11Connection
from lbproxy.http.h1request import HTTP11Request
from lbproxy.http.h2request import H2Request
from tests.http.fakes import (
    ClientSideTestCase,
    TCPTransport,
    TLSTransport,
    answer,
    config,
    connect,
)
from tests.support import parse_responses

_GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
_PEER = IPv4Address("TCP", "10.0.0.5", 40000)


def _lose(protocol: HTTP11Connection) -> None:
    """
    The transport of C{protocol} is gone, as a closed transport reports.
    """
    protocol.connectionLost(Failure(ConnectionDone()))


class ConnectionTrackingTests(ClientSideTestCase):
    """
    The site knows its open connections.
    """

    def test_tracked(self) -> None:
        """
        A connection is among the site's from when it opens until it
        closes.
        """
        site = self.site()
        protocol, _ = connect(site)
        self.assertEqual(site.connections, {protocol})
        _lose(protocol)
        self.assertEqual(site.connections, set())

    def test_connection(self) -> None:
        """
        The site's protocol is lbproxy's HTTP/1.1 connection, with the
        site's settings.
        """
        site = self.site()
        protocol = site.buildProtocol(None)
        self.assertIsInstance(protocol, HTTP11Connection)
        self.assertIs(protocol.settings, site.settings)


class CloseConnectionsTests(ClientSideTestCase):
    """
    L{ProxySite.close_connections} (a stop, after the drain) closes every
    connection once its answer in progress is sent.
    """

    def test_none(self) -> None:
        """
        With no connection open it is done at once.
        """
        self.successResultOf(self.site().close_connections())

    def test_idle_closed_at_once(self) -> None:
        """
        Idle connections are closed at once; it is done when they all are
        gone.
        """
        site = self.site()
        first, first_transport = connect(site)
        second, second_transport = connect(site)
        closed = site.close_connections()
        self.assertTrue(first_transport.disconnecting)
        self.assertTrue(second_transport.disconnecting)
        _lose(first)
        self.assertNoResult(closed)
        _lose(second)
        self.successResultOf(closed)

    def test_answer_finished_first(self) -> None:
        """
        A connection whose answer is in progress is closed once that answer
        is complete.
        """
        site = self.site()
        protocol, transport = connect(site)
        protocol.dataReceived(_GET)
        closed = site.close_connections()
        self.assertFalse(transport.disconnecting)
        answer(self.handler.requests[0])
        [response] = parse_responses(transport.value())
        self.assertEqual(response.status, 200)
        self.assertTrue(transport.disconnecting)
        self.assertNoResult(closed)
        _lose(protocol)
        self.successResultOf(closed)

    def test_http2_closed(self) -> None:
        """
        An HTTP/2 connection is closed too.
        """
        site = self.site()
        protocol, transport = connect(site, TLSTransport(b"h2"))
        protocol.dataReceived(_h2_client()[1])
        closed = site.close_connections()
        self.assertTrue(transport.disconnecting)
        _lose(protocol)
        self.successResultOf(closed)


class ReloadTests(ClientSideTestCase):
    """
    L{ProxySite.apply} (a reload) gives new connections the new limits and
    timeouts; open ones keep theirs.
    """

    def test_new_connections_only(self) -> None:
        """
        After a reload to a 1 s header timeout, a new connection gets 408
        after 1 s, and one opened before keeps its 60 s.
        """
        site = self.site(client_header_timeout=60.0)
        old, old_transport = connect(site)
        site.apply(config(client_header_timeout=1.0))
        new, new_transport = connect(site)
        old.dataReceived(b"G")
        new.dataReceived(b"G")
        self.clock.advance(1)
        self.assertRefused(new_transport, 408)
        self.assertEqual(old_transport.value(), b"")
        self.clock.advance(59)
        self.assertRefused(old_transport, 408)

    def test_limits(self) -> None:
        """
        New limits apply to new connections: 2 headers are a 431 after a
        reload to 1.
        """
        site = self.site()
        site.apply(config(max_headers=1))
        self.assertEqual(site.limits.max_headers, 1)
        protocol, transport = connect(site)
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\n\r\n")
        self.assertRefused(transport, 431)


class RefusalLogTests(ClientSideTestCase):
    """
    Refused requests are logged at most once a second per reason, with a
    count, however many connections they come on.
    """

    def test_scan(self) -> None:
        """
        1,000 bad requests in one second, each on its own connection: one
        line at once, one line with the count after the second, and no
        timer left once the site stops.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        site = self.site()
        for _ in range(1000):
            protocol, _ = connect(site, TCPTransport(peerAddress=_PEER))
            protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: 1\r\n\r\n")
            _lose(protocol)
            self.clock.advance(0.0009)
        self.clock.advance(1.0 - self.clock.seconds())
        lines = [formatEvent(e) for e in events if "refused" in e.get("log_format", "")]
        detail = "400 Bad Request: invalid header name"
        self.assertEqual(
            lines,
            [
                f"refused a request from 10.0.0.5: {detail}",
                f"refused 999 more requests in the last 1 s: {detail} (last from 10.0.0.5)",
            ],
        )
        site.stopFactory()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_writes_the_count(self) -> None:
        """
        Stopping the site writes the count of refusals not yet logged.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        site = self.site()
        for _ in range(3):
            protocol, _ = connect(site, TCPTransport(peerAddress=_PEER))
            protocol.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
            _lose(protocol)
        site.stopFactory()
        lines = [formatEvent(e) for e in events if "refused" in e.get("log_format", "")]
        self.assertEqual(len(lines), 2)
        self.assertIn("refused 2 more requests", lines[1])


def _h2_client() -> tuple[H2Connection, bytes]:
    """
    An HTTP/2 client, and its first bytes: the preface, its settings and
    a GET of C{/x} without body.
    """
    client = H2Connection(H2Configuration(client_side=True))
    client.initiate_connection()
    client.send_headers(
        1,
        [(":method", "GET"), (":path", "/x"), (":scheme", "https"), (":authority", "a")],
        end_stream=True,
    )
    return client, client.data_to_send()


class HTTP2Tests(ClientSideTestCase):
    """
    On TLS, a client that picked C{h2} by ALPN is handed to lbproxy's
    HTTP/2 connection before its first byte is read; its streams reach the
    same handler.
    """

    def test_h2_by_alpn(self) -> None:
        """
        A client that picked C{h2} gets HTTP/2 settings, and its stream
        reaches the handler as an HTTP/2 request.
        """
        protocol, transport = self.connection(TLSTransport(b"h2"))
        client, first = _h2_client()
        protocol.dataReceived(first)
        events = client.receive_data(transport.value())
        self.assertIsInstance(events[0], RemoteSettingsChanged)
        [request] = self.handler.requests
        self.assertIsInstance(request, H2Request)
        self.assertEqual(
            (request.method, request.target, request.version), (b"GET", b"/x", b"HTTP/2")
        )

    def test_h2_answered(self) -> None:
        """
        An answer to an HTTP/2 request goes out on its stream.
        """
        protocol, transport = self.connection(TLSTransport(b"h2"))
        client, first = _h2_client()
        protocol.dataReceived(first)
        transport.clear()
        answer(self.handler.requests[0])
        self.clock.advance(0)
        [response] = [
            e for e in client.receive_data(transport.value()) if isinstance(e, ResponseReceived)
        ]
        self.assertIn((b":status", b"200"), response.headers)

    def test_http11_over_tls(self) -> None:
        """
        A TLS client that picked C{http/1.1}, or nothing, is served by the
        HTTP/1.1 connection.
        """
        for negotiated in (b"http/1.1", None):
            protocol, _ = self.connection(TLSTransport(negotiated))
            protocol.dataReceived(_GET)
        self.assertEqual([type(r) for r in self.handler.requests], [HTTP11Request] * 2)

    def test_h2_on_plain_tcp(self) -> None:
        """
        On plain TCP (no ALPN) an HTTP/2 preface is an HTTP/1.1 request
        line of version HTTP/2.0: 505.
        """
        protocol, transport = self.connection()
        protocol.dataReceived(_h2_client()[1])
        self.assertRefused(transport, 505)
        self.assertEqual(self.handler.requests, [])


class DateTests(ClientSideTestCase):
    """
    The C{Date} of lbproxy's own answers.
    """

    def test_date(self) -> None:
        """
        It is the clock's time, to the second.
        """
        site = self.site()
        self.clock.advance(1764675875.7)
        self.assertEqual(site.date(), b"Tue, 02 Dec 2025 11:44:35 GMT")
        self.clock.advance(0.3)
        self.assertEqual(site.date(), b"Tue, 02 Dec 2025 11:44:36 GMT")
