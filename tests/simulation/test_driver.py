"""
Tests for L{lbproxy.simulation.driver}: modelled servers through the real
pool, health and retry code on a virtual clock.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from lbproxy.simulation.driver import Run, simulate
from lbproxy.simulation.scenario import parse_scenario


def _run(servers: list[dict[str, Any]], strategy: str = "roundrobin", **settings: Any) -> Run:
    scenario = parse_scenario(
        {
            "requests": 1,
            "strategies": [strategy],
            "arrivals": {"rate": 1},
            "settings": settings,
            "server": servers,
        }
    )
    # 100 requests a second for 10 s, evenly.
    arrivals = [i / 100 for i in range(1000)]
    return simulate(scenario.contenders[0], scenario.servers, arrivals, 1)


class DriverTests(SynchronousTestCase):
    """
    What a run measures.
    """

    def test_latency(self) -> None:
        """
        Each request's latency is its server's response time.
        """
        run = _run([{"name": "a", "latency": {"fixed": 20}}], **{"health-check": False})
        self.assertEqual(set(round(x, 9) for x in run.latencies), {0.02})
        self.assertEqual((run.errors, run.retries, run.attempts), (0, 0, {"a": 1000}))

    def test_refused_retried(self) -> None:
        """
        A refused connection is tried on the next server (nginx's
        proxy_next_upstream error), and the server is ejected for
        C{fail-timeout} (max_fails): requests after the first go
        elsewhere until it is back.
        """
        run = _run(
            [
                {"name": "a", "latency": {"fixed": 1}, "fail": {"from": 2, "to": 4}},
                {"name": "b", "latency": {"fixed": 1}},
            ],
            **{"health-check": False, "max-fails": 1, "fail-timeout": 1},
        )
        self.assertEqual(run.errors, 0)
        # Ejected at 2 s and again once back at 3 s: one retry each time.
        self.assertEqual(run.retries, 2)
        self.assertEqual(sum(run.attempts.values()), 1002)
        self.assertLess(run.attempts["a"], run.attempts["b"])

    def test_read_timeout(self) -> None:
        """
        A server that stays silent past the read timeout costs a 504, not
        a retry, as after_failure decides.
        """
        run = _run(
            [
                {
                    "name": "a",
                    "latency": {"fixed": 1},
                    "fail": {"from": 0, "to": 1, "mode": "read-timeout"},
                }
            ],
            **{"health-check": False, "max-fails": 0, "read-timeout": 0.5},
        )
        self.assertEqual((run.errors, run.retries), (100, 0))

    def test_no_server(self) -> None:
        """
        With its only server ejected, requests get an error (503).
        """
        run = _run(
            [{"name": "a", "latency": {"fixed": 1}, "fail": {"from": 0, "to": 1}}],
            **{"health-check": False, "max-fails": 1, "fail-timeout": 5},
        )
        # Refused, then ejected until 5 s: 500 errors.
        self.assertEqual(run.errors, 500)

    def test_active_checks(self) -> None:
        """
        Active health checks take a refusing server out after C{fall}
        failed checks, with passive tracking off: the real health checker
        probes the modelled servers.
        """
        run = _run(
            [
                {"name": "a", "latency": {"fixed": 1}, "fail": {"from": 0, "to": 10}},
                {"name": "b", "latency": {"fixed": 1}},
            ],
            **{"max-fails": 0, "health-interval": 1, "fall": 2},
        )
        # Checks at 0 and 1 s fail: out from 1 s; until then (the request
        # arriving at 1 s included, as it comes before the check), one
        # request in two tries a first, is refused and goes to b.
        self.assertEqual(run.errors, 0)
        self.assertEqual(run.attempts["a"], 51)
        self.assertEqual(run.retries, 51)

    def test_max_conns_queue(self) -> None:
        """
        A server at its C{max-conns} makes requests wait in the pool's
        queue, which times out with an error (HAProxy's timeout queue).
        """
        run = _run(
            [{"name": "a", "latency": {"fixed": 1000}, "max-conns": 1}],
            **{"health-check": False, "queue-timeout": 0.5},
        )
        # One request at a time, each 1 s: at 0 s, then each second the
        # oldest of those that waited less than 0.5 s; the rest time out.
        self.assertEqual(run.attempts["a"], 11)
        self.assertEqual(run.errors, 989)
