"""
Tests for L{lbproxy.admin.combine}: workers' snapshots, as plain data,
combined into the supervisor's.
"""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from lbproxy.admin.combine import combine, combine_actions, combine_servers, readiness
from lbproxy.admin.metrics import exposition, metrics_registry
from lbproxy.balancing.server import BOUNDS

_BUCKETS = len(BOUNDS) + 1


def _buckets(**at: int) -> list[int]:
    """
    Counts per bucket: C{b4=2} puts 2 in bucket 4.
    """
    counts = [0] * _BUCKETS
    for name, count in at.items():
        counts[int(name[1:])] = count
    return counts


def _server(address: str = "10.0.0.1:80", **fields: Any) -> dict[str, Any]:
    """
    A server as L{lbproxy.admin.core.server_data} writes it: up, idle.
    """
    server: dict[str, Any] = {
        "address": address,
        "state": "up",
        "in_rotation": True,
        "healthy": True,
        "down_reason": None,
        "backup": False,
        "weight": 1,
        "active": 0,
        "idle_connections": 0,
        "requests": 0,
        "responses": {"1xx": 0, "2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0},
        "failures": 0,
        "retries": 0,
        "checks": {"passed": 0, "failed": 0},
        "last_check": None,
        "p50": None,
        "p99": None,
        "response_times": {"counts": _buckets(), "sum": 0.0, "last_minute": _buckets()},
    }
    server.update(fields)
    return server


def _snapshot(
    servers: list[dict[str, Any]], pid: int = 100, serving: bool = True, **pool: Any
) -> dict[str, Any]:
    """
    A worker's snapshot of one pool C{web}.
    """
    return {
        "lbproxy": {
            "version": "0.1.0",
            "pid": pid,
            "time": 50.0,
            "started": 10.0 + pid,
            "serving": serving,
            "client_connections": 1,
            "requests_in_flight": 1,
            "refused": {"400": 1},
            "latency_bounds": list(BOUNDS),
        },
        "upstreams": {
            "web": {
                "balance": "roundrobin",
                "health_check": None,
                "waiting": 1,
                "discovery": [],
                "servers": servers,
                **pool,
            }
        },
    }


class CombineServersTests(SynchronousTestCase):
    """
    L{combine_servers}: one server seen by several workers.
    """

    def test_sums(self) -> None:
        """
        Counts, gauges and buckets are summed; settings are the first's.
        """
        one = _server(
            active=1,
            idle_connections=2,
            requests=5,
            failures=1,
            retries=1,
            responses={"1xx": 0, "2xx": 4, "3xx": 0, "4xx": 0, "5xx": 1},
            checks={"passed": 3, "failed": 1},
            response_times={"counts": _buckets(b3=4), "sum": 0.01, "last_minute": _buckets(b3=4)},
            weight=3,
        )
        two = _server(
            active=2,
            idle_connections=1,
            requests=3,
            responses={"1xx": 0, "2xx": 3, "3xx": 0, "4xx": 0, "5xx": 0},
            checks={"passed": 2, "failed": 0},
            response_times={"counts": _buckets(b5=3), "sum": 0.1, "last_minute": _buckets(b5=3)},
            weight=3,
        )
        combined = combine_servers([(1, one), (2, two)])
        self.assertEqual(
            {k: combined[k] for k in ("active", "idle_connections", "requests", "failures")},
            {"active": 3, "idle_connections": 3, "requests": 8, "failures": 1},
        )
        self.assertEqual(combined["retries"], 1)
        self.assertEqual(combined["responses"], {"1xx": 0, "2xx": 7, "3xx": 0, "4xx": 0, "5xx": 1})
        self.assertEqual(combined["checks"], {"passed": 5, "failed": 1})
        self.assertEqual(combined["response_times"]["counts"], _buckets(b3=4, b5=3))
        self.assertEqual(combined["response_times"]["last_minute"], _buckets(b3=4, b5=3))
        self.assertAlmostEqual(combined["response_times"]["sum"], 0.11)
        self.assertEqual(combined["weight"], 3)

    def test_percentiles(self) -> None:
        """
        p50 and p99 come from the summed last minute, not from either
        worker's: 4 answers in bucket 3 and 3 in bucket 5 put p50 at
        bucket 3's bound and p99 at bucket 5's; past the last bound is
        C{+Inf}.
        """
        one = _server(response_times={"counts": [], "sum": 0, "last_minute": _buckets(b3=4)})
        two = _server(response_times={"counts": [], "sum": 0, "last_minute": _buckets(b5=3)})
        combined = combine_servers([(1, one), (2, two)])
        self.assertEqual((combined["p50"], combined["p99"]), (BOUNDS[3], BOUNDS[5]))
        last = _buckets(**{f"b{len(BOUNDS)}": 1})
        slow = _server(response_times={"counts": [], "sum": 0, "last_minute": last})
        self.assertEqual(combine_servers([(1, slow)])["p99"], "+Inf")
        self.assertIsNone(combine_servers([(1, _server())])["p50"])

    def test_up_everywhere(self) -> None:
        """
        Up in every worker: up, in rotation, each worker listed.
        """
        combined = combine_servers([(1, _server(active=1)), (2, _server())])
        self.assertEqual(
            (combined["state"], combined["in_rotation"], combined["healthy"]), ("up", True, True)
        )
        self.assertIsNone(combined["down_reason"])
        self.assertEqual(
            combined["workers"],
            [
                {"worker": 1, "state": "up", "in_rotation": True, "down_reason": None, "active": 1},
                {"worker": 2, "state": "up", "in_rotation": True, "down_reason": None, "active": 0},
            ],
        )

    def test_down_in_some(self) -> None:
        """
        Down in one worker of two: down, out of rotation, and the reason
        says in how many.
        """
        down = _server(state="down", in_rotation=False, healthy=False, down_reason="refused")
        combined = combine_servers([(1, _server()), (2, down)])
        self.assertEqual(
            (combined["state"], combined["in_rotation"], combined["healthy"]),
            ("down", False, False),
        )
        self.assertEqual(combined["down_reason"], "down in 1 of 2 workers: refused")
        self.assertEqual(combine_servers([(2, down)])["down_reason"], "refused")

    def test_gravest_state(self) -> None:
        """
        Workers that disagree (an action reaching them one by one): the
        gravest state, maintenance before draining before down.
        """
        draining = _server(state="draining", in_rotation=False)
        maint = _server(state="maintenance", in_rotation=False)
        down = _server(state="down", in_rotation=False, healthy=False, down_reason="x")
        self.assertEqual(combine_servers([(1, draining), (2, down)])["state"], "draining")
        self.assertEqual(combine_servers([(1, draining), (2, maint)])["state"], "maintenance")

    def test_last_check(self) -> None:
        """
        The last check is the latest of any worker's.
        """
        early = _server(last_check={"time": 5.0, "passed": True, "detail": "200"})
        late = _server(last_check={"time": 7.0, "passed": False, "detail": "timed out"})
        self.assertEqual(
            combine_servers([(1, early), (2, late), (3, _server())])["last_check"],
            {"time": 7.0, "passed": False, "detail": "timed out"},
        )


class CombineTests(SynchronousTestCase):
    """
    L{combine}: whole snapshots.
    """

    def test_process(self) -> None:
        """
        Process gauges and refusals are summed; the pid is the
        supervisor's; C{workers} lists each worker, a missing one with why.
        """
        one = _snapshot([_server()], pid=101)
        two = _snapshot([_server()], pid=102)
        two["lbproxy"]["refused"] = {"431": 2, "400": 3}
        combined = combine({1: one, 2: two, 3: "restarting"}, pid=7, now=60.0)
        process = combined["lbproxy"]
        self.assertEqual(
            {k: process[k] for k in ("pid", "time", "started", "serving")},
            {"pid": 7, "time": 60.0, "started": 111.0, "serving": True},
        )
        self.assertEqual((process["client_connections"], process["requests_in_flight"]), (2, 2))
        self.assertEqual(process["refused"], {"400": 4, "431": 2})
        self.assertEqual(process["latency_bounds"], list(BOUNDS))
        self.assertEqual(
            process["workers"],
            [
                {"worker": 1, "pid": 101, "answered": True, "serving": True, "error": None},
                {"worker": 2, "pid": 102, "answered": True, "serving": True, "error": None},
                {"worker": 3, "pid": None, "answered": False, "error": "restarting"},
            ],
        )

    def test_stopping(self) -> None:
        """
        While the supervisor stops, or when no worker serves, lbproxy is not
        serving.
        """
        one = _snapshot([_server()])
        self.assertFalse(combine({1: one}, 7, 60.0, stopping=True)["lbproxy"]["serving"])
        stopping = _snapshot([_server()], serving=False)
        self.assertFalse(combine({1: stopping}, 7, 60.0)["lbproxy"]["serving"])

    def test_pools(self) -> None:
        """
        Pools and servers are matched by name and address, in the order
        first seen; a server one worker lacks is the others'; queued
        requests are summed.
        """
        one = _snapshot([_server("a:1", requests=1), _server("b:1", requests=2)])
        two = _snapshot([_server("a:1", requests=4), _server("c:1", requests=8)])
        upstreams = combine({1: one, 2: two}, 7, 60.0)["upstreams"]
        servers = upstreams["web"]["servers"]
        self.assertEqual(
            [(s["address"], s["requests"]) for s in servers], [("a:1", 5), ("b:1", 2), ("c:1", 8)]
        )
        self.assertEqual([w["worker"] for w in servers[2]["workers"]], [2])
        self.assertEqual(upstreams["web"]["waiting"], 2)

    def test_unknown_keys(self) -> None:
        """
        Keys this module does not know (a pool's DNS sources, added
        elsewhere) pass through: the first worker's.
        """
        one = _snapshot([_server(zone="x")], discovery=[{"name": "web.example", "ok": True}])
        two = _snapshot([_server(zone="y")], discovery=[{"name": "web.example", "ok": False}])
        one["lbproxy"]["future"] = 1
        combined = combine({1: one, 2: two}, 7, 60.0)
        pool = combined["upstreams"]["web"]
        self.assertEqual(pool["discovery"], [{"name": "web.example", "ok": True}])
        self.assertEqual(pool["servers"][0]["zone"], "x")
        self.assertEqual(combined["lbproxy"]["future"], 1)

    def test_none_answered(self) -> None:
        """
        With no worker answering, the snapshot is empty but whole: the
        metrics and the page can be made of it.
        """
        combined = combine({1: "starting", 2: "did not answer: timeout"}, 7, 60.0)
        self.assertEqual(combined["upstreams"], {})
        self.assertFalse(combined["lbproxy"]["serving"])
        text = exposition(metrics_registry(lambda: combined)).decode()
        names = {family.name for family in text_string_to_metric_families(text)}
        self.assertIn("lbproxy_serving", names)

    def test_metrics_of_combined(self) -> None:
        """
        C{/metrics} made of the combined snapshot has the summed counts and
        histogram.
        """
        one = _snapshot(
            [
                _server(
                    responses={"1xx": 0, "2xx": 2, "3xx": 0, "4xx": 0, "5xx": 0},
                    response_times={"counts": _buckets(b2=2), "sum": 0.002, "last_minute": []},
                )
            ]
        )
        two = _snapshot(
            [
                _server(
                    responses={"1xx": 0, "2xx": 3, "3xx": 0, "4xx": 0, "5xx": 1},
                    response_times={"counts": _buckets(b4=4), "sum": 0.01, "last_minute": []},
                )
            ]
        )
        combined = combine({1: one, 2: two}, 7, 60.0)
        text = exposition(metrics_registry(lambda: combined)).decode()
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        labels = (("pool", "web"), ("server", "10.0.0.1:80"))
        self.assertEqual(samples[("lbproxy_requests_total", (("code", "2xx"), *labels))], 5)
        self.assertEqual(samples[("lbproxy_requests_total", (("code", "5xx"), *labels))], 1)
        self.assertEqual(samples[("lbproxy_upstream_response_seconds_count", labels)], 6)
        self.assertEqual(samples[("lbproxy_refused_requests_total", (("status", "400"),))], 2)
        self.assertEqual(samples[("lbproxy_client_connections", ())], 2)


class ReadinessTests(SynchronousTestCase):
    """
    L{readiness}: C{/healthz} of the supervisor.
    """

    def test_ready(self) -> None:
        """
        One worker serving with a server in rotation is enough.
        """
        up = _snapshot([_server("a:1"), _server("b:1", in_rotation=False, state="draining")])
        self.assertEqual(
            readiness({1: up, 2: "restarting"}),
            (True, "ok: 1 of 2 workers serving, 1 of 2 servers in rotation"),
        )

    def test_not_ready(self) -> None:
        """
        Stopping, no worker serving, or no server in rotation: not ready.
        """
        up = _snapshot([_server()])
        out = _snapshot([_server(in_rotation=False, state="maintenance")])
        self.assertEqual(readiness({1: up}, stopping=True)[0], False)
        self.assertEqual(
            readiness({1: "starting", 2: _snapshot([_server()], serving=False)}),
            (False, "no worker serving (1 of 2 answered)"),
        )
        self.assertEqual(
            readiness({1: out, 2: out}),
            (False, "2 of 2 workers serving, no server in rotation (of 1)"),
        )


class CombineActionsTests(SynchronousTestCase):
    """
    L{combine_actions}: one action's answers from every worker.
    """

    def _done(self, previous: str = "up") -> tuple[int, dict[str, Any]]:
        return 200, {
            "pool": "web",
            "address": "a:1",
            "action": "drain",
            "previous": previous,
            "state": "draining",
        }

    def test_all_done(self) -> None:
        """
        Done by every worker asked: 200, the first's answer, each worker's
        outcome; one not ready yet is said so.
        """
        status, answer = combine_actions({1: self._done(), 2: self._done("down"), 3: "starting"})
        self.assertEqual(status, 200)
        self.assertEqual((answer["state"], answer["previous"]), ("draining", "up"))
        self.assertEqual(
            answer["workers"],
            [
                {"worker": 1, "done": True, "previous": "up", "state": "draining"},
                {"worker": 2, "done": True, "previous": "down", "state": "draining"},
                {"worker": 3, "done": False, "error": "not asked: starting"},
            ],
        )

    def test_same_error(self) -> None:
        """
        The same error from every worker (an unknown server): that status
        and error, once.
        """
        error = (404, {"error": "pool 'web' has no server 'x:1' (a:1)"})
        status, answer = combine_actions({1: error, 2: error})
        self.assertEqual((status, answer["error"]), (404, "pool 'web' has no server 'x:1' (a:1)"))

    def test_some_failed(self) -> None:
        """
        A worker that did not answer is named, with how many did it.
        """
        late = (504, {"error": "did not answer: timeout"})
        status, answer = combine_actions({1: self._done(), 2: late})
        self.assertEqual(status, 504)
        self.assertEqual(
            answer["error"], "worker 2: did not answer: timeout (done in 1 of 2 workers)"
        )

    def test_none_ready(self) -> None:
        """
        No worker ready: 503.
        """
        status, answer = combine_actions({1: "starting", 2: "restarting"})
        self.assertEqual((status, answer["error"]), (503, "no worker is ready to act"))
