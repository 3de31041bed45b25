"""
Tests for L{lbproxy.simulation.scenario}: the scenario file, and its
problems as one line naming the file and the key.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from lbproxy.simulation.scenario import ScenarioError, load_scenario, parse_scenario

_EXAMPLE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "examples",
    "slow-server.toml",
)


def _data(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "requests": 10,
        "strategies": ["roundrobin"],
        "arrivals": {"rate": 100},
        "server": [{"name": "a", "latency": {"fixed": 10}}],
    }
    data.update(changes)
    return data


class ScenarioTests(SynchronousTestCase):
    """
    L{parse_scenario} builds the models and one lbproxy configuration per
    strategy.
    """

    def test_example(self) -> None:
        """
        The example compares four strategies on three servers, one of them
        50 times slower from 30 s to 60 s, a million requests at 10,000 a
        second.
        """
        scenario = load_scenario(_EXAMPLE)
        self.assertEqual(scenario.requests, 1_000_000)
        self.assertEqual(scenario.rate, 10000)
        self.assertEqual(
            [c.name for c in scenario.contenders], ["roundrobin", "leastconn", "random2", "ewma"]
        )
        self.assertEqual([s.name for s in scenario.servers], ["a", "b", "c"])
        (spell,) = scenario.servers[2].slow
        self.assertEqual((spell.start, spell.end, spell.factor), (30, 60, 50))

    def test_models(self) -> None:
        """
        Latencies are read in milliseconds; failure windows keep their mode
        and rate.
        """
        scenario = parse_scenario(
            _data(
                server=[
                    {"name": "a", "latency": {"fixed": 10}},
                    {
                        "name": "b",
                        "latency": {"lognormal": 20, "sigma": 0.2},
                        "fail": [{"from": 1, "to": 2, "mode": "read-timeout", "rate": 0.5}],
                    },
                ]
            )
        )
        a, b = scenario.servers
        self.assertEqual((a.median, a.sigma), (0.01, 0.0))
        self.assertEqual((b.median, b.sigma), (0.02, 0.2))
        self.assertEqual(b.fail[0].mode, "read-timeout")
        self.assertEqual(b.fail[0].rate, 0.5)

    def test_settings(self) -> None:
        """
        The settings are lbproxy options for every strategy; a strategy's
        table adds its own and names it.
        """
        scenario = parse_scenario(
            _data(
                settings={"max-fails": 3, "read-timeout": 2},
                strategies=["leastconn", {"name": "fast-ewma", "balance": "ewma", "ewma-decay": 1}],
            )
        )
        plain, fast = scenario.contenders
        self.assertEqual(plain.config.pools[0].balance, "leastconn")
        self.assertEqual(plain.config.pools[0].max_fails, 3)
        self.assertEqual(plain.config.read_timeout, 2)
        self.assertEqual(fast.name, "fast-ewma")
        self.assertEqual(
            (fast.config.pools[0].balance, fast.config.pools[0].ewma_decay), ("ewma", 1)
        )

    def test_log_relative(self) -> None:
        """
        An access log is found beside the scenario file.
        """
        scenario = parse_scenario(_data(arrivals={"log": "access.log"}), "/srv/sim/x.toml")
        self.assertEqual(scenario.log, "/srv/sim/access.log")


class ProblemTests(SynchronousTestCase):
    """
    Every problem is one line naming the file and the key.
    """

    def problem(self, **changes: Any) -> str:
        error = self.assertRaises(ScenarioError, parse_scenario, _data(**changes), "s.toml")
        message = str(error)
        self.assertNotIn("\n", message)
        return message

    def test_unknown_key(self) -> None:
        """
        An unknown key is named, with the known ones.
        """
        self.assertIn(
            "s.toml: request: unknown key (expected one of requests,", self.problem(request=5)
        )

    def test_unknown_strategy(self) -> None:
        """
        A strategy no plugin provides is named.
        """
        self.assertEqual(
            self.problem(strategies=["roundrobin", "fastest"]),
            "s.toml: strategies[1]: balance: unknown strategy 'fastest' (expected one of "
            "ewma, hash, leastconn, random2, roundrobin)",
        )

    def test_hash_refused(self) -> None:
        """
        C{hash} is refused, named: simulated requests have no key, so it
        would run as round robin.
        """
        message = self.problem(strategies=["roundrobin", {"name": "h", "balance": "hash"}])
        self.assertTrue(message.startswith("s.toml: strategies[1]: balance: 'hash' "), message)
        self.assertIn("round robin", message)
        self.assertIn("s.toml: strategies[0]: balance: 'hash'", self.problem(strategies=["hash"]))

    def test_sticky_cookie_refused(self) -> None:
        """
        A sticky cookie is refused, named where it is set: simulated
        requests carry no cookie.
        """
        message = self.problem(
            strategies=["roundrobin", {"name": "s", "balance": "leastconn", "sticky-cookie": "lb"}]
        )
        self.assertTrue(message.startswith("s.toml: strategies[1]: sticky-cookie: "), message)
        self.assertTrue(
            self.problem(settings={"sticky-cookie": "lb"}).startswith(
                "s.toml: settings: sticky-cookie: "
            )
        )

    def test_bad_setting(self) -> None:
        """
        A bad lbproxy option is named as the configuration file names it.
        """
        self.assertIn("s.toml: settings: max-fails", self.problem(settings={"max-fails": "x"}))

    def test_bad_latency(self) -> None:
        """
        A latency that is neither fixed nor lognormal is refused.
        """
        self.assertIn(
            "s.toml: server[0].latency: expected { fixed = MS }",
            self.problem(server=[{"name": "a", "latency": {"median": 3}}]),
        )

    def test_bad_window(self) -> None:
        """
        A slow spell that ends before it starts is refused.
        """
        self.assertEqual(
            self.problem(
                server=[
                    {
                        "name": "a",
                        "latency": {"fixed": 1},
                        "slow": {"from": 5, "to": 1, "factor": 2},
                    }
                ]
            ),
            "s.toml: server[0].slow: to (1) must be after from (5)",
        )

    def test_bad_mode(self) -> None:
        """
        An unknown failure mode is named with the known ones.
        """
        self.assertIn(
            "expected one of refused, connect-timeout, read-timeout, got 'exploded'",
            self.problem(
                server=[
                    {
                        "name": "a",
                        "latency": {"fixed": 1},
                        "fail": {"from": 0, "to": 1, "mode": "exploded"},
                    }
                ]
            ),
        )

    def test_rate_and_log(self) -> None:
        """
        Arrivals are a rate or a log, not both.
        """
        self.assertIn(
            "arrivals: expected one of rate", self.problem(arrivals={"rate": 1, "log": "x"})
        )

    def test_negative_requests(self) -> None:
        """
        A request count must be above 0.
        """
        self.assertEqual(self.problem(requests=-1), "s.toml: requests: must be above 0, got -1")

    def test_not_toml(self) -> None:
        """
        A file that is not TOML is one line too.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("requests = = 1\n")
        error = self.assertRaises(ScenarioError, load_scenario, path)
        self.assertTrue(str(error).startswith(f"{path}: not valid TOML"))
