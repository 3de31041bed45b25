"""
Tests for L{lbproxy.balancing.pool}'s choice of a server beyond the
strategy: servers listed C{down}, sticky cookies, C{max-conns} and the
queue of requests waiting for a server below it, and what the strategy is
told of each attempt.
"""

from __future__ import annotations

from collections.abc import Container, Sequence

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from lbproxy.balancing.pool import Pool, Server
from lbproxy.balancing.registry import make_balancer
from lbproxy.balancing.server import AdminState
from lbproxy.balancing.sticky import sticky_id
from lbproxy.balancing.strategies import RoundRobin
from lbproxy.config.model import PoolConfig, ServerConfig
from lbproxy.interfaces import BalancedRequest, Candidate, IBalancer
from tests.balancing.fakes import FakeRequest


def _pool(*servers: ServerConfig, clock: Clock | None = None, **options: object) -> Pool:
    """
    A pool C{web} of C{servers}, its strategy made from its options.
    """
    config = PoolConfig("web", servers, **options)  # type: ignore[arg-type]
    clock = clock or Clock()
    return Pool(config, make_balancer(config, clock), clock)


def _hosts(pool: Pool, count: int, request: BalancedRequest | None = None) -> list[str | None]:
    hosts: list[str | None] = []
    for _ in range(count):
        server = pool.pick((), request)
        hosts.append(None if server is None else server.config.host)
    return hosts


class DownTests(SynchronousTestCase):
    """
    A server listed C{down} (nginx's C{down}) is never used.
    """

    def test_never_picked(self) -> None:
        """
        The others take every request, whatever the strategy.
        """
        for balance in ("roundrobin", "leastconn", "random2", "ewma", "hash"):
            pool = _pool(ServerConfig("a", 1), ServerConfig("b", 1, down=True), balance=balance)
            self.assertEqual(set(_hosts(pool, 20, FakeRequest())), {"a"}, balance)

    def test_listed(self) -> None:
        """
        It is still one of the pool's servers (the admin page lists it).
        """
        pool = _pool(ServerConfig("a", 1), ServerConfig("b", 1, down=True))
        self.assertEqual([s.config.host for s in pool.servers], ["a", "b"])

    def test_all_down(self) -> None:
        """
        Only servers listed down: no pick, and nothing to wait for.
        """
        pool = _pool(ServerConfig("a", 1, down=True))
        self.assertIsNone(pool.pick())
        self.assertFalse(pool.must_wait())

    def test_reload_brings_it_back(self) -> None:
        """
        Adopted by a configuration that no longer lists it down, it takes
        requests again.
        """
        old = _pool(ServerConfig("a", 1), ServerConfig("b", 1, down=True))
        new = _pool(ServerConfig("a", 1), ServerConfig("b", 1))
        new.adopt({s.config.key: s for s in old.servers})
        self.assertEqual(_hosts(new, 2), ["a", "b"])


