"""
A proxied request leaves no reference cycle: its objects are freed by
reference counting as soon as it is over, not by Python's cyclic garbage
collector, whose full collections walk every live object and stalled the
reactor for tens of milliseconds per collection at c=1024 (1,024 clients in
flight; bench/RESULTS.md).
"""

from __future__ import annotations

import gc
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.http.test_h2 import HTTP2TestCase
from tests.support import get, listen, raw_request, start_app, start_proxy

_UPGRADE = b"GET /ws HTTP/1.1\r\nHost: t.example\r\nConnection: Upgrade\r\nUpgrade: raw\r\n\r\n"


class _SwitchThenClose(Protocol):
    """
    An app server that answers a 101 and closes: the tunnel opens and
    closes at once.
    """

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(
            b"HTTP/1.1 101 Switching\r\nUpgrade: raw\r\nConnection: Upgrade\r\n\r\n"
        )
        self.transport.loseConnection()


class _Asking(Protocol):
    """
    A client that sends a GET once connected.
    """

    def connectionMade(self) -> None:
        self.transport.write(b"GET / HTTP/1.1\r\nHost: t.example\r\n\r\n")


class _Silent(Protocol):
    """
    An app server that never answers; C{lost} fires when lbproxy drops the
    connection.
    """

    def __init__(self, arrived: Deferred[None], lost: Deferred[None]) -> None:
        self.arrived = arrived
        self.lost = lost

    def dataReceived(self, data: bytes) -> None:
        if not self.arrived.called:
            self.arrived.callback(None)

    def connectionLost(self, reason: Failure) -> None:
        self.lost.callback(None)


#: lbproxy's per-request objects: none of them may be left to the collector.
_PER_REQUEST = {
    "HTTP11Request",
    "ProxyExchange",
    "ExchangeRecord",
    "UpstreamRequest",
    "Tunnel",
    "_Side",
    "H2Request",
}


def _cyclic_garbage() -> dict[str, int]:
    """
    lbproxy's per-request objects that only the cyclic collector frees, by
    class name.
    """
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.collect()
    gc.set_debug(0)
    found: dict[str, int] = {}
    for each in gc.garbage:
        name = type(each).__name__
        if name in _PER_REQUEST:
            found[name] = found.get(name, 0) + 1
    gc.garbage.clear()
    return found


class NoCycleTests(TestCase):
    """
    Requests through the whole proxy, over loopback, with the collector off;
    then a collection that keeps what it finds (C{DEBUG_SAVEALL}) finds
    none of a request's objects.
    """

    def setUp(self) -> None:
        self.addCleanup(gc.enable)
        self.addCleanup(gc.set_debug, 0)
        self.addCleanup(gc.garbage.clear)

    def _cyclic_garbage(self) -> dict[str, int]:
        return _cyclic_garbage()

    @inlineCallbacks
    def test_answered_requests(self) -> Any:
        """
        Answered GETs (the connection to the app server pooled between
        them) leave nothing for the collector.
        """
        _, _, app_port = start_app(self, "A")
        proxy_port, _, _ = start_proxy(self, [app_port])
        answer = yield get(proxy_port)  # warm: the pool's first connection
        self.assertEqual(answer.status, 200)
        gc.collect()
        gc.disable()
        for _ in range(3):
            answer = yield get(proxy_port)
            self.assertEqual(answer.status, 200)
        self.assertEqual(self._cyclic_garbage(), {})

    @inlineCallbacks
    def test_closed_tunnel(self) -> Any:
        """
        A tunnel that opened and closed leaves nothing for the collector:
        not its exchange, request, tunnel or sides.
        """
        app_port = listen(self, Factory.forProtocol(_SwitchThenClose))
        proxy_port, _, _ = start_proxy(self, [app_port])
        _, done = raw_request(proxy_port, _UPGRADE)  # warm
        self.assertIn(b" 101 ", (yield done))
        gc.collect()
        gc.disable()
        for _ in range(2):
            _, done = raw_request(proxy_port, _UPGRADE)
            self.assertIn(b" 101 ", (yield done))
        self.assertEqual(self._cyclic_garbage(), {})

    @inlineCallbacks
    def test_client_gone_mid_request(self) -> Any:
        """
        A client that leaves before its answer (logged 499) leaves nothing
        for the collector.
        """
        arrived: Deferred[None] = Deferred()
        lost: Deferred[None] = Deferred()
        app_port = listen(self, Factory.forProtocol(lambda: _Silent(arrived, lost)))
        proxy_port, _, _ = start_proxy(self, [app_port])
        gc.collect()
        gc.disable()
        client = _Asking()
        reactor.connectTCP("127.0.0.1", proxy_port, ClientFactory.forProtocol(lambda: client))
        yield arrived
        client.transport.abortConnection()
        yield lost
        self.assertEqual(self._cyclic_garbage(), {})


class H2NoCycleTests(HTTP2TestCase):
    """
    HTTP/2 requests, over TLS, leave no cycle either.
    """

    @inlineCallbacks
    def test_answered_streams(self) -> Any:
        """
        Answered streams leave nothing for the collector.
        """
        self.addCleanup(gc.enable)
        self.addCleanup(gc.set_debug, 0)
        self.addCleanup(gc.garbage.clear)
        client = yield self.connect()
        outcome = yield client.get(b"/")
        self.assertEqual(outcome.status, 200)
        gc.collect()
        gc.disable()
        for _ in range(3):
            outcome = yield client.get(b"/")
            self.assertEqual(outcome.status, 200)
        self.assertEqual(_cyclic_garbage(), {})
