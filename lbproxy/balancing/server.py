# -*- test-case-name: tests.balancing.test_server -*-
"""
One app server's run-time state: L{Server}, and what is counted of it.

The state a balancer reads (C{up}, C{weight}, C{active}), the state the
operator sets (L{AdminState}: drain, maintenance), what health checks and
passive tracking decided (owned by L{lbproxy.balancing.pool.Pool}), and
the statistics the admin page and metrics show (L{ServerStats}).  Nothing
here does I/O or reads a clock: times are given.
"""

from __future__ import annotations

import bisect
import enum
import math
from collections.abc import Sequence

from lbproxy.config.servers import ServerConfig

__all__ = ["BOUNDS", "AdminState", "LatencyWindow", "Server", "ServerStats", "bucket_percentiles"]


class AdminState(enum.Enum):
    """
    What the operator asked of a server (HAProxy's admin states).
    """

    #: In rotation when healthy.
    NORMAL = "normal"
    #: No new requests; those in flight finish (HAProxy's C{drain}).
    DRAINING = "draining"
    #: Out of rotation and not health-checked (HAProxy's C{maint}).
    MAINT = "maintenance"


#: Upper bounds of the latency buckets, in seconds: 0.25 ms to 65.536 s,
#: each twice the one before (bucket i holds latencies up to 2**i / 4000 s;
#: one more bucket holds the longer ones).  Also the C{le} bounds of the
#: Prometheus histogram (L{lbproxy.admin.metrics}).
BOUNDS = tuple(2**i / 4000 for i in range(19))


class LatencyWindow:
    """
    Upstream response times over the last minute, for p50 and p99: a
    bucket count per second (a histogram of doubling buckets), so that
    memory is bounded whatever the rate and recording is one increment.
    The same buckets are counted since start too, with the sum of the
    times: the Prometheus histogram, made of them only when scraped.

    @ivar span: seconds looked back.
    @ivar counts_since_start: responses per bucket since start (not
        cumulative; the last bucket is beyond L{BOUNDS}).
    @ivar sum_since_start: the seconds of all of them.
    """

    __slots__ = ("span", "_seconds", "_counts", "counts_since_start", "sum_since_start")

    def __init__(self, span: int = 60) -> None:
        self.span = span
        self._seconds = [-1] * span
        self._counts = [[0] * (len(BOUNDS) + 1) for _ in range(span)]
        self.counts_since_start = [0] * (len(BOUNDS) + 1)
        self.sum_since_start = 0.0

    def record(self, now: float, seconds: float) -> None:
        """
        A response took C{seconds}, at C{now}.
        """
        second = int(now)
        slot = second % self.span
        counts = self._counts[slot]
        if self._seconds[slot] != second:
            self._seconds[slot] = second
            for i in range(len(counts)):
                counts[i] = 0
        # The first bound at or above it (bisect: this runs per answer).
        bucket = bisect.bisect_left(BOUNDS, seconds)
        counts[bucket] += 1
        self.counts_since_start[bucket] += 1
        self.sum_since_start += seconds

    def last_minute(self, now: float) -> list[int]:
        """
        Responses per bucket over the last L{span} seconds (what
        L{percentiles} reads; summable across processes).
        """
        oldest = int(now) - self.span
        totals = [0] * (len(BOUNDS) + 1)
        for second, counts in zip(self._seconds, self._counts, strict=True):
            if second > oldest:
                for i, count in enumerate(counts):
                    totals[i] += count
        return totals

    def percentiles(self, now: float, wanted: Sequence[float]) -> list[float | None]:
        """
        The latencies below which C{wanted} fractions (0.5, 0.99) of the
        last minute's responses fall, as bucket upper bounds; L{None} for
        each if there was none.
        """
        return bucket_percentiles(self.last_minute(now), wanted)


