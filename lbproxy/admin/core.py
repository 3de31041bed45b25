# -*- test-case-name: tests.admin.test_core -*-
"""
The admin's core: the running proxy's state as plain data, and the
operator's actions, with no HTTP in them (L{lbproxy.admin.resource} is a
thin layer over this).

L{AdminCore.snapshot} returns JSON-ready data: dictionaries, lists,
strings, numbers.  Counts are totals since start and the latency buckets
are counts per bucket, so that the snapshots of several processes (the
workers of C{--workers}) can be summed by a supervisor and turned into one
page, one JSON answer and one C{/metrics} (L{lbproxy.admin.metrics} reads
nothing but a snapshot); L{AdminCore.act} takes and returns plain values
for the same reason.  Its shape::

    {"lbproxy": {"version": "0.1.0", "pid": 4242, "time": 1764675875.2,
                 "started": 1764670000.0, "serving": true,
                 "client_connections": 3, "requests_in_flight": 1,
                 "refused": {"400": 2, "431": 1},
                 "latency_bounds": [0.00025, 0.0005, ...]},
     "upstreams": {"default": {"balance": "roundrobin",
                               "health_check": {"path": "/", "interval": 2.0},
                               "waiting": 0,
                               "discovery": [{"url": "dns+a://app:3000",
                                              "last_outcome": "ok", ...}],
                               "servers": [{"address": "127.0.0.1:3000",
                                            "state": "up", ...}, ...]}}}

C{upstreams} is what C{GET /api/upstreams} answers; L{server_data} lists
a server's fields, L{source_data} a DNS source's.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

from twisted.internet.interfaces import IReactorTime

from lbproxy import __version__
from lbproxy.balancing.pool import Pool
from lbproxy.balancing.server import BOUNDS, AdminState, Server, bucket_percentiles
from lbproxy.balancing.sources import SourceStatus
from lbproxy.http.site import ProxySite
from lbproxy.proxy.resource import BalancingProxyResource

__all__ = [
    "ACTIONS",
    "AdminCore",
    "AdminError",
    "Snapshot",
    "json_seconds",
    "server_data",
    "source_data",
]

#: A snapshot: JSON-ready data (see the module docstring).
Snapshot = dict[str, Any]

#: The operator's actions, by the last segment of their URL, and the admin
#: state each puts a server in (HAProxy's C{set server ... state}).
ACTIONS: Mapping[str, AdminState] = {
    "drain": AdminState.DRAINING,
    "maint": AdminState.MAINT,
    "enable": AdminState.NORMAL,
}


class AdminError(Exception):
    """
    An action that cannot be done, and the HTTP status that says so.

    @ivar status: 404 for an unknown pool, server or action.
    @ivar message: one line for the operator, naming what exists.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def json_seconds(value: float | None) -> float | str | None:
    """
    A percentile in seconds as JSON-ready data: JSON has no infinity, so a
    percentile past the last bucket is C{"+Inf"}, as Prometheus writes
    that bucket (also for the workers' combined page,
    L{lbproxy.admin.combine}).
    """
    if value is not None and math.isinf(value):
        return "+Inf"
    return value


def server_data(server: Server, idle_connections: int, now: float) -> dict[str, Any]:
    """
    One server as JSON-ready data.

    @param idle_connections: pooled connections to it now.
    @param now: the clock's seconds, for the last minute's percentiles.
    @return: C{address}; C{state} (C{up}, C{down}, C{draining} or
        C{maintenance}); C{in_rotation} (takes new requests); C{healthy};
        C{down_reason} (why health checks or failed requests took it out,
        or L{None}); C{backup}; C{weight}; C{active} (requests in flight);
        C{idle_connections}; C{requests} (attempts sent); C{responses} by
        status class; C{failures}; C{retries}; C{checks} (C{passed} and
        C{failed} counts); C{last_check} (C{time}, C{passed}, C{detail}, or
        L{None}); C{p50} and C{p99} over the last minute, in seconds (L{None}
        without answers); C{response_times} (C{counts} per bucket and
        C{sum} since start, C{last_minute} counts per bucket).
    """
    stats = server.stats
    latency = stats.latency
    last_minute = latency.last_minute(now)
    p50, p99 = bucket_percentiles(last_minute, (0.5, 0.99))
    last_check = None
    if stats.last_check is not None:
        when, passed, detail = stats.last_check
        last_check = {"time": when, "passed": passed, "detail": detail}
    return {
        "address": server.address,
        "state": server.state,
        "in_rotation": server.up,
        "healthy": server.healthy,
        "down_reason": server.down_reason if not server.healthy else None,
        "backup": server.config.backup,
        "weight": server.weight,
        "active": server.active,
        "idle_connections": idle_connections,
        "requests": stats.requests,
        "responses": dict(stats.by_class),
        "failures": stats.failures,
        "retries": stats.retries,
        "checks": {"passed": stats.checks_passed, "failed": stats.checks_failed},
        "last_check": last_check,
        "p50": json_seconds(p50),
        "p99": json_seconds(p99),
        "response_times": {
            "counts": list(latency.counts_since_start),
            "sum": latency.sum_since_start,
            "last_minute": last_minute,
        },
    }


