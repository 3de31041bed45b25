"""
Tests for L{lbproxy.cli}: the C{lbproxy} console script.
"""

from __future__ import annotations

import io
import sys

from twisted.trial.unittest import SynchronousTestCase

from lbproxy import __version__
from lbproxy.cli import main


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