def bucket_percentiles(totals: Sequence[int], wanted: Sequence[float]) -> list[float | None]:
    """
    The bucket upper bounds below which C{wanted} fractions of the counts
    per bucket C{totals} fall (C{inf} past the last bound); L{None} for
    each if there is no count.
    """
    count = sum(totals)
    if not count:
        return [None for _ in wanted]
    results: list[float | None] = []
    for fraction in wanted:
        target = math.ceil(fraction * count)
        seen = 0
        for i, each in enumerate(totals):
            seen += each
            if seen >= target:
                results.append(BOUNDS[i] if i < len(BOUNDS) else math.inf)
                break
    return results


class ServerStats:
    """
    What has been counted of a server since it joined (kept across
    reloads, as the server is).

    @ivar requests: requests sent to it (attempts).
    @ivar by_class: answers by status class (C{"2xx"} ...).
    @ivar failures: attempts that failed (refused, timed out, invalid...).
    @ivar retries: attempts that were a request's second or later.
    @ivar latency: response times over the last minute, and since start.
    @ivar last_check: C{(when, passed, detail)} of the last health check.
    @ivar checks_passed: health checks passed since start.
    @ivar checks_failed: health checks failed since start.
    """

    __slots__ = (
        "requests",
        "by_class",
        "failures",
        "retries",
        "latency",
        "last_check",
        "checks_passed",
        "checks_failed",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.by_class = {"1xx": 0, "2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0}
        self.failures = 0
        self.retries = 0
        self.latency = LatencyWindow()
        self.last_check: tuple[float, bool, str] | None = None
        self.checks_passed = 0
        self.checks_failed = 0

    def checked(self, when: float, passed: bool, detail: str) -> None:
        """
        A health check ended at C{when}: C{passed}, or failed for the
        reason C{detail}.
        """
        self.last_check = (when, passed, detail)
        if passed:
            self.checks_passed += 1
        else:
            self.checks_failed += 1


class Server:
    """
    One upstream server in a pool.

    @ivar config: what the configuration says about it.
    @ivar address: C{host:port}, for logs and error messages.
    @ivar weight: its share of requests relative to its pool's others.
    @ivar up: whether it takes new requests: healthy and in the C{NORMAL}
        admin state (derived by its pool).
    @ivar healthy: what health checks and passive tracking together say.
    @ivar admin: what the operator asked (L{AdminState}).
    @ivar down_reason: why it is out of rotation, for people ("3 checks
        failed: connection refused"); empty while it is up.
    @ivar active: requests in flight to it now.
    @ivar stats: what has been counted of it.
    @ivar checked_up: what active checks say.
    @ivar ejected_until: until when passive tracking keeps it out (0: not
        ejected).
    """

    __slots__ = (
        "config",
        "address",
        "up",
        "healthy",
        "admin",
        "down_reason",
        "weight",
        "active",
        "stats",
        "checked_up",
        "ejected_until",
        "check_passes",
        "check_failures",
        "fails",
        "fails_since",
        "left",
    )

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.address = config.address
        self.weight = config.weight
        # Servers start in rotation, as in HAProxy and nginx: a dead one is
        # found by its first failed attempt or its first `fall` checks.
        self.up = True
        self.healthy = True
        self.admin = AdminState.NORMAL
        self.down_reason = ""
        self.active = 0
        self.stats = ServerStats()
        self.checked_up = True
        self.ejected_until = 0.0
        self.check_passes = 0
        self.check_failures = 0
        self.fails = 0
        self.fails_since = 0.0
        #: It left its pool (a DNS source no longer gives it): its
        #: strategy forgets it once its last request ends.
        self.left = False

    def __repr__(self) -> str:
        return f"<Server {self.address} {'up' if self.up else 'down'}>"

    @property
    def state(self) -> str:
        """
        One word for people: C{up}, C{down}, C{draining} or
        C{maintenance}.
        """
        if self.admin is not AdminState.NORMAL:
            return str(self.admin.value)
        return "up" if self.healthy else "down"