@implementer(IBalancer)
class RecordingBalancer(RoundRobin):
    """
    Round robin that records what the pool tells it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.told: list[tuple[str, Candidate, float | None]] = []
        self.requests: list[BalancedRequest | None] = []

    def pick(
        self,
        servers: Sequence[Candidate],
        exclude: Container[Candidate],
        request: BalancedRequest | None = None,
    ) -> Candidate | None:
        self.requests.append(request)
        return super().pick(servers, exclude, request)

    def started(self, server: Candidate) -> None:
        self.told.append(("started", server, None))

    def finished(self, server: Candidate, elapsed: float | None) -> None:
        self.told.append(("finished", server, elapsed))


class NotificationTests(SynchronousTestCase):
    """
    The pool hands its strategy the request, and tells it of every
    attempt's start and end.
    """

    def setUp(self) -> None:
        self.balancer = RecordingBalancer()
        config = PoolConfig("web", (ServerConfig("a", 1),))
        self.pool = Pool(config, self.balancer, Clock())
        self.server = self.pool.servers[0]

    def test_request_passed(self) -> None:
        """
        The request picked for reaches the strategy.
        """
        request = FakeRequest()
        self.pool.pick((), request)
        self.assertEqual(self.balancer.requests, [request])

    def test_started_and_finished(self) -> None:
        """
        C{started} after the server's C{active} counts the attempt,
        C{finished} after it no longer does, with the time to the answer's
        head when given, else the whole answer's.
        """
        pool, server = self.pool, self.server
        pool.attempt_started(server, retry=False)
        self.assertEqual((self.balancer.told, server.active), ([("started", server, None)], 1))
        pool.attempt_ended(server, 200, 0.5, first_byte=0.02)
        pool.attempt_started(server, retry=False)
        pool.attempt_ended(server, 200, 0.3)
        pool.attempt_started(server, retry=False)
        pool.attempt_ended(server, 0, None)
        self.assertEqual(
            [entry for entry in self.balancer.told if entry[0] == "finished"],
            [("finished", server, 0.02), ("finished", server, 0.3), ("finished", server, None)],
        )
        self.assertEqual(server.active, 0)


def _cookie(pool: Pool, index: int) -> FakeRequest:
    """
    A request carrying the sticky cookie naming the pool's server C{index}.
    """
    ident = sticky_id(pool.name, pool.servers[index])
    return FakeRequest(headers={b"cookie": b"x=1; lbsrv=" + ident})


class StickyTests(SynchronousTestCase):
    """
    With C{sticky-cookie}, a client's cookie keeps it on its server while
    that server is in rotation.
    """

    def setUp(self) -> None:
        self.pool = _pool(
            ServerConfig("a", 1),
            ServerConfig("b", 1),
            ServerConfig("z", 1, backup=True),
            sticky_cookie="lbsrv",
        )
        self.a, self.b, self.z = self.pool.servers

    def test_no_sticky_cookie_option(self) -> None:
        """
        Without the option the pool has no sticky cookie and cookies are
        ignored.
        """
        pool = _pool(ServerConfig("a", 1), ServerConfig("b", 1))
        self.assertIsNone(pool.sticky)
        self.assertEqual(_hosts(pool, 2, _cookie(self.pool, 1)), ["a", "b"])

    def test_stays(self) -> None:
        """
        A client naming C{b} goes to C{b} every time; one without a cookie
        goes by the strategy.
        """
        self.assertEqual(_hosts(self.pool, 3, _cookie(self.pool, 1)), ["b", "b", "b"])
        self.assertEqual(_hosts(self.pool, 2, FakeRequest()), ["a", "b"])

    def test_every_strategy(self) -> None:
        """
        Sticky cookies work whatever the strategy.
        """
        for balance in ("roundrobin", "leastconn", "random2", "ewma", "hash"):
            pool = _pool(
                ServerConfig("a", 1),
                ServerConfig("b", 1),
                ServerConfig("c", 1),
                sticky_cookie="lbsrv",
                balance=balance,
            )
            for index, host in enumerate("abc"):
                self.assertEqual(set(_hosts(pool, 5, _cookie(pool, index))), {host}, balance)

    def test_out_of_rotation_falls_back(self) -> None:
        """
        Its server down, the client goes by the strategy (and will get a
        new cookie); back up, the old cookie works again.
        """
        self.b.up = False
        self.assertEqual(_hosts(self.pool, 2, _cookie(self.pool, 1)), ["a", "a"])
        self.b.up = True
        self.assertEqual(_hosts(self.pool, 1, _cookie(self.pool, 1)), ["b"])

    def test_tried_falls_back(self) -> None:
        """
        A retry does not go back to the server the cookie names if it was
        tried already.
        """
        server = self.pool.pick([self.b], _cookie(self.pool, 1))
        self.assertIs(server, self.a)

    def test_draining_keeps_sessions(self) -> None:
        """
        A draining server takes no new clients but keeps those whose
        cookie names it (HAProxy's drain); in maintenance it keeps none.
        """
        self.pool.set_admin(self.b, AdminState.DRAINING)
        self.assertEqual(_hosts(self.pool, 2, FakeRequest()), ["a", "a"])
        self.assertEqual(_hosts(self.pool, 1, _cookie(self.pool, 1)), ["b"])
        self.pool.set_admin(self.b, AdminState.MAINT)
        self.assertEqual(_hosts(self.pool, 1, _cookie(self.pool, 1)), ["a"])

    def test_backup_only_while_primaries_out(self) -> None:
        """
        A cookie naming a backup (set while the primaries were down) keeps
        the client there only while no primary can be picked.
        """
        self.a.up = self.b.up = False
        self.assertEqual(_hosts(self.pool, 1, _cookie(self.pool, 2)), ["z"])
        self.a.up = True
        self.assertEqual(_hosts(self.pool, 1, _cookie(self.pool, 2)), ["a"])

    def test_garbage_cookie(self) -> None:
        """
        A cookie naming no server goes by the strategy.
        """
        request = FakeRequest(headers={b"cookie": b"lbsrv=10.0.0.1:80"})
        self.assertEqual(_hosts(self.pool, 2, request), ["a", "b"])


class MaxConnsTests(SynchronousTestCase):
    """
    A server at its C{max-conns} is passed over; when every server a
    request may use is, the request should wait.
    """

    def setUp(self) -> None:
        self.pool = _pool(ServerConfig("a", 1, max_conns=1), ServerConfig("b", 1, max_conns=2))
        self.a, self.b = self.pool.servers

    def start(self, server: Server) -> None:
        self.pool.attempt_started(server, retry=False)

    def test_full_skipped(self) -> None:
        """
        Round robin passes over C{a} while it has its one request.
        """
        self.start(self.a)
        self.assertEqual(_hosts(self.pool, 3), ["b", "b", "b"])

    def test_every_strategy(self) -> None:
        """
        Every strategy passes over a full server.
        """
        for balance in ("roundrobin", "leastconn", "random2", "ewma", "hash"):
            pool = _pool(ServerConfig("a", 1, max_conns=1), ServerConfig("b", 1), balance=balance)
            pool.attempt_started(pool.servers[0], retry=False)
            self.assertEqual(set(_hosts(pool, 20, FakeRequest())), {"b"}, balance)

    def test_all_full_must_wait(self) -> None:
        """
        Every server at its limit: no pick, and the request should wait.
        """
        self.start(self.a)
        self.start(self.b)
        self.start(self.b)
        self.assertIsNone(self.pool.pick())
        self.assertTrue(self.pool.must_wait())

    def test_down_is_not_waited_for(self) -> None:
        """
        A full server that is down is nothing to wait for: with the other
        down too, the request fails at once.
        """
        self.start(self.a)
        self.b.up = False
        self.a.up = False
        self.assertIsNone(self.pool.pick())
        self.assertFalse(self.pool.must_wait())

    def test_tried_is_not_waited_for(self) -> None:
        """
        A retry whose only untried server is down does not wait for the
        full server it already tried.
        """
        self.start(self.a)
        self.b.up = False
        self.assertIsNone(self.pool.pick([self.a]))
        self.assertFalse(self.pool.must_wait())

    def test_backups_when_primaries_full(self) -> None:
        """
        Full primaries are passed over like down ones: a backup takes the
        request (nginx's C{backup} with C{max_conns}).
        """
        pool = _pool(ServerConfig("a", 1, max_conns=1), ServerConfig("z", 1, backup=True))
        pool.attempt_started(pool.servers[0], retry=False)
        self.assertEqual(_hosts(pool, 1), ["z"])

    def test_sticky_waits_for_its_server(self) -> None:
        """
        A client whose sticky server is full waits for it rather than
        moving (HAProxy's persistence with C{maxconn}).
        """
        pool = _pool(ServerConfig("a", 1, max_conns=1), ServerConfig("b", 1), sticky_cookie="lbsrv")
        pool.attempt_started(pool.servers[0], retry=False)
        self.assertIsNone(pool.pick((), _cookie(pool, 0)))
        self.assertTrue(pool.must_wait())

    def test_no_limit_no_wait(self) -> None:
        """
        In a pool without C{max-conns} nothing ever waits.
        """
        pool = _pool(ServerConfig("a", 1))
        pool.servers[0].up = False
        self.assertIsNone(pool.pick())
        self.assertFalse(pool.must_wait())


class QueueTests(SynchronousTestCase):
    """
    Requests wait in the pool's queue, first come first served, for a
    server below its C{max-conns}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.pool = _pool(
            ServerConfig("a", 1, max_conns=1),
            ServerConfig("b", 1, max_conns=1),
            clock=self.clock,
            queue_timeout=5.0,
            max_queue=3,
        )
        self.a, self.b = self.pool.servers
        self.pool.attempt_started(self.a, retry=False)
        self.pool.attempt_started(self.b, retry=False)
        self.events: list[tuple[str, str]] = []

    def wait(self, name: str, tried: Container[Server] = (), request: object = None) -> object:
        def resume(server: Server | None) -> None:
            if server is None:
                self.events.append((name, "none left"))
                return
            self.events.append((name, server.config.host))
            self.pool.attempt_started(server, retry=False)

        def expire() -> None:
            self.events.append((name, "expired"))

        return self.pool.wait(tried, request, resume, expire)  # type: ignore[arg-type]

    def test_woken_in_order_when_attempts_end(self) -> None:
        """
        Each attempt that ends frees a place for the oldest waiting request.
        """
        self.wait("first")
        self.wait("second")
        self.assertEqual((self.events, self.pool.waiting), ([], 2))
        self.pool.attempt_ended(self.b, 200, 0.1)
        self.assertEqual(self.events, [("first", "b")])
        self.pool.attempt_ended(self.a, 200, 0.1)
        self.assertEqual(self.events, [("first", "b"), ("second", "a")])
        self.assertEqual(self.pool.waiting, 0)

    def test_woken_when_a_server_comes_back(self) -> None:
        """
        A server coming back (here from maintenance, not busy) takes the
        oldest waiting request at once.
        """
        pool = _pool(
            ServerConfig("a", 1, max_conns=1), ServerConfig("b", 1, max_conns=1), clock=self.clock
        )
        a, b = pool.servers
        pool.set_admin(b, AdminState.MAINT)
        pool.attempt_started(a, retry=False)
        self.assertIsNone(pool.pick())
        self.assertTrue(pool.must_wait())
        resumed: list[Server] = []
        pool.wait((), None, resumed.append, lambda: None)
        pool.set_admin(b, AdminState.NORMAL)
        self.assertEqual(resumed, [b])

    def test_timeout(self) -> None:
        """
        After C{queue-timeout} seconds a waiting request is told so and
        leaves the queue; later ones time out in turn.
        """
        self.wait("first")
        self.clock.advance(2)
        self.wait("second")
        self.clock.advance(3)
        self.assertEqual(self.events, [("first", "expired")])
        self.clock.advance(1.9)
        self.assertEqual(len(self.events), 1)
        self.clock.advance(0.1)
        self.assertEqual(self.events, [("first", "expired"), ("second", "expired")])
        self.assertEqual((self.pool.waiting, self.clock.getDelayedCalls()), (0, []))

    def test_timeout_logged_once(self) -> None:
        """
        Queue timeouts are logged once while the queue stays busy, not per
        request.
        """
        logged: list[str] = []

        def observe(event: dict[str, object]) -> None:
            if "max-conns" in str(event.get("log_format", "")) or "max-conns" in str(
                event.get("what", "")
            ):
                logged.append(str(event.get("what")))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        self.wait("first")
        self.wait("second")
        self.clock.advance(5)
        self.assertEqual(len(logged), 1)
        self.assertIn("queue-timeout", logged[0])

    def test_cancel(self) -> None:
        """
        A request whose client left is taken out: it is neither resumed nor
        timed out, and its place goes to the next.
        """
        cancel = self.wait("gone")
        self.wait("stays")
        assert callable(cancel)
        cancel()
        cancel()
        self.pool.attempt_ended(self.a, 200, 0.1)
        self.assertEqual(self.events, [("stays", "a")])
        self.clock.advance(10)
        self.assertEqual(self.events, [("stays", "a")])

    def test_last_cancel_stops_the_timer(self) -> None:
        """
        An empty queue has no timer pending.
        """
        cancel = self.wait("gone")
        assert callable(cancel)
        cancel()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_full(self) -> None:
        """
        Beyond C{max-queue} waiting requests, L{Pool.wait} refuses at once.
        """
        for name in "xyz":
            self.assertIsNotNone(self.wait(name))
        self.assertIsNone(self.wait("refused"))
        self.assertEqual(self.pool.waiting, 3)

    def test_oldest_waits_for_its_server(self) -> None:
        """
        The oldest request waits for a server only it may not use (it tried
        the one that is free); a later one takes that server meanwhile.
        """
        self.wait("retry", tried=[self.a])
        self.wait("new")
        self.pool.attempt_ended(self.a, 200, 0.1)
        self.assertEqual(self.events, [("new", "a")])
        self.pool.attempt_ended(self.b, 200, 0.1)
        self.assertEqual(self.events, [("new", "a"), ("retry", "b")])

    def test_released_when_every_server_goes_down(self) -> None:
        """
        When every server it waits for goes down, a waiting request leaves
        the queue at once with no server (to get what a new request gets),
        not at C{queue-timeout}.
        """
        self.wait("first")
        self.wait("second")
        self.pool.set_admin(self.a, AdminState.MAINT)
        self.assertEqual(self.events, [])
        self.pool.set_admin(self.b, AdminState.MAINT)
        self.assertEqual(self.events, [("first", "none left"), ("second", "none left")])
        self.assertEqual((self.pool.waiting, self.clock.getDelayedCalls()), (0, []))

    def test_released_when_ejected(self) -> None:
        """
        Passive ejection of the servers it waits for releases a waiting
        request too.
        """
        self.wait("first")
        for server in (self.a, self.b):
            for _ in range(self.pool.config.max_fails):
                self.pool.attempt_failed(server, "refused")
        self.assertEqual(self.events, [("first", "none left")])

    def test_only_those_with_nothing_left(self) -> None:
        """
        A server going down releases the requests that have no other busy
        server to wait for (here one that tried the other), wherever they
        are in the queue; the others wait on.
        """
        self.wait("new")
        self.wait("retry", tried=[self.a])
        self.wait("retry2", tried=[self.a])
        self.pool.set_admin(self.b, AdminState.MAINT)
        self.assertEqual(self.events, [("retry", "none left"), ("retry2", "none left")])
        self.assertEqual(self.pool.waiting, 1)
        self.pool.attempt_ended(self.a, 200, 0.1)
        self.assertEqual(self.events[-1], ("new", "a"))

    def test_resumed_request_fails_at_once(self) -> None:
        """
        A resumed request whose attempt ends at once (a refused connection)
        ends it inside the queue's service: the queue goes on without
        serving anyone twice.
        """
        served: list[str] = []

        def resume_and_fail(server: Server) -> None:
            served.append("quick")
            self.pool.attempt_started(server, retry=False)
            self.pool.attempt_ended(server, 0, None)

        self.pool.wait((), None, resume_and_fail, lambda: None)
        self.wait("next")
        self.pool.attempt_ended(self.a, 200, 0.1)
        self.assertEqual((served, self.events), (["quick"], [("next", "a")]))

    def test_broken_resume_logged(self) -> None:
        """
        A bug while resuming one request is logged and does not reach the
        attempt whose end woke the queue.
        """

        def broken(server: Server) -> None:
            raise RuntimeError("a bug")

        self.pool.wait((), None, broken, lambda: None)
        self.pool.attempt_ended(self.a, 200, 0.1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
