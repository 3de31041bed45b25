# -*- test-case-name: tests.admin.test_metrics -*-
"""
Prometheus metrics (C{GET /metrics}), through C{prometheus_client}.

Nothing here runs per request: the proxy keeps plain counters (a
server's L{lbproxy.balancing.server.ServerStats}, the site's refusals by
status), and a custom collector turns a snapshot of them
(L{lbproxy.admin.core.AdminCore.snapshot}) into metric families when
Prometheus scrapes.  Keeping a C{prometheus_client} counter per request
would cost a lock and a label lookup on the hot path; this costs nothing
there.  Since the families are made of a snapshot alone, a supervisor
summing the snapshots of several workers can use L{families} as it is.

The collector lives in a L{CollectorRegistry} of lbproxy's own, not
C{prometheus_client}'s global one, so that nothing else in the process
(a library's metrics) turns up in lbproxy's C{/metrics}, and two proxies in
one process (tests) do not collide.  Every series is named C{lbproxy_*}:

  - C{lbproxy_info{version}}: 1;
  - C{lbproxy_serving}: 1, or 0 while lbproxy drains requests on stop;
  - C{lbproxy_client_connections}: open client connections;
  - C{lbproxy_requests_in_flight}: requests being proxied;
  - C{lbproxy_refused_requests_total{status}}: requests refused before an
    app server saw them, by status (the framing gate's 400, 408, 413,
    414, 431; 501, 505; 504 for a body the app server stopped reading);
  - per server, labelled C{pool} and C{server} (its C{HOST:PORT}):
    C{lbproxy_requests_total{code}} (answers by status class, C{2xx}...),
    C{lbproxy_upstream_attempts_total}, C{lbproxy_upstream_failures_total},
    C{lbproxy_upstream_retries_total},
    C{lbproxy_upstream_response_seconds} (a histogram: from sending to the
    whole answer, in doubling buckets from 0.25 ms to 65.5 s),
    C{lbproxy_upstream_active_requests},
    C{lbproxy_upstream_idle_connections}, C{lbproxy_upstream_up} (1 in
    rotation), C{lbproxy_upstream_state{state}} (1 for its one state of
    C{up}, C{down}, C{draining}, C{maintenance}),
    C{lbproxy_upstream_health_checks_total{result}} (C{passed},
    C{failed});
  - per pool, C{lbproxy_upstream_queue_waiting};
  - per DNS source of a pool, labelled C{pool} and C{source} (its URL as
    configured): C{lbproxy_dns_lookup_ok} (1 if its last lookup answered,
    0 if it failed or found no records, or before the first),
    C{lbproxy_dns_last_lookup_timestamp_seconds} (when the last lookup
    ended, Unix time; no sample before the first) and
    C{lbproxy_dns_servers} (servers it gives the pool now).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from lbproxy.admin.core import Snapshot

__all__ = ["CONTENT_TYPE", "SnapshotCollector", "exposition", "families", "metrics_registry"]

#: The text format's content type.  Version 0.0.4 is the one every
#: Prometheus (and every scraper speaking its format) reads.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: A server's states, one series each in C{lbproxy_upstream_state}.
_STATES = ("up", "down", "draining", "maintenance")
_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
_SERVER = ["pool", "server"]


def families(snapshot: Snapshot) -> Iterator[Metric]:
    """
    The metric families of a snapshot (see the module docstring).
    """
    process = snapshot["lbproxy"]
    info = GaugeMetricFamily("lbproxy_info", "lbproxy's version (always 1).", labels=["version"])
    info.add_metric([process["version"]], 1)
    yield info
    yield GaugeMetricFamily(
        "lbproxy_serving",
        "1 while lbproxy serves; 0 while it drains requests on stop.",
        value=1 if process["serving"] else 0,
    )
    yield GaugeMetricFamily(
        "lbproxy_client_connections",
        "Open client connections, HTTP/1.1 and HTTP/2.",
        value=process["client_connections"],
    )
    yield GaugeMetricFamily(
        "lbproxy_requests_in_flight",
        "Requests being proxied now.",
        value=process["requests_in_flight"],
    )
    refused = CounterMetricFamily(
        "lbproxy_refused_requests",
        "Requests refused before reaching an app server, by the status answered "
        "(400, 408, 413, 414, 431 from the framing gate).",
        labels=["status"],
    )
    for status, count in process["refused"].items():
        refused.add_metric([status], count)
    yield refused
    yield from _server_families(snapshot["upstreams"], process["latency_bounds"])
    yield from _dns_families(snapshot["upstreams"])


def _server_families(upstreams: dict[str, Any], bounds: list[float]) -> Iterator[Metric]:
    requests = CounterMetricFamily(
        "lbproxy_requests",
        "Requests answered by an app server, by pool, server and status class.",
        labels=[*_SERVER, "code"],
    )
    attempts = CounterMetricFamily(
        "lbproxy_upstream_attempts",
        "Attempts sent to an app server, answered or not (retries included).",
        labels=_SERVER,
    )
    failures = CounterMetricFamily(
        "lbproxy_upstream_failures",
        "Attempts that got no whole answer (refused, timed out, invalid, cut short).",
        labels=_SERVER,
    )
    retries = CounterMetricFamily(
        "lbproxy_upstream_retries",
        "Attempts that were a request's second or later.",
        labels=_SERVER,
    )
    response = HistogramMetricFamily(
        "lbproxy_upstream_response_seconds",
        "Seconds from sending a request to an app server to its whole answer.",
        labels=_SERVER,
    )
    active = GaugeMetricFamily(
        "lbproxy_upstream_active_requests", "Requests in flight to an app server.", labels=_SERVER
    )
    idle = GaugeMetricFamily(
        "lbproxy_upstream_idle_connections",
        "Idle keep-alive connections pooled for an app server.",
        labels=_SERVER,
    )
    up = GaugeMetricFamily(
        "lbproxy_upstream_up",
        "1 if the app server is in rotation (healthy, not draining or in maintenance).",
        labels=_SERVER,
    )
    state = GaugeMetricFamily(
        "lbproxy_upstream_state",
        "1 for the app server's state: up, down, draining or maintenance.",
        labels=[*_SERVER, "state"],
    )
    checks = CounterMetricFamily(
        "lbproxy_upstream_health_checks",
        "Active health checks of an app server, by result.",
        labels=[*_SERVER, "result"],
    )
    waiting = GaugeMetricFamily(
        "lbproxy_upstream_queue_waiting",
        "Requests waiting in the pool's queue for a server under its max-conns.",
        labels=["pool"],
    )
    les = [repr(float(bound)) for bound in bounds] + ["+Inf"]
    for pool, data in upstreams.items():
        waiting.add_metric([pool], data["waiting"])
        for server in data["servers"]:
            labels = [pool, server["address"]]
            for code in _CLASSES:
                requests.add_metric([*labels, code], server["responses"][code])
            attempts.add_metric(labels, server["requests"])
            failures.add_metric(labels, server["failures"])
            retries.add_metric(labels, server["retries"])
            times = server["response_times"]
            cumulative, buckets = 0, []
            for le, count in zip(les, times["counts"], strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            response.add_metric(labels, buckets, times["sum"])
            active.add_metric(labels, server["active"])
            idle.add_metric(labels, server["idle_connections"])
            up.add_metric(labels, 1 if server["in_rotation"] else 0)
            for each in _STATES:
                state.add_metric([*labels, each], 1 if server["state"] == each else 0)
            checks.add_metric([*labels, "passed"], server["checks"]["passed"])
            checks.add_metric([*labels, "failed"], server["checks"]["failed"])
    yield from (
        requests,
        attempts,
        failures,
        retries,
        response,
        active,
        idle,
        up,
        state,
        checks,
        waiting,
    )


def _dns_families(upstreams: dict[str, Any]) -> Iterator[Metric]:
    labels = ["pool", "source"]
    ok = GaugeMetricFamily(
        "lbproxy_dns_lookup_ok",
        "1 if the DNS source's last lookup answered; 0 if it failed or found no records.",
        labels=labels,
    )
    last = GaugeMetricFamily(
        "lbproxy_dns_last_lookup_timestamp_seconds",
        "When the DNS source's last lookup ended, in seconds since the epoch.",
        labels=labels,
    )
    servers = GaugeMetricFamily(
        "lbproxy_dns_servers",
        "Servers the DNS source gives the pool now (its last good answer's).",
        labels=labels,
    )
    for pool, data in upstreams.items():
        for source in data["discovery"]:
            each = [pool, source["url"]]
            ok.add_metric(each, 1 if source["last_outcome"] == "ok" else 0)
            if source["last_lookup"] is not None:
                last.add_metric(each, source["last_lookup"])
            servers.add_metric(each, len(source["servers"]))
    yield from (ok, last, servers)


class SnapshotCollector:
    """
    A C{prometheus_client} collector whose families come from a snapshot
    taken at each scrape.
    """

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        """
        @param snapshot: takes a snapshot (L{AdminCore.snapshot}).
        """
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        """
        The families of a snapshot taken now.
        """
        return families(self._snapshot())


def metrics_registry(snapshot: Callable[[], Snapshot]) -> CollectorRegistry:
    """
    A registry of lbproxy's own holding one L{SnapshotCollector}.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """
    The registry's metrics in Prometheus's text format (L{CONTENT_TYPE}).
    """
    return generate_latest(registry)