def source_data(status: SourceStatus) -> dict[str, Any]:
    """
    One DNS source of a pool (L{SourceStatus}) as JSON-ready data.

    @return: C{url} (as configured), C{kind} (C{dns+a} or C{dns+srv}),
        C{name}, C{resolver} (C{HOST:PORT} or C{system}); the last lookup:
        C{last_lookup} (when it ended, the clock's seconds, or L{None}
        before the first), C{last_outcome} (C{ok}, C{empty}, C{failed}, or
        C{""} before the first), C{last_error} (why, for people, or C{""}),
        C{records} (how many it gave), C{ttl} (seconds, of the last good
        answer, or L{None}); C{next_lookup} (when, or L{None} while one
        runs); C{failing_since} (when the current outage began, or
        L{None}); C{servers} (the C{HOST:PORT} it gives the pool now, those
        of its last good answer).
    """
    return {
        "url": status.url,
        "kind": status.kind,
        "name": status.name,
        "resolver": status.resolver,
        "last_lookup": status.last_lookup,
        "last_outcome": status.last_outcome,
        "last_error": status.last_error,
        "records": status.last_records,
        "ttl": status.ttl,
        "next_lookup": status.next_lookup,
        "failing_since": status.failing_since,
        "servers": list(status.servers),
    }


class AdminCore:
    """
    The running proxy as the admin sees it: read with L{snapshot}, acted on
    with L{act}.

    @ivar stopping: lbproxy is draining on stop (set by the service): the
        readiness probe fails.
    """

    def __init__(
        self,
        resource: BalancingProxyResource,
        site: ProxySite,
        clock: IReactorTime,
    ) -> None:
        """
        @param resource: the proxy resource: its router (the pools in
            force, replaced on reload), its upstream client and the
            requests in flight.
        @param site: the client-facing site: open connections, refusals.
        @param clock: what tells the time, the pools' clock (their check
            times are its seconds).
        """
        self._resource = resource
        self._site = site
        self._clock = clock
        self._started = clock.seconds()
        self.stopping = False

    @property
    def pools(self) -> Mapping[str, Pool]:
        """
        The pools in force, by name.
        """
        return self._resource.router.pools

    def snapshot(self) -> Snapshot:
        """
        The whole state, as JSON-ready data (see the module docstring).
        """
        now = self._clock.seconds()
        refused = self._site.refusals.counts
        return {
            "lbproxy": {
                "version": __version__,
                "pid": os.getpid(),
                "time": now,
                "started": self._started,
                "serving": not self.stopping,
                "client_connections": len(self._site.connections),
                "requests_in_flight": self._resource.in_flight,
                "refused": {str(status): refused[status] for status in sorted(refused)},
                "latency_bounds": list(BOUNDS),
            },
            "upstreams": self.upstreams(now),
        }

    def upstreams(self, now: float | None = None) -> dict[str, Any]:
        """
        The pools, by name, with their servers and DNS sources: what C{GET
        /api/upstreams} answers.

        @param now: the clock's seconds; read from the clock if L{None}.
        """
        if now is None:
            now = self._clock.seconds()
        idle = self._resource.client.idle_count
        upstreams = {}
        for name, pool in self.pools.items():
            config = pool.config
            check = None
            if config.health_check:
                check = {"path": config.health_path, "interval": config.health_interval}
            upstreams[name] = {
                "balance": config.balance,
                "health_check": check,
                "waiting": pool.waiting,
                "discovery": [source_data(s) for s in pool.discovery.values()],
                "servers": [server_data(s, idle(s), now) for s in pool.servers],
            }
        return upstreams

    def act(self, pool: str, address: str, action: str) -> dict[str, Any]:
        """
        Do an operator's action on a server (logged by its pool): C{drain}
        (no new requests, those in flight finish), C{maint} (out of rotation,
        health checks paused) or C{enable} (back to normal).  The state lasts
        until the next action or a restart, across reloads (a server kept by
        a reload is the same object).

        @param pool: the pool's name (C{default} for C{--upstream}).
        @param address: the server's C{HOST:PORT}, as the JSON shows it.
        @param action: C{drain}, C{maint} or C{enable}.
        @return: C{pool}, C{address}, C{action}, the state before
            (C{previous}) and now (C{state}).
        @raise AdminError: 404, naming what exists, for an unknown pool,
            server or action.
        """
        state = ACTIONS.get(action)
        if state is None:
            raise AdminError(404, f"no action {action!r}: drain, maint or enable")
        found = self.pools.get(pool)
        if found is None:
            names = ", ".join(self.pools)
            raise AdminError(404, f"no pool {pool!r} (pools: {names})")
        for server in found.servers:
            if server.address == address:
                break
        else:
            addresses = ", ".join(s.address for s in found.servers)
            raise AdminError(404, f"pool {pool!r} has no server {address!r} ({addresses})")
        previous = server.state
        found.set_admin(server, state)
        return {
            "pool": pool,
            "address": address,
            "action": action,
            "previous": previous,
            "state": server.state,
        }

    def readiness(self) -> tuple[bool, str]:
        """
        Whether lbproxy is ready for traffic (the C{/healthz} readiness
        probe): serving, and at least one server of some pool in rotation.

        @return: the verdict, and one line saying why.
        """
        if self.stopping:
            return False, "stopping: requests in flight are draining"
        total = in_rotation = 0
        empty = []
        for name, pool in self.pools.items():
            up = sum(1 for server in pool.servers if server.up)
            total += len(pool.servers)
            in_rotation += up
            if not up:
                empty.append(name)
        if not in_rotation:
            return False, f"no server in rotation (of {total})"
        line = f"ok: {in_rotation} of {total} servers in rotation"
        if empty:
            line += f"; none in pool {', '.join(empty)}"
        return True, line
