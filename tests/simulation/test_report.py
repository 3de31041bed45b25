"""
Tests for L{lbproxy.simulation.report}: percentiles, the table, the JSON
and the plot.
"""

from __future__ import annotations

import builtins
import json
import math
from array import array
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from lbproxy.simulation.driver import Run
from lbproxy.simulation.report import (
    MissingPlotter,
    format_table,
    plot,
    summarize,
    to_json,
)


def _run(name: str = "roundrobin") -> Run:
    # 1000 answers of 1..1000 ms, and 10 errors.
    latencies = array("d", [i / 1000 for i in range(1, 1001)] + [math.inf] * 10)
    return Run(
        name=name,
        arrivals=[i / 101 for i in range(1010)],
        latencies=latencies,
        errors=10,
        retries=3,
        attempts={"a": 758, "b": 255},
    )


class SummaryTests(SynchronousTestCase):
    """
    L{summarize} ranks the answered requests' latencies.
    """

    def test_percentiles(self) -> None:
        """
        p50, p99 and p99.9 are nearest ranks of the answers; errors are
        counted apart.
        """
        summary = summarize(_run())
        self.assertEqual((summary.p50_ms, summary.p99_ms, summary.p999_ms), (500.0, 990.0, 999.0))
        self.assertEqual((summary.errors, summary.requests), (10, 1010))
        self.assertAlmostEqual(summary.error_rate, 10 / 1010)

    def test_share(self) -> None:
        """
        Each server's share is of the attempts, retries included.
        """
        summary = summarize(_run())
        self.assertAlmostEqual(summary.share["a"], 758 / 1013)
        self.assertAlmostEqual(summary.share["b"], 255 / 1013)

    def test_json(self) -> None:
        """
        The JSON has the issue's shape: requests, then per strategy its
        percentiles in ms, errors, retries and share.
        """
        data = json.loads(to_json(1010, [summarize(_run())]))
        self.assertEqual(data["requests"], 1010)
        self.assertEqual(
            data["strategies"]["roundrobin"],
            {
                "p50_ms": 500.0,
                "p99_ms": 990.0,
                "p999_ms": 999.0,
                "errors": 10,
                "retries": 3,
                "share": {"a": round(758 / 1013, 6), "b": round(255 / 1013, 6)},
            },
        )

    def test_table(self) -> None:
        """
        The table has a line per strategy under a header.
        """
        table = format_table([summarize(_run()), summarize(_run("ewma"))]).splitlines()
        self.assertEqual(
            table[0].split(),
            [
                "strategy",
                "p50",
                "ms",
                "p99",
                "ms",
                "p99.9",
                "ms",
                "errors",
                "retries",
                "a",
                "share",
                "b",
                "share",
            ],
        )
        self.assertEqual(
            table[1].split(),
            ["roundrobin", "500.0", "990.0", "999.0", "0.99%", "3", "74.8%", "25.2%"],
        )
        self.assertTrue(table[2].startswith("ewma "))


try:
    import matplotlib  # noqa: F401
except ImportError:  # the floors' run installs lbproxy without its test extra
    NO_MATPLOTLIB: str | None = "matplotlib is not installed (pip install '.[test]')"
else:
    NO_MATPLOTLIB = None


class PlotTests(SynchronousTestCase):
    """
    L{plot} draws a PNG, or says matplotlib is missing.
    """

    def test_png(self) -> None:
        """
        The plot is a PNG file.  (Without matplotlib, L{test_missing} covers
        what C{--plot} does.)
        """
        if NO_MATPLOTLIB is not None:
            raise SkipTest(NO_MATPLOTLIB)
        path = self.mktemp() + ".png"
        plot([_run(), _run("ewma")], path, "test")
        with open(path, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")

    def test_missing(self) -> None:
        """
        Without matplotlib, L{MissingPlotter} says what to install.
        """
        real_import = builtins.__import__

        def no_matplotlib(name: str, *args: Any, **kwargs: Any) -> Any:
            if name.startswith("matplotlib"):
                raise ImportError(name)
            return real_import(name, *args, **kwargs)

        self.patch(builtins, "__import__", no_matplotlib)
        error = self.assertRaises(MissingPlotter, plot, [_run()], self.mktemp(), "test")
        self.assertIn("needs matplotlib", str(error))
