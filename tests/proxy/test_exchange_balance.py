"""
Tests for L{lbproxy.proxy.exchange} with the balancing of issue 15: the
request reaches the strategy, a sticky cookie is set on answers, a request
waits in the pool's queue while every server is at its C{max-conns}, and
the strategy learns response times from the answer's head.  Driven on a
L{Clock} with fakes of both sides, as C{test_exchange}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lbproxy.balancing.sticky import sticky_id
from lbproxy.config.model import Config, PoolConfig, ServerConfig
from lbproxy.errors import ConnectFailed
from lbproxy.proxy.exchange import ProxyExchange, State
from lbproxy.proxy.resource import BalancingProxyResource
from lbproxy.service.service import build_router
from tests.proxy.fakes import FakeClientRequest, FakeEnd, FakeProducer, FakeUpstreamClient


def _resource(
    clock: Clock, *servers: ServerConfig, **pool: Any
) -> tuple[BalancingProxyResource, FakeUpstreamClient]:
    """
    A proxy resource over one pool C{web} of C{servers}, sending through a
    L{FakeUpstreamClient}.
    """
    config = Config(pools=(PoolConfig("web", servers, health_check=False, **pool),))
    client = FakeUpstreamClient(clock)
    proxy = BalancingProxyResource(build_router(config, clock), client)  # type: ignore[arg-type]
    return proxy, client


class _Base(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def build(self, *servers: ServerConfig, **pool: Any) -> None:
        self.proxy, self.upstream = _resource(self.clock, *servers, **pool)
        self.pool = self.proxy.router.pools["web"]

    def start(self, **request: object) -> tuple[ProxyExchange, FakeClientRequest]:
        client = FakeClientRequest(**request)  # type: ignore[arg-type]
        exchange = ProxyExchange(self.proxy, client)
        exchange.start()
        return exchange, client

    def answer(self, index: int, status: int = 200, headers: list[Any] | None = None) -> None:
        """
        The app server answers the C{index}th request sent, whole.
        """
        sink = self.upstream.sent[index].sink
        sink.response_headers(status, b"OK", headers or [], FakeProducer())
        sink.response_done()


class StickyExchangeTests(_Base):
    """
    With C{sticky-cookie}, answers name their server in a cookie.
    """

    def setUp(self) -> None:
        super().setUp()
        self.build(ServerConfig("10.0.0.1", 80), ServerConfig("10.0.0.2", 80), sticky_cookie="lb")
        self.ids = [sticky_id("web", server) for server in self.pool.servers]

    def cookies(self, client: FakeClientRequest) -> list[bytes]:
        assert client.answer is not None
        return [value for name, value in client.answer[2] if name == b"Set-Cookie"]

    def test_cookie_set(self) -> None:
        """
        A client without the cookie gets one naming the server that
        answered, after the app's own cookies.
        """
        _, client = self.start()
        self.answer(0, headers=[(b"Set-Cookie", b"app=1")])
        self.assertEqual(
            self.cookies(client), [b"app=1", b"lb=" + self.ids[0] + b"; Path=/; HttpOnly"]
        )

    def test_cookie_on_101(self) -> None:
        """
        A 101 that opens a tunnel names its server too.
        """
        _, client = self.start(upgrade=b"websocket")
        switched = [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")]
        self.upstream.sent[0].sink.response_switched(b"Switching Protocols", switched, FakeEnd())
        self.assertEqual(self.cookies(client), [b"lb=" + self.ids[0] + b"; Path=/; HttpOnly"])

    def test_secure(self) -> None:
        """
        Over TLS the cookie is C{Secure}.
        """
        _, client = self.start(secure=True)
        self.answer(0)
        self.assertTrue(self.cookies(client)[0].endswith(b"; Secure"))

    def test_client_kept_and_not_set_again(self) -> None:
        """
        A client sending the cookie goes to its server and is not sent the
        cookie again.
        """
        headers = [(b"Host", b"example.com"), (b"Cookie", b"lb=" + self.ids[1])]
        for index in range(3):
            _, client = self.start(headers=headers)
            self.assertIs(self.upstream.sent[index].server, self.pool.servers[1])
            self.answer(index)
            self.assertEqual(self.cookies(client), [])

    def test_failover_sets_new_cookie(self) -> None:
        """
        When the cookie's server cannot be reached the request goes to
        another, and the answer names the new one.
        """
        headers = [(b"Host", b"example.com"), (b"Cookie", b"lb=" + self.ids[0])]
        _, client = self.start(headers=headers)
        self.upstream.sent[0].sink.response_failed(ConnectFailed("connection refused"))
        self.answer(1)
        self.assertEqual(self.cookies(client), [b"lb=" + self.ids[1] + b"; Path=/; HttpOnly"])

    def test_no_cookie_without_option(self) -> None:
        """
        Without C{sticky-cookie} no cookie is added.
        """
        self.build(ServerConfig("10.0.0.1", 80))
        _, client = self.start()
        self.answer(0)
        self.assertEqual(self.cookies(client), [])

    def test_no_cookie_on_own_errors(self) -> None:
        """
        lbproxy's own answers (no server) set no cookie.
        """
        for server in self.pool.servers:
            self.pool.attempt_failed(server, "test")
        _, client = self.start()
        self.assertEqual(client.status, 503)
        self.assertEqual(self.cookies(client), [])


class HashExchangeTests(_Base):
    """
    The request reaches the strategy: C{hash} keeps a key on one server.
    """

    def test_header_key(self) -> None:
        """
        Requests with the same C{X-User} go to the same server.
        """
        self.build(
            *(ServerConfig(f"10.0.0.{i}", 80) for i in range(1, 5)),
            balance="hash",
            hash_key="header:X-User",
        )
        servers = {}
        for round_ in range(3):
            for user in range(10):
                headers = [(b"Host", b"h"), (b"X-User", b"user%d" % user)]
                self.start(headers=headers)
                server = self.upstream.sent[-1].server
                self.assertIs(servers.setdefault(user, server), server, (round_, user))
        self.assertGreater(len(set(servers.values())), 1)


class QueueExchangeTests(_Base):
    """
    While every server is at its C{max-conns}, requests wait in the pool's
    queue; 503 when it is full or the wait too long.
    """

    def setUp(self) -> None:
        super().setUp()
        self.build(
            ServerConfig("10.0.0.1", 80, max_conns=1),
            ServerConfig("10.0.0.2", 80, max_conns=1),
            queue_timeout=10.0,
            max_queue=2,
        )

    def test_waits_then_sent(self) -> None:
        """
        A third request waits (nothing sent, no answer) until an attempt
        ends, then goes to the server that freed up.
        """
        self.start()
        self.start()
        exchange, client = self.start()
        self.assertEqual(len(self.upstream.sent), 2)
        self.assertIs(exchange.state, State.WAITING)
        self.assertIsNone(client.answer)
        self.answer(1)
        self.assertEqual(len(self.upstream.sent), 3)
        self.assertIs(self.upstream.sent[2].server, self.pool.servers[1])
        self.answer(2)
        self.assertEqual(client.status, 200)

    def test_first_come_first_served(self) -> None:
        """
        Waiting requests are sent in the order they came.
        """
        self.start()
        self.start()
        _, first = self.start(target=b"/first")
        _, second = self.start(target=b"/second")
        self.answer(0)
        self.answer(1)
        heads = [sent.request.head.split(b" ")[1] for sent in self.upstream.sent[2:]]
        self.assertEqual(heads, [b"/first", b"/second"])

    def test_queue_timeout(self) -> None:
        """
        After C{queue-timeout} seconds without a free server: 503 (HAProxy's
        C{timeout queue}), and the exchange is over.
        """
        self.start()
        self.start()
        exchange, client = self.start()
        self.clock.advance(9.9)
        self.assertIsNone(client.answer)
        self.clock.advance(0.1)
        self.assertEqual(client.status, 503)
        self.assertIn(b"queue timeout", client.written)
        self.assertIs(exchange.state, State.DONE)
        self.assertNotIn(exchange, self.proxy.exchanges)

    def test_servers_down_while_waiting(self) -> None:
        """
        When every server goes down while a request waits, it gets at once
        what a new request gets (503, no healthy upstream), not a queue
        timeout 10 s later.
        """
        self.start()
        self.start()
        exchange, client = self.start()
        self.assertIs(exchange.state, State.WAITING)
        for server in self.pool.servers:
            self.pool.attempt_failed(server, "test")
        self.assertEqual(client.status, 503)
        self.assertIn(b"no healthy upstream", client.written)
        self.assertIs(exchange.state, State.DONE)
        self.assertEqual((self.pool.waiting, self.clock.getDelayedCalls()), (0, []))
        _, new = self.start()
        self.assertEqual(new.written, client.written)

    def test_queue_full(self) -> None:
        """
        Beyond C{max-queue} waiting requests: 503 at once.
        """
        for _ in range(4):
            self.start()
        _, client = self.start()
        self.assertEqual(client.status, 503)
        self.assertIn(b"queue full", client.written)
        self.assertEqual(self.pool.waiting, 2)

    def test_client_gone_leaves_queue(self) -> None:
        """
        A waiting request whose client leaves is taken out of the queue:
        the next one gets the free server.
        """
        self.start()
        self.start()
        gone, _ = self.start(target=b"/gone")
        self.start(target=b"/next")
        gone.client_gone()
        self.assertEqual(self.pool.waiting, 1)
        self.answer(0)
        self.assertEqual(self.upstream.sent[2].request.head.split(b" ")[1], b"/next")

    def test_abort_leaves_queue(self) -> None:
        """
        A waiting request aborted (the drain timeout) leaves the queue.
        """
        self.start()
        self.start()
        waiting, client = self.start()
        waiting.abort()
        self.assertEqual((self.pool.waiting, client.aborted), (0, True))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_retry_waits(self) -> None:
        """
        A request whose server could not be reached waits for another when
        every other is full, and does not go back to the one it tried.
        """
        self.start()
        _, client = self.start()
        self.upstream.sent[1].sink.response_failed(ConnectFailed("connection refused"))
        # The second server is now ejected (max-fails 1); the first is full.
        self.assertEqual(len(self.upstream.sent), 2)
        self.assertIsNone(client.answer)
        self.answer(0)
        self.assertIs(self.upstream.sent[2].server, self.pool.servers[0])
        self.answer(2)
        self.assertEqual(client.status, 200)


class ResponseTimeTests(_Base):
    """
    The strategy learns a server's response time from the answer's head,
    not from how long the client took to read the body.
    """

    def test_first_byte(self) -> None:
        """
        An answer whose head came after 0.05 s and whose body took 5 s more
        (a slow client) costs its server 0.05 s.
        """
        self.build(ServerConfig("10.0.0.1", 80), ServerConfig("10.0.0.2", 80), balance="ewma")
        self.start()
        sink = self.upstream.sent[0].sink
        self.clock.advance(0.05)
        sink.response_headers(200, b"OK", [], FakeProducer())
        self.clock.advance(5)
        sink.response_done()
        balancer: Any = self.pool._balancer
        cost = balancer.cost(self.upstream.sent[0].server, self.clock.seconds())
        self.assertAlmostEqual(cost, 0.05)
