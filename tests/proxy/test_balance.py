"""
Integration tests of balancing (issue 15): lbproxy between raw clients and
real app servers on 127.0.0.1 (system-chosen ports), one of them slow (it
answers after a delay, by C{callLater}: no sleeps).  Least connections and
peak EWMA steer away from the slow server where round robin does not;
sticky cookies keep a client on its server; C{max-conns} makes requests
wait and C{queue-timeout} ends the wait with 503; consistent hashing on a
header keeps each user on one server.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from lbproxy.config.model import Config, PoolConfig, ServerConfig
from lbproxy.http.site import ProxySite
from lbproxy.tap import build_site
from tests.support import (
    RawResponse,
    get,
    held_request,
    listen,
    raw_request,
    release_held,
    start_app,
)


class DelayedApp(Resource):
    """
    An app server answering C{PORT <name>} after C{delay} seconds (at once
    for 0), counting the requests it got.
    """

    isLeaf = True

    def __init__(self, name: str, delay: float) -> None:
        super().__init__()
        self.name = name.encode()
        self.delay = delay
        self.count = 0
        self.pending: set[IDelayedCall] = set()

    def render(self, request: Request) -> bytes | int:  # type: ignore[override]
        self.count += 1
        if not self.delay:
            return b"PORT " + self.name

        def answer() -> None:
            self.pending.discard(call)
            if not request._disconnected:  # type: ignore[attr-defined]
                request.write(b"PORT " + self.name)
                request.finish()

        call = reactor.callLater(self.delay, answer)
        self.pending.add(call)
        return NOT_DONE_YET


def start_delayed(testcase: TestCase, name: str, delay: float) -> tuple[DelayedApp, int]:
    """
    Start a L{DelayedApp} on loopback; its pending answers are cancelled on
    cleanup.
    """
    app = DelayedApp(name, delay)
    site = Site(app)
    site.log = lambda request: None  # type: ignore[method-assign]
    site.timeOut = None
    port = listen(testcase, site)

    def cancel_pending() -> None:
        for call in list(app.pending):
            call.cancel()

    testcase.addCleanup(cancel_pending)
    return app, port


def start_pool_proxy(
    testcase: TestCase, servers: tuple[ServerConfig, ...], clock: Any = None, **pool: Any
) -> tuple[int, ProxySite]:
    """
    Start lbproxy over C{servers} (pool options C{pool}, health checks
    off), on loopback.
    """
    config = Config(
        pools=(PoolConfig("default", servers, health_check=False, **pool),), access_log="off"
    )
    site, client = build_site(config, reactor, clock)
    proxy_port = listen(testcase, site)
    testcase.addCleanup(client.close_idle)
    return proxy_port, site


def load(port: int, clients: int, total: int) -> Deferred[Counter[bytes]]:
    """
    C{clients} clients, each sending its next request as soon as the last
    is answered, C{total} requests in all; fires with how many answers each
    body got (an error status counts as C{b"<status>"}).
    """
    answers: Counter[bytes] = Counter()
    left = [total]

    @inlineCallbacks
    def client() -> Any:
        while left[0] > 0:
            left[0] -= 1
            response = yield get(port)
            answers[response.body if response.status == 200 else b"%d" % response.status] += 1

    return gatherResults([client() for _ in range(clients)]).addCallback(lambda _: answers)


class SlowServerTests(TestCase):
    """
    One app server answers at once, the other after 200 ms; eight clients
    send 160 requests through lbproxy.

    Clients, proxy and app servers share this process, so the "fast"
    server's answers take milliseconds of Python each, tens of them on a
    loaded machine; with least connections the slow server's share is
    about the ratio of the two response times, so the slow one is slow
    enough (200 ms, not the bench's 50) to stay under a quarter even then.
    """

    def share_of_slow(self, balance: str) -> Deferred[float]:
        fast, fast_port = start_delayed(self, "fast", 0)
        slow, slow_port = start_delayed(self, "slow", 0.2)
        servers = (ServerConfig("127.0.0.1", fast_port), ServerConfig("127.0.0.1", slow_port))
        port, _ = start_pool_proxy(self, servers, balance=balance)

        def share(answers: Counter[bytes]) -> float:
            self.assertEqual(sum(answers.values()), 160)
            self.assertEqual(set(answers), {b"PORT fast", b"PORT slow"} & set(answers))
            self.assertEqual(slow.count + fast.count, 160)
            return slow.count / 160

        return load(port, clients=8, total=160).addCallback(share)

    @inlineCallbacks
    def test_roundrobin_half(self) -> Any:
        """
        Round robin sends the slow server half of the requests (what the
        strategies below improve on).
        """
        share = yield self.share_of_slow("roundrobin")
        self.assertTrue(0.45 <= share <= 0.55, share)

    @inlineCallbacks
    def test_leastconn_steers_away(self) -> Any:
        """
        Least connections sends the slow server under a quarter: requests
        pile up on it, so new ones go to the fast one.
        """
        share = yield self.share_of_slow("leastconn")
        self.assertLess(share, 0.25)

    @inlineCallbacks
    def test_ewma_steers_away(self) -> Any:
        """
        Peak EWMA sends the slow server under a quarter once it has seen
        one slow answer.
        """
        share = yield self.share_of_slow("ewma")
        self.assertLess(share, 0.25)

    @inlineCallbacks
    def test_random2_steers_away(self) -> Any:
        """
        Two random choices by requests in flight (with two servers, both
        are drawn every time) does as least connections.
        """
        share = yield self.share_of_slow("random2")
        self.assertLess(share, 0.25)


def _cookie(response: RawResponse, name: bytes) -> bytes | None:
    """
    The C{NAME=value} of the response's C{Set-Cookie} for C{name}, if any.
    """
    for value in response.header(b"set-cookie"):
        pair = value.split(b";")[0]
        if pair.startswith(name + b"="):
            return pair
    return None


class StickyTests(TestCase):
    """
    C{--sticky-cookie lbsrv} keeps a client on its server, through real
    sockets.
    """

    def setUp(self) -> None:
        self.app_a, _, port_a = start_app(self, "3000")
        self.app_b, _, port_b = start_app(self, "3001")
        servers = (ServerConfig("127.0.0.1", port_a), ServerConfig("127.0.0.1", port_b))
        self.ports = {b"PORT 3000": port_a, b"PORT 3001": port_b}
        self.port, self.site = start_pool_proxy(self, servers, sticky_cookie="lbsrv")

    @inlineCallbacks
    def test_client_kept(self) -> Any:
        """
        The first answer sets the cookie (opaque, not the address); with it
        every later request goes to the same server, and it is not set
        again.  Without it requests alternate.
        """
        first = yield get(self.port)
        cookie = _cookie(first, b"lbsrv")
        assert cookie is not None
        self.assertNotIn(b"127.0.0.1", cookie)
        self.assertIn(b"Path=/; HttpOnly", first.header(b"set-cookie")[0])
        bodies = []
        for _ in range(6):
            response = yield get(self.port, headers=b"Cookie: " + cookie + b"\r\n")
            bodies.append(response.body)
            self.assertIsNone(_cookie(response, b"lbsrv"))
        self.assertEqual(set(bodies), {first.body})
        plain = []
        for _ in range(2):
            response = yield get(self.port)
            plain.append(response.body)
        self.assertEqual(set(plain), {b"PORT 3000", b"PORT 3001"})

    @inlineCallbacks
    def test_server_out_new_cookie(self) -> Any:
        """
        While its server is out of rotation the client goes to another and
        gets a new cookie naming it.
        """
        first = yield get(self.port)
        cookie = _cookie(first, b"lbsrv")
        assert cookie is not None
        pool = self.site.resource.router.pools["default"]
        [mine] = [s for s in pool.servers if s.config.port == self.ports[first.body]]
        pool.attempt_failed(mine, "test")
        response = yield get(self.port, headers=b"Cookie: " + cookie + b"\r\n")
        self.assertNotEqual(response.body, first.body)
        new = _cookie(response, b"lbsrv")
        self.assertIsNotNone(new)
        self.assertNotEqual(new, cookie)


class MaxConnsTests(TestCase):
    """
    C{max-conns}: a server at its limit gets no more requests; the rest
    wait, and get 503 after C{queue-timeout}.
    """

    @inlineCallbacks
    def test_waits_for_a_free_server(self) -> Any:
        """
        With one server of C{max-conns=1}, a second request waits (the app
        holds the first) and is sent once the first is answered.
        """
        app, _, app_port = start_app(self, "3000")
        servers = (ServerConfig("127.0.0.1", app_port, max_conns=1),)
        port, site = start_pool_proxy(self, servers)
        pool = site.resource.router.pools["default"]
        first = get(port, b"/hold")
        yield held_request(app)
        second_client, second = raw_request(
            port, b"GET /hold HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        yield second_client.made
        while not pool.waiting:
            yield _turn()
        self.assertEqual((len(app.held), pool.servers[0].active), (1, 1))
        release_held(app)
        answer = yield first
        self.assertEqual(answer.body, b"held by 3000")
        yield held_request(app)
        self.assertEqual(pool.waiting, 0)
        release_held(app)
        data = yield second
        self.assertIn(b"held by 3000", data)

    @inlineCallbacks
    def test_queue_timeout_503(self) -> Any:
        """
        A request that waits C{queue-timeout} seconds gets 503 (the clock
        is a L{Clock} here, advanced by hand); the one in progress is
        answered normally.
        """
        app, _, app_port = start_app(self, "3000")
        clock = Clock()
        servers = (ServerConfig("127.0.0.1", app_port, max_conns=1),)
        port, site = start_pool_proxy(self, servers, clock=clock, queue_timeout=10.0)
        pool = site.resource.router.pools["default"]
        first = get(port, b"/hold")
        yield held_request(app)
        second = get(port)
        while not pool.waiting:
            yield _turn()
        clock.advance(10)
        response = yield second
        self.assertEqual(response.status, 503)
        self.assertIn(b"queue timeout", response.body)
        release_held(app)
        answer = yield first
        self.assertEqual(answer.status, 200)


def _turn() -> Deferred[None]:
    """
    Fires on the reactor's next turn, so that bytes in flight on loopback
    are read (waiting on an event that has no Deferred of its own).
    """
    waiter: Deferred[None] = Deferred()
    reactor.callLater(0, waiter.callback, None)
    return waiter


class HashHeaderTests(TestCase):
    """
    C{--balance hash --hash-key header:X-User} keeps each user on one
    server across requests and spreads users over the servers.
    """

    @inlineCallbacks
    def test_users_stay(self) -> Any:
        """
        30 users, three requests each: each user's answers come from one
        server, and the users use more than one server.
        """
        ports = [start_app(self, name)[2] for name in ("3000", "3001", "3002")]
        servers = tuple(ServerConfig("127.0.0.1", p) for p in ports)
        port, _ = start_pool_proxy(self, servers, balance="hash", hash_key="header:X-User")
        seen: dict[int, set[bytes]] = {}
        for _ in range(3):
            for user in range(30):
                response = yield get(port, headers=b"X-User: user%d\r\n" % user)
                seen.setdefault(user, set()).add(response.body)
        self.assertTrue(all(len(bodies) == 1 for bodies in seen.values()), seen)
        self.assertGreater(len(set.union(*seen.values())), 1)
