"""
Tests for L{lbproxy.simulation.compare}: every strategy simulated and
summarized, here or in worker processes, alike.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from lbproxy.simulation.compare import compare
from lbproxy.simulation.driver import simulate
from lbproxy.simulation.report import summarize
from lbproxy.simulation.scenario import parse_scenario

_SCENARIO = parse_scenario(
    {
        "requests": 2000,
        "strategies": ["random2", "ewma"],
        "arrivals": {"rate": 1000},
        "server": [
            {"name": "a", "latency": {"lognormal": 5}},
            {"name": "b", "latency": {"lognormal": 8}},
        ],
    }
)
_ARRIVALS = [i / 1000 for i in range(2000)]


class CompareTests(SynchronousTestCase):
    """
    L{compare} gives each contender's summary, in order.
    """

    def test_summaries(self) -> None:
        """
        The summaries are those of each run, in the contenders' order; no
        run is kept unless asked for.
        """
        summaries, runs = compare(_SCENARIO.contenders, _SCENARIO.servers, _ARRIVALS, 3)
        expected = [
            summarize(simulate(c, _SCENARIO.servers, _ARRIVALS, 3)) for c in _SCENARIO.contenders
        ]
        self.assertEqual(summaries, expected)
        self.assertEqual(runs, [])

    def test_parallel(self) -> None:
        """
        Runs in worker processes give what runs in this one do, and their
        latencies when kept.
        """
        here = compare(_SCENARIO.contenders, _SCENARIO.servers, _ARRIVALS, 3, 1, True)
        there = compare(_SCENARIO.contenders, _SCENARIO.servers, _ARRIVALS, 3, 2, True)
        self.assertEqual(here, there)
        self.assertEqual(len(there[1][0].latencies), 2000)
