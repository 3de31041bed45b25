# -*- test-case-name: tests.balancing.test_strategies -*-
"""
Load-balancing strategies, one small class each, behind L{IBalancer};
they are registered under their C{--balance} names as plugins
(L{lbproxy.plugins.lbproxy_balancers}, L{lbproxy.balancing.registry}).

  - L{RoundRobin} (C{roundrobin}, the default): nginx's smooth weighted
    round robin.
  - L{LeastConn} (C{leastconn}): fewest requests in flight for its weight,
    ties round robin (nginx's C{least_conn}, HAProxy's C{leastconn}).
  - L{RandomTwo} (C{random2}): the less busy of two servers drawn at random
    by weight (nginx's C{random two least_conn}, Envoy's least request).
  - L{PeakEwma} (C{ewma}): the cheaper of two random servers, cost being
    peak-EWMA response time x (requests in flight + 1) (Finagle, Linkerd).
  - L{ConsistentHash} (C{hash}): a key of the request on a hash ring
    (L{lbproxy.balancing.hashing}).

Adding a strategy is one class and one plugin naming it, here or in
another distribution (L{lbproxy.balancing.registry}).  Every strategy keeps its per-server state in
dicts keyed by server, tolerates servers it has never seen and drops a
server's entries when told it left (C{forget}), reads time
only from the clock it is given and randomness only from the L{Random} it
is given, and does no I/O.  A server's weight divides its load in every
strategy (as nginx's C{least_conn} and C{random} do), so weights mean the
same whatever the strategy.
"""

from __future__ import annotations

import math
from collections.abc import Container, Sequence
from random import Random
from typing import Self

from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from lbproxy.balancing.hashing import HashRing, request_key, stable_hash
from lbproxy.config.model import PoolConfig
from lbproxy.interfaces import BalancedRequest, Candidate, IBalancer

__all__ = [
    "ConsistentHash",
    "LeastConn",
    "PeakEwma",
    "RandomTwo",
    "RoundRobin",
]


@implementer(IBalancer)
class RoundRobin:
    """
    nginx's default: smooth weighted round robin.

    With equal weights the servers take turns in configuration order
    (A, B, A, B, ...).  With weights, each server gets its share spread out
    evenly rather than in bursts (weights 5, 1, 1 give A A B A C A A), the
    algorithm of nginx's C{ngx_http_upstream_get_peer}: every candidate's
    current weight grows by its weight, the largest wins and gives back the
    total.  Pick it when servers are alike and requests cost about the same.
    """

    def __init__(self) -> None:
        self._current: dict[Candidate, int] = {}

    @classmethod
    def from_config(cls, config: PoolConfig, clock: IReactorTime, rng: Random) -> Self:
        """
        The strategy of a pool (what its plugin makes); L{LeastConn}
        inherits it.
        """
        return cls()

    def pick(
        self,
        servers: Sequence[Candidate],
        exclude: Container[Candidate],
        request: BalancedRequest | None = None,
    ) -> Candidate | None:
        """
        Choose the next server in rotation; see L{IBalancer.pick}.
        """
        current = self._current
        best: Candidate | None = None
        best_weight = 0
        total = 0
        for server in servers:
            if not server.up or server in exclude:
                continue
            weight = server.weight
            total += weight
            mine = current.get(server, 0) + weight
            current[server] = mine
            if best is None or mine > best_weight:
                best, best_weight = server, mine
        if best is not None:
            current[best] = best_weight - total
        return best

    def started(self, server: Candidate) -> None:
        """
        Nothing to learn; see L{IBalancer.started}.
        """

    def finished(self, server: Candidate, elapsed: float | None) -> None:
        """
        Nothing to learn; see L{IBalancer.finished}.
        """

    def forget(self, server: Candidate) -> None:
        """
        Drop C{server}'s place in the rotation: it left the pool; see
        L{IBalancer}.
        """
        self._current.pop(server, None)


@implementer(IBalancer)
class LeastConn(RoundRobin):
    """
    The server with the fewest requests in flight for its weight (nginx's
    C{least_conn}, HAProxy's C{leastconn}); servers tied for fewest take
    turns by smooth weighted round robin, as in nginx.  Pick it when
    requests vary in cost or a server may turn slow: requests pile up on a
    slow server, so it gets fewer new ones.
    """

    def pick(
        self,
        servers: Sequence[Candidate],
        exclude: Container[Candidate],
        request: BalancedRequest | None = None,
    ) -> Candidate | None:
        """
        Choose the least busy server; see L{IBalancer.pick}.
        """
        best: Candidate | None = None
        tied = False
        for server in servers:
            if not server.up or server in exclude:
                continue
            if best is None:
                best = server
                continue
            # active / weight compared without division, as nginx does.
            mine, theirs = server.active * best.weight, best.active * server.weight
            if mine < theirs:
                best, tied = server, False
            elif mine == theirs:
                tied = True
        if best is None or not tied:
            return best
        # Round robin among the servers tied with the best (a second pass,
        # as in nginx's ngx_http_upstream_get_least_conn_peer).
        current = self._current
        chosen: Candidate | None = None
        chosen_weight = 0
        total = 0
        active, weight = best.active, best.weight
        for server in servers:
            if not server.up or server in exclude:
                continue
            if server.active * weight != active * server.weight:
                continue
            total += server.weight
            mine = current.get(server, 0) + server.weight
            current[server] = mine
            if chosen is None or mine > chosen_weight:
                chosen, chosen_weight = server, mine
        assert chosen is not None  # best itself is tied with best
        current[chosen] = chosen_weight - total
        return chosen


