# -*- test-case-name: tests.simulation.test_driver -*-
"""
One simulated run of one strategy: L{simulate}.

Requests arrive at given times and go through what an exchange does
(L{lbproxy.proxy.exchange.ProxyExchange}), in the same order, on the real
objects: the pool picks (L{Pool.pick}, its strategy made by the
installed plugin), the attempt is counted (C{attempt_started}), the
modelled server answers after its response time or fails, the attempt
ends (C{attempt_ended}, which teaches the strategy), a failure counts
towards the server's C{max-fails} (C{attempt_failed}) and the retry
decision is L{after_failure}'s.  Active health checks are the real
L{HealthChecker}, probing the modelled servers.  Only the sockets are
modelled: a request costs two events on the L{VirtualClock} (its arrival
and its end), so a million run in seconds.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from random import Random

from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.error import ConnectionRefusedError

from lbproxy.balancing.health import HealthChecker
from lbproxy.balancing.pool import Pool, Server
from lbproxy.balancing.registry import make_balancer
from lbproxy.errors import ConnectFailed, ReadTimeout, UpstreamError
from lbproxy.proxy.retry import Next, after_failure
from lbproxy.simulation.clock import VirtualClock
from lbproxy.simulation.scenario import Contender, ServerModel

__all__ = ["Run", "simulate"]

_OK = 0
_REFUSED = 1
_CONNECT_TIMEOUT = 2
_READ_TIMEOUT = 3


class _Behaviour:
    """
    A modelled server's answers: L{outcome} draws what one request gets.
    """

    __slots__ = ("_mu", "_sigma", "_median", "_slow", "_fail")

    def __init__(self, model: ServerModel) -> None:
        self._median = model.median
        self._mu = math.log(model.median)
        self._sigma = model.sigma
        self._slow = tuple((s.start, s.end, s.factor) for s in model.slow)
        self._fail = tuple((f.start, f.end, f.rate, f.kind) for f in model.fail)

    def outcome(self, now: float, rng: Random) -> tuple[int, float]:
        """
        What a request sent at C{now} gets: C{(kind, seconds)}, the kind
        C{_OK} with its response time, or how it fails.
        """
        for start, end, rate, kind in self._fail:
            if start <= now < end and (rate >= 1.0 or rng.random() < rate):
                return kind, 0.0
        if self._sigma:
            seconds = math.exp(self._mu + self._sigma * rng.gauss())
        else:
            seconds = self._median
        for start, end, factor in self._slow:
            if start <= now < end:
                seconds *= factor
        return _OK, seconds


class _Request:
    """
    One simulated request: its index, arrival, servers tried, and the
    current attempt's server and start.
    """

    __slots__ = ("index", "arrived", "tried", "server", "sent")

    def __init__(self, index: int, arrived: float) -> None:
        self.index = index
        self.arrived = arrived
        self.tried: list[Server] = []
        self.server: Server | None = None
        self.sent = 0.0


@dataclass
class Run:
    """
    What one run measured.

    @ivar name: the contender's name.
    @ivar arrivals: each request's arrival time.
    @ivar latencies: each request's time to its answer, in seconds
        (infinite for a request answered with an error).
    @ivar errors: requests answered with an error (502, 503, 504).
    @ivar retries: attempts beyond requests' first.
    @ivar attempts: attempts per server, by its scenario name.
    @ivar picks: the server names picked, in order, if asked for.
    """

    name: str
    arrivals: Sequence[float]
    latencies: array[float]
    errors: int
    retries: int
    attempts: dict[str, int]
    picks: list[str] | None = None


class _Simulation:
    """
    The state of one run; see the module docstring.
    """

    def __init__(
        self,
        contender: Contender,
        models: Sequence[ServerModel],
        arrivals: Sequence[float],
        seed: int,
        trace: bool,
    ) -> None:
        config = contender.config
        pool_config = config.pools[0]
        self.clock = clock = VirtualClock()
        # The strategy's randomness is seeded as a test seeds a live pool's
        # (L{make_balancer}'s rng); the servers' draws come from another.
        self.pool = Pool(pool_config, make_balancer(pool_config, clock, Random(seed)), clock)
        self.behaviour = {
            server: _Behaviour(model)
            for server, model in zip(self.pool.servers, models, strict=True)
        }
        self.names = {
            server: model.name for server, model in zip(self.pool.servers, models, strict=True)
        }
        self.rng = Random(seed + 1)
        self.arrivals = arrivals
        # An error's entry stays infinite (sorted last, then left out).
        self.latencies = array("d", [math.inf]) * len(arrivals)
        self.errors = 0
        self.done = 0
        self.count = len(arrivals)
        self._at = clock.at
        self.connect_timeout = config.connect_timeout
        self.read_timeout = config.read_timeout
        self.picks: list[str] | None = [] if trace else None
        self.health: HealthChecker | None = None
        if pool_config.health_check:
            self.health = HealthChecker(self.pool, self._probe, clock)

    def run(self) -> None:
        if not self.arrivals:
            return
        if self.health is not None:
            self.health.startService()
        self.clock.run_merged(self.arrivals, self._arrive)

    # Requests, as ProxyExchange handles them.

    def _arrive(self, index: int) -> None:
        """
        Request C{index} arrives: its first attempt.  The common case (a
        server picked, answering within the read timeout) is handled here
        without a L{_Request}, since it runs a million times; every other
        turn goes through L{_attempt} and L{_send}, in the same order of
        calls on the pool.
        """
        pool = self.pool
        now = self.arrivals[index]
        # Nothing tried yet (the exchange passes its empty list).
        server = pool.pick(())
        if server is None:
            request = _Request(index, now)
            if pool.must_wait():
                self._wait(request)
            else:
                self._answered_error(request)
            return
        if self.picks is not None:
            self.picks.append(self.names[server])
        pool.attempt_started(server, False)
        kind, seconds = self.behaviour[server].outcome(now, self.rng)
        if kind == _OK and seconds <= self.read_timeout:
            self._at(now + seconds, self._answered, (index, server, now))
            return
        request = _Request(index, now)
        request.tried.append(server)
        request.server = server
        request.sent = now
        self._fail_later(request, kind, now)

    def _attempt(self, request: _Request) -> None:
        """
        Another attempt for C{request} (after a failure), as
        C{ProxyExchange._attempt}.
        """
        pool = self.pool
        tried = request.tried
        tries_left = len(tried) < pool.max_tries
        server = pool.pick(tried) if tries_left else None
        if server is None:
            if tries_left and pool.must_wait():
                self._wait(request)
            else:
                self._answered_error(request)
            return
        self._send(request, server)

    def _send(self, request: _Request, server: Server) -> None:
        request.tried.append(server)
        request.server = server
        now = self.clock.seconds()
        request.sent = now
        if self.picks is not None:
            self.picks.append(self.names[server])
        self.pool.attempt_started(server, len(request.tried) > 1)
        kind, seconds = self.behaviour[server].outcome(now, self.rng)
        if kind == _OK and seconds <= self.read_timeout:
            request.server = None
            self._at(now + seconds, self._answered, (request.index, server, now))
            return
        self._fail_later(request, kind, now)

    def _fail_later(self, request: _Request, kind: int, now: float) -> None:
        """
        Schedule the failure of C{request}'s attempt, by how it fails (an
        answer slower than the read timeout is a read timeout).
        """
        if kind == _REFUSED:
            self._at(now, self._refused, request)
        elif kind == _CONNECT_TIMEOUT:
            self._at(now + self.connect_timeout, self._connect_timed_out, request)
        else:
            self._at(now + self.read_timeout, self._read_timed_out, request)

    def _wait(self, request: _Request) -> None:
        def resume(server: Server | None) -> None:
            # None: nothing left to wait for (as ProxyExchange._dequeued).
            if server is None:
                self._attempt(request)
            else:
                self._send(request, server)

        def expire() -> None:
            self._answered_error(request)

        if self.pool.wait(request.tried, None, resume, expire) is None:
            self._answered_error(request)

    def _answered(self, attempt: tuple[int, Server, float]) -> None:
        """
        An attempt was answered: C{(request index, server, when sent)}.
        """
        index, server, sent = attempt
        now = self.clock.seconds()
        elapsed = now - sent
        self.pool.attempt_ended(server, 200, elapsed, elapsed)
        self.latencies[index] = now - self.arrivals[index]
        self.done += 1
        if self.done == self.count:
            self._last_done()

    def _refused(self, request: _Request) -> None:
        self._failed(request, ConnectFailed("connection refused"))

    def _connect_timed_out(self, request: _Request) -> None:
        self._failed(request, ConnectFailed("connect timed out"))

    def _read_timed_out(self, request: _Request) -> None:
        self._failed(request, ReadTimeout("read timed out"))

    def _failed(self, request: _Request, error: UpstreamError) -> None:
        server = request.server
        assert server is not None
        request.server = None
        pool = self.pool
        pool.attempt_ended(server, 0, None)
        if error.server_fault:
            pool.attempt_failed(server, str(error))
        decision = after_failure(
            error, answer_started=False, method=b"GET", body_sent=False, resent=False
        )
        if decision is Next.NEXT_SERVER:
            self._attempt(request)
        else:
            self._answered_error(request)

    def _answered_error(self, request: _Request) -> None:
        self.errors += 1
        self.done += 1
        if self.done == self.count:
            self._last_done()

    def _last_done(self) -> None:
        if self.health is not None:
            # The checks would go on for ever: the run ends with the last
            # request.
            self.health.stopService()

    # Active health checks of the modelled servers.

    def _probe(self, server: Server) -> Deferred[int]:
        """
        One check of C{server}, as L{lbproxy.balancing.health.agent_probe}
        would see it.
        """
        checked: Deferred[int] = Deferred()
        timeout = self.pool.config.health_timeout
        kind, seconds = self.behaviour[server].outcome(self.clock.seconds(), self.rng)
        if kind == _OK and seconds <= timeout:
            self.clock.callLater(seconds, checked.callback, 200)
        elif kind == _REFUSED:
            self.clock.callLater(0, checked.errback, ConnectionRefusedError())
        else:
            self.clock.callLater(
                timeout, checked.errback, DeferredTimeoutError(timeout, "health check")
            )
        return checked


def simulate(
    contender: Contender,
    models: Sequence[ServerModel],
    arrivals: Sequence[float],
    seed: int,
    trace: bool = False,
) -> Run:
    """
    Run C{arrivals} through C{contender}'s pool of C{models}.

    @param seed: seeds the strategy's randomness and the servers'.
    @param trace: record the server picked for each attempt (C{picks}).
    """
    simulation = _Simulation(contender, models, arrivals, seed, trace)
    simulation.run()
    pool = simulation.pool
    return Run(
        name=contender.name,
        arrivals=arrivals,
        latencies=simulation.latencies,
        errors=simulation.errors,
        retries=sum(server.stats.retries for server in pool.servers),
        attempts={simulation.names[s]: s.stats.requests for s in pool.servers},
        picks=simulation.picks,
    )
