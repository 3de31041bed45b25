"""
Tests for L{lbproxy.cli}: the C{lbproxy} console script.
"""

from __future__ import annotations

import io
import json
import sys

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from lbproxy import __version__
from lbproxy.cli import main
from tests.simulation.test_report import NO_MATPLOTLIB


class MainTests(SynchronousTestCase):
    """
    L{main} runs the console script.
    """

    def setUp(self) -> None:
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        self.patch(sys, "stdout", self.stdout)
        self.patch(sys, "stderr", self.stderr)

    def test_version(self) -> None:
        """
        C{--version} prints C{lbproxy <version>} on standard output and exits 0.
        """
        error = self.assertRaises(SystemExit, main, ["--version"])
        self.assertEqual((error.code, self.stdout.getvalue()), (0, f"lbproxy {__version__}\n"))

    def test_no_arguments(self) -> None:
        """
        Without arguments the help, which says how to run the proxy, is
        printed and the status is 0.
        """
        status = main([])
        self.assertEqual(status, 0)
        self.assertIn("twistd -n lbproxy --upstream", " ".join(self.stdout.getvalue().split()))

    def test_unknown_option(self) -> None:
        """
        An unknown option is reported on standard error with status 2.
        """
        error = self.assertRaises(SystemExit, main, ["--bogus"])
        self.assertEqual(error.code, 2)
        self.assertIn("unrecognized arguments: --bogus", self.stderr.getvalue())


_SCENARIO = """
requests = 3000
strategies = ["roundrobin", "leastconn"]

[arrivals]
rate = 1000

[[server]]
name = "a"
latency = { fixed = 5 }

[[server]]
name = "b"
latency = { fixed = 5 }
slow = { from = 0, to = 3, factor = 10 }
"""


class SimulateTests(SynchronousTestCase):
    """
    C{lbproxy balancers} and C{lbproxy simulate}.
    """

    def setUp(self) -> None:
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        self.patch(sys, "stdout", self.stdout)
        self.patch(sys, "stderr", self.stderr)

    def scenario(self, text: str = _SCENARIO) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_balancers(self) -> None:
        """
        C{lbproxy balancers} lists the installed strategies, a line each.
        """
        self.assertEqual(main(["balancers"]), 0)
        names = [line.split()[0] for line in self.stdout.getvalue().splitlines()]
        self.assertEqual(
            [n for n in names if n != "firstup"],
            ["ewma", "hash", "leastconn", "random2", "roundrobin"],
        )

    def test_table(self) -> None:
        """
        C{lbproxy simulate} prints a table with a line per strategy.
        """
        self.assertEqual(main(["simulate", self.scenario(), "--jobs", "1"]), 0)
        lines = self.stdout.getvalue().splitlines()
        self.assertEqual(
            [line.split()[0] for line in lines], ["strategy", "roundrobin", "leastconn"]
        )

    def test_json(self) -> None:
        """
        C{--json} prints one object; least connections sends the slow
        server less than round robin does.
        """
        self.assertEqual(main(["simulate", self.scenario(), "--json", "--jobs", "1"]), 0)
        data = json.loads(self.stdout.getvalue())
        self.assertEqual(data["requests"], 3000)
        strategies = data["strategies"]
        self.assertEqual(strategies["roundrobin"]["share"]["b"], 0.5)
        self.assertLess(strategies["leastconn"]["share"]["b"], 0.5)

    def test_plot(self) -> None:
        """
        C{--plot} writes a PNG.
        """
        if NO_MATPLOTLIB is not None:
            raise SkipTest(NO_MATPLOTLIB)
        path = self.mktemp() + ".png"
        self.assertEqual(main(["simulate", self.scenario(), "--plot", path, "--jobs", "1"]), 0)
        with open(path, "rb") as f:
            self.assertEqual(f.read(4), b"\x89PNG")

    def test_bad_scenario(self) -> None:
        """
        A bad scenario is one line on standard error and status 1.
        """
        path = self.scenario(_SCENARIO.replace("rate = 1000", "rate = -5"))
        self.assertEqual(main(["simulate", path]), 1)
        self.assertEqual(
            self.stderr.getvalue(),
            f"lbproxy simulate: {path}: arrivals.rate: must be above 0, got -5\n",
        )
        self.assertEqual(self.stdout.getvalue(), "")

    def test_hash_scenario(self) -> None:
        """
        A scenario comparing C{hash} (which simulated requests cannot key)
        is one line naming it and status 1, not round robin's figures.
        """
        path = self.scenario(_SCENARIO.replace('"leastconn"', '"hash"'))
        self.assertEqual(main(["simulate", path, "--jobs", "1"]), 1)
        self.assertTrue(
            self.stderr.getvalue().startswith(
                f"lbproxy simulate: {path}: strategies[1]: balance: 'hash' cannot be simulated"
            )
        )
        self.assertEqual(self.stderr.getvalue().count("\n"), 1)
        self.assertEqual(self.stdout.getvalue(), "")