def _two_choices(
    servers: Sequence[Candidate], exclude: Container[Candidate], rng: Random
) -> tuple[Candidate, Candidate | None] | None:
    """
    Two different servers drawn at random, each with a chance in
    proportion to its weight (as nginx's C{random}): the power of two
    choices.  Three passes over C{servers}, no allocation.

    @return: the two, the second L{None} if there is only one candidate;
        L{None} if there is none.
    """
    total = 0
    count = 0
    for server in servers:
        if server.up and server not in exclude:
            total += server.weight
            count += 1
    if not count:
        return None
    first = _weighted(servers, exclude, rng.random() * total, None)
    if count == 1:
        return first, None
    return first, _weighted(servers, exclude, rng.random() * (total - first.weight), first)


def _weighted(
    servers: Sequence[Candidate],
    exclude: Container[Candidate],
    point: float,
    skip: Candidate | None,
) -> Candidate:
    """
    The candidate whose span of weight holds C{point} (there is one).
    """
    last: Candidate | None = None
    for server in servers:
        if not server.up or server in exclude or server is skip:
            continue
        point -= server.weight
        last = server
        if point < 0:
            return server
    # Rounding left the point at the very end: the last span holds it.
    assert last is not None
    return last


@implementer(IBalancer)
class RandomTwo:
    """
    The power of two random choices (nginx's C{random two least_conn},
    Envoy's least request): two servers drawn at random by weight, the one
    with fewer requests in flight for its weight wins (the first drawn on a
    tie).  Pick it for large pools or several lbproxy processes: it avoids
    least connections' herd, where every balancer sends the next burst to
    the same least busy server.
    """

    def __init__(self, rng: Random | None = None) -> None:
        """
        @param rng: the randomness (seeded in tests); a new one if L{None}.
        """
        self._rng = rng or Random()

    @classmethod
    def from_config(cls, config: PoolConfig, clock: IReactorTime, rng: Random) -> RandomTwo:
        """
        The strategy of a pool (what its plugin makes).
        """
        return cls(rng)

    def pick(
        self,
        servers: Sequence[Candidate],
        exclude: Container[Candidate],
        request: BalancedRequest | None = None,
    ) -> Candidate | None:
        """
        Choose the less busy of two random servers; see L{IBalancer.pick}.
        """
        drawn = _two_choices(servers, exclude, self._rng)
        if drawn is None:
            return None
        first, second = drawn
        if second is not None and second.active * first.weight < first.active * second.weight:
            return second
        return first

    def started(self, server: Candidate) -> None:
        """
        Nothing to learn; see L{IBalancer.started}.
        """

    def finished(self, server: Candidate, elapsed: float | None) -> None:
        """
        Nothing to learn; see L{IBalancer.finished}.
        """


_exp = math.exp

#: The cost of a server with requests in flight that has never answered:
#: high enough that it gets no more until it does (Finagle's penalty).
_PENALTY = 1e9


class _Estimate:
    """
    One server's peak-EWMA response time, in seconds, as of C{stamp}.
    """

    __slots__ = ("cost", "stamp")

    def __init__(self, stamp: float) -> None:
        self.cost = 0.0
        self.stamp = stamp

    def observe(self, elapsed: float, now: float, decay: float) -> float:
        """
        Fold in a response time (0 to only let time pass) and return the
        estimate.  A slower answer than the estimate replaces it at once
        (the peak); a faster one, or time alone, pulls it down with a
        weight that depends on the time since the last update, since
        answers do not come at even intervals (Finagle's C{PeakEwma}).
        """
        cost = self.cost
        if elapsed > cost:
            cost = elapsed
        else:
            age = now - self.stamp
            # No time passed: the weight would be 1 and the cost the same
            # (skipping exp matters: this runs twice per pick).
            if age > 0.0:
                weight = _exp(-age / decay)
                cost = cost * weight + elapsed * (1.0 - weight)
        self.cost = cost
        self.stamp = now
        return cost


