# -*- test-case-name: tests.balancing.test_pool_choice -*-
"""
The queue of a pool whose servers are all at their C{max-conns}
(HAProxy's C{maxconn} and C{timeout queue}; nginx Plus's C{queue}).

A request that finds every server it may use at its limit waits here,
first come first served, until its pool hands it a server: whenever an
attempt ends or a server comes back, the oldest waiting requests are given
the servers that are free.  The oldest may wait for a server only it
cannot use now (its sticky server, or when it tried the free one already);
then later requests go ahead where they fit.  A request waits at most
C{queue-timeout} seconds, and at most C{max-queue} wait at once; a request
whose client leaves is taken out.  One timer serves the whole queue: every
request waits the same time, so deadlines come in order.  No I/O; time
comes from the pool's clock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Container
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from lbproxy.balancing.server import Server
from lbproxy.config.model import PoolConfig
from lbproxy.interfaces import BalancedRequest

__all__ = ["WaitQueue"]


class QueueOwner(Protocol):
    """
    What the queue needs of its pool (L{lbproxy.balancing.pool.Pool}).
    """

    name: str
    config: PoolConfig

    def pick(
        self, exclude: Container[Server] = (), request: BalancedRequest | None = None
    ) -> Server | None:
        """
        A server for a request, or L{None}.
        """

    def must_wait(self) -> bool:
        """
        Whether the request the last pick found no server for should wait.
        """

    def has_room(self) -> bool:
        """
        Whether any server in rotation is below its C{max-conns}.
        """


class WaitQueue:
    """
    Requests waiting for a server of one pool; see the module docstring.
    """

    _log = Logger()

    def __init__(self, pool: QueueOwner, clock: IReactorTime) -> None:
        """
        @param pool: the pool whose servers the requests wait for.
        @param clock: what times C{queue-timeout}.
        """
        self._pool = pool
        self._clock = clock
        self._waiting: OrderedDict[_Waiter, None] = OrderedDict()
        self._timer: IDelayedCall | None = None
        self._reported = False
        self._serving = self._serve_again = self._sweep = False

    def __len__(self) -> int:
        return len(self._waiting)

    def wait(
        self,
        tried: Container[Server],
        request: BalancedRequest | None,
        resume: Callable[[Server | None], None],
        expire: Callable[[], None],
    ) -> Callable[[], None] | None:
        """
        Queue a request until a server it may use is below its
        C{max-conns}.

        @param tried: servers it must not go to.
        @param request: the request (for sticky cookies and hashing).
        @param resume: called with the server picked for it, or with
            L{None} when no server it may use is busy any more (all down or
            gone): then it should decide again as a new request does.
        @param expire: called if no server was free for C{queue-timeout}
            seconds (the request is then out of the queue).
        @return: what takes it out of the queue (its client left), or
            L{None} if the queue is full (C{max-queue}).
        """
        config = self._pool.config
        if config.max_queue and len(self._waiting) >= config.max_queue:
            self._report(f"{len(self._waiting)} requests wait already (max-queue): 503")
            return None
        deadline = self._clock.seconds() + config.queue_timeout
        waiter = _Waiter(self, tried, request, resume, expire, deadline)
        self._waiting[waiter] = None
        if self._timer is None:
            self._arm()
        return waiter.cancel

    def serve(self, sweep: bool = False) -> None:
        """
        Give waiting requests, oldest first, the servers that are free
        (an attempt ended, a server came back), and let those with no
        server left to wait for go on (every server they may use went down
        or left): they get what a request arriving now gets, not a queue
        timeout.  Never runs twice at once: a request resumed here may end
        its attempt at once (a refused connection), which asks again.

        @param sweep: a server left rotation: ask every waiting request,
            not only while some server has room.
        """
        self._sweep = self._sweep or sweep
        if self._serving:
            self._serve_again = True
            return
        self._serving = True
        try:
            self._serve_again = True
            while self._serve_again:
                self._serve_again = False
                sweep, self._sweep = self._sweep, False
                self._serve_waiters(sweep)
        finally:
            self._serving = False
        self._changed()

    def _serve_waiters(self, sweep: bool) -> None:
        waiting, pool = self._waiting, self._pool
        while waiting:
            if not self._serve_one(next(iter(waiting))):
                break
        else:
            return
        # The oldest waits for a server only it may not use now (its sticky
        # server, or only ones it tried): later ones may fit elsewhere.
        for waiter in list(waiting)[1:]:
            if not sweep and not pool.has_room():
                return
            if waiter in waiting:
                self._serve_one(waiter)

    def _serve_one(self, waiter: _Waiter) -> bool:
        """
        Take C{waiter} out with the server picked for it, or with none if
        nothing it may use is at its C{max-conns} any more (down, gone):
        then its request decides again, as a new one would (502 or 503).

        @return: whether it left the queue.
        """
        pool = self._pool
        server = pool.pick(waiter.tried, waiter.request)
        if server is None and pool.must_wait():
            return False
        del self._waiting[waiter]
        waiter.resume_on(server)
        return True

    def remove(self, waiter: _Waiter) -> None:
        """
        Take C{waiter} out, if it is still in.
        """
        if waiter in self._waiting:
            del self._waiting[waiter]
            self._changed()

    def _arm(self) -> None:
        """
        Time out the oldest waiting request.
        """
        head = next(iter(self._waiting))
        delay = max(head.deadline - self._clock.seconds(), 0.0)
        self._timer = self._clock.callLater(delay, self._expire)

    def _expire(self) -> None:
        self._timer = None
        now = self._clock.seconds()
        waiting = self._waiting
        while waiting:
            waiter = next(iter(waiting))
            if waiter.deadline > now:
                break
            del waiting[waiter]
            self._report(
                f"a request waited {self._pool.config.queue_timeout:g} s for a server "
                "below its max-conns (queue-timeout): 503"
            )
            waiter.expire_now()
        self._changed()

    def _changed(self) -> None:
        """
        Keep the timer for the oldest waiting request; none when empty.
        """
        if self._waiting:
            if self._timer is None:
                self._arm()
            return
        self._reported = False
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _report(self, what: str) -> None:
        """
        Log a refusal once while the queue stays non-empty, not once per
        request.
        """
        if not self._reported:
            self._reported = True
            self._log.warn(
                "pool {pool}: every server is at its max-conns; {what}",
                pool=self._pool.name,
                what=what,
            )


class _Waiter:
    """
    A request waiting in a L{WaitQueue}.
    """

    __slots__ = ("_queue", "tried", "request", "_resume", "_expire", "deadline")
    _log = Logger()

    def __init__(
        self,
        queue: WaitQueue,
        tried: Container[Server],
        request: BalancedRequest | None,
        resume: Callable[[Server | None], None],
        expire: Callable[[], None],
        deadline: float,
    ) -> None:
        self._queue = queue
        self.tried = tried
        self.request = request
        self._resume = resume
        self._expire = expire
        self.deadline = deadline

    def cancel(self) -> None:
        """
        Leave the queue (the client went away).
        """
        self._queue.remove(self)

    def resume_on(self, server: Server | None) -> None:
        """
        Go on with C{server}, or decide again if L{None} (already out of
        the queue).
        """
        try:
            self._resume(server)
        except Exception:
            # Another request's attempt ended here: keep it out of that one.
            self._log.failure(
                "resuming a queued request on {server}",
                server=server.address if server is not None else "no server",
            )

    def expire_now(self) -> None:
        """
        Waited too long (already out of the queue).
        """
        try:
            self._expire()
        except Exception:
            self._log.failure("answering a queued request that timed out")
