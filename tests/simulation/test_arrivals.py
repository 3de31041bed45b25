"""
Tests for L{lbproxy.simulation.arrivals}: Poisson arrivals and the times
of access logs in the combined and JSON formats.
"""

from __future__ import annotations

import json
from random import Random

from twisted.trial.unittest import SynchronousTestCase

from lbproxy.errors import ConfigError
from lbproxy.simulation.arrivals import log_times, poisson_times


class PoissonTests(SynchronousTestCase):
    """
    L{poisson_times} draws ascending times at the rate asked for.
    """

    def test_rate(self) -> None:
        """
        20,000 arrivals at 1,000 a second take about 20 s, ascending.
        """
        times = poisson_times(20000, 1000, Random(1))
        self.assertEqual(len(times), 20000)
        self.assertTrue(all(a < b for a, b in zip(times, times[1:], strict=False)))
        self.assertTrue(19.5 < times[-1] < 20.5, times[-1])

    def test_seeded(self) -> None:
        """
        The same seed, the same times.
        """
        self.assertEqual(poisson_times(5, 10, Random(3)), poisson_times(5, 10, Random(3)))


class LogTests(SynchronousTestCase):
    """
    L{log_times} reads an access log's times, spreading each second's
    requests over it.
    """

    def write(self, lines: list[str]) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def test_combined(self) -> None:
        """
        Combined-format times, from the first second; two requests in one
        second go half a second apart.
        """
        line = '10.0.0.1 - - [{}] "GET / HTTP/1.1" 200 5 "-" "curl/8"'
        path = self.write(
            [
                line.format("25/Nov/2026:12:00:00 +0000"),
                line.format("25/Nov/2026:12:00:00 +0000"),
                "",
                line.format("25/Nov/2026:12:00:03 +0000"),
            ]
        )
        self.assertEqual(list(log_times(path)), [0.0, 0.5, 3.0])

    def test_json(self) -> None:
        """
        lbproxy's JSON log: the C{time} field.
        """
        path = self.write(
            [
                json.dumps({"time": "2026-11-25T12:00:01+00:00", "status": 200}),
                json.dumps({"time": "2026-11-25T12:00:00+00:00", "status": 200}),
            ]
        )
        self.assertEqual(list(log_times(path)), [0.0, 1.0])

    def test_limit(self) -> None:
        """
        At most C{limit} lines are read.
        """
        stamp = json.dumps({"time": "2026-11-25T12:00:00+00:00"})
        self.assertEqual(len(log_times(self.write([stamp] * 10), limit=4)), 4)

    def test_not_a_log(self) -> None:
        """
        A line without a time stamp is named by its number.
        """
        path = self.write([json.dumps({"time": "2026-11-25T12:00:00+00:00"}), "hello"])
        error = self.assertRaises(ConfigError, log_times, path)
        self.assertEqual(
            str(error), f"{path}:2: not an access log line (combined or JSON with a time)"
        )

    def test_missing(self) -> None:
        """
        A file that cannot be read is one line.
        """
        error = self.assertRaises(ConfigError, log_times, "/nonexistent/access.log")
        self.assertIn("/nonexistent/access.log: cannot read", str(error))