@implementer(IBalancer)
class PeakEwma:
    """
    Latency-aware power of two choices (Finagle's and Linkerd's peak EWMA):
    two servers drawn at random by weight, the one with the lower cost
    wins, the cost being the server's peak-EWMA response time x (its
    requests in flight + 1), over its weight.

    The response time is from sending a request to the head of its answer.
    A slow answer raises a server's estimate at once; the estimate decays
    over C{decay} seconds, also while the server gets no requests, so a
    server avoided for being slow is tried again, and once it answers fast
    gets its traffic back within a few times C{decay} (how many depends on
    how slow it was: the estimate falls by e every C{decay}).  A server that
    has never answered costs nothing while idle and L{_PENALTY} once it has
    a request in flight.  Pick it when servers differ in speed or one may
    turn slow (a noisy neighbour, garbage collection): it follows response
    times, where least connections only sees queues.
    """

    def __init__(self, clock: IReactorTime, decay: float = 10.0, rng: Random | None = None) -> None:
        """
        @param clock: what tells the time.
        @param decay: seconds over which a slow answer is forgotten
            (C{--ewma-decay}).
        @param rng: the randomness (seeded in tests); a new one if L{None}.
        """
        self._clock = clock
        self._decay = decay
        self._rng = rng or Random()
        self._estimates: dict[Candidate, _Estimate] = {}

    @classmethod
    def from_config(cls, config: PoolConfig, clock: IReactorTime, rng: Random) -> PeakEwma:
        """
        The strategy of a pool (what its plugin makes).
        """
        return cls(clock, config.ewma_decay, rng)

    def pick(
        self,
        servers: Sequence[Candidate],
        exclude: Container[Candidate],
        request: BalancedRequest | None = None,
    ) -> Candidate | None:
        """
        Choose the cheaper of two random servers; see L{IBalancer.pick}.
        """
        drawn = _two_choices(servers, exclude, self._rng)
        if drawn is None:
            return None
        first, second = drawn
        if second is None:
            return first
        now = self._clock.seconds()
        return second if self.cost(second, now) < self.cost(first, now) else first

    def cost(self, server: Candidate, now: float) -> float:
        """
        What sending one more request to C{server} costs now: its decayed
        response time x (requests in flight + 1), over its weight.
        """
        estimate = self._estimates.get(server)
        latency = 0.0 if estimate is None else estimate.observe(0.0, now, self._decay)
        active = server.active
        if latency == 0.0 and active:
            return (_PENALTY + active) / server.weight
        return latency * (active + 1) / server.weight

    def started(self, server: Candidate) -> None:
        """
        Nothing to learn until it answers; see L{IBalancer.started}.
        """

    def finished(self, server: Candidate, elapsed: float | None) -> None:
        """
        Fold the response time into the server's estimate; a request
        without an answer teaches nothing (passive health checks see
        failures).  See L{IBalancer.finished}.
        """
        if elapsed is None:
            return
        now = self._clock.seconds()
        estimate = self._estimates.get(server)
        if estimate is None:
            estimate = self._estimates[server] = _Estimate(now)
        estimate.observe(elapsed, now, self._decay)

    def forget(self, server: Candidate) -> None:
        """
        Drop C{server}'s estimate: it left the pool; see L{IBalancer}.
        """
        self._estimates.pop(server, None)


@implementer(IBalancer)
class ConsistentHash:
    """
    Consistent hashing of a request key (nginx's C{hash $key consistent},
    HAProxy's C{hash-type consistent}) on a ring of the servers
    (L{lbproxy.balancing.hashing.HashRing}): the same key goes to the same
    server, a server out of rotation sends its keys to the next server on
    the ring until it is back, and removing one of N servers moves about
    1/N of the keys.  A request without the key goes round robin, as in
    HAProxy.  Pick it for caches (each key's data on one server) or to keep
    a user on one server without a cookie.
    """

    def __init__(self, key: str = "ip") -> None:
        """
        @param key: what to hash: C{ip}, C{path}, C{header:NAME} or
            C{cookie:NAME} (C{--hash-key}).
        """
        self._key = request_key(key)
        self._fallback = RoundRobin()
        # One ring per candidate list (the pool's primaries and backups),
        # rebuilt when the pool hands over a different list.
        self._rings: list[HashRing] = []

    @classmethod
    def from_config(cls, config: PoolConfig, clock: IReactorTime, rng: Random) -> ConsistentHash:
        """
        The strategy of a pool (what its plugin makes).
        """
        return cls(config.hash_key)

    def pick(
        self,
        servers: Sequence[Candidate],
        exclude: Container[Candidate],
        request: BalancedRequest | None = None,
    ) -> Candidate | None:
        """
        Choose the server owning the request's key; see L{IBalancer.pick}.
        """
        key = self._key(request) if request is not None else None
        if not key:
            return self._fallback.pick(servers, exclude)
        return self._ring(servers).find(stable_hash(key), exclude)

    def _ring(self, servers: Sequence[Candidate]) -> HashRing:
        for ring in self._rings:
            if ring.servers is servers:
                return ring
        ring = HashRing(servers)
        # A pool hands over two lists (primaries and backups); more means
        # its servers changed, and the oldest rings are stale.
        self._rings = [*self._rings[-1:], ring]
        return ring

    def started(self, server: Candidate) -> None:
        """
        Nothing to learn; see L{IBalancer.started}.
        """

    def finished(self, server: Candidate, elapsed: float | None) -> None:
        """
        Nothing to learn; see L{IBalancer.finished}.
        """

    def forget(self, server: Candidate) -> None:
        """
        Drop C{server}'s place in the round robin of requests without a
        key (the rings are rebuilt with the pool's new lists); see
        L{IBalancer}.
        """
        self._fallback.forget(server)
