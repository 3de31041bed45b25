"""
The simulator runs the proxy's own decisions: for the same requests and
the same answers, a live L{ProxyExchange} over the real pool (its
upstream side a fake on a L{Clock}) and L{lbproxy.simulation.driver}
pick the same servers, attempt by attempt, through retries and passive
ejection, for every strategy that does not key on the request.
"""

from __future__ import annotations

from random import Random
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lbproxy.balancing.pool import Pool, Server
from lbproxy.balancing.registry import make_balancer
from lbproxy.balancing.routes import Router
from lbproxy.errors import ConnectFailed
from lbproxy.proxy.exchange import ProxyExchange
from lbproxy.proxy.resource import BalancingProxyResource
from lbproxy.simulation.driver import simulate
from lbproxy.simulation.scenario import Scenario, ServerModel, parse_scenario
from lbproxy.upstream.connection import UpstreamRequest
from tests.proxy.fakes import FakeClientRequest, FakeProducer


def _scenario(strategy: str) -> Scenario:
    """
    Three servers of different speeds; C{b} refuses connections for a
    second and C{c} turns slow for one.
    """
    return parse_scenario(
        {
            "requests": 3000,
            "seed": 5,
            "strategies": [strategy],
            "arrivals": {"rate": 1000},
            "settings": {"health-check": False, "max-fails": 2, "fail-timeout": 0.5},
            "server": [
                {"name": "a", "latency": {"fixed": 4.1}},
                {"name": "b", "latency": {"fixed": 9.3}, "fail": {"from": 1, "to": 2}},
                {
                    "name": "c",
                    "latency": {"fixed": 6.7},
                    "slow": {"from": 0.5, "to": 1.5, "factor": 20},
                },
            ],
        }
    )


def _arrivals(count: int) -> list[float]:
    rng = Random(11)
    times, now = [], 0.0
    for _ in range(count):
        now += rng.expovariate(1000)
        times.append(now)
    return times


class _ModelledUpstream:
    """
    An upstream client whose servers answer as the scenario's models say,
    on a L{Clock}: what a live proxy would see of them.
    """

    def __init__(self, clock: Clock, models: dict[str, ServerModel]) -> None:
        self.clock = clock
        self.models = models
        self.picks: list[str] = []

    def send(self, server: Server, request: UpstreamRequest, sink: Any) -> Any:
        name = server.config.host
        self.picks.append(name)
        model = self.models[name]
        now = self.clock.seconds()
        if any(window.start <= now < window.end for window in model.fail):
            self.clock.callLater(0, sink.response_failed, ConnectFailed("connection refused"))
        else:
            latency = model.median
            for spell in model.slow:
                if spell.start <= now < spell.end:
                    latency *= spell.factor
            self.clock.callLater(latency, self._answer, sink)
        return lambda: None

    send_fresh = send

    def _answer(self, sink: Any) -> None:
        sink.response_headers(200, b"OK", [], FakeProducer())
        sink.response_done()


def _live_picks(scenario: Scenario, arrivals: list[float]) -> tuple[list[str], int]:
    """
    The servers a live proxy picks for requests arriving at C{arrivals}
    (and how many requests got an error).
    """
    clock = Clock()
    config = scenario.contenders[0].config.pools[0]
    pool = Pool(config, make_balancer(config, clock, Random(scenario.seed)), clock)
    upstream = _ModelledUpstream(clock, {m.name: m for m in scenario.servers})
    resource = BalancingProxyResource(Router((), {"sim": pool}), upstream)  # type: ignore[arg-type]
    clients = []
    for when in arrivals:
        _run_until(clock, when)
        client = FakeClientRequest()
        ProxyExchange(resource, client).start()
        clients.append(client)
    _run_until(clock, float("inf"))
    return upstream.picks, sum(1 for c in clients if c.status != 200)


def _run_until(clock: Clock, when: float) -> None:
    """
    Run the calls due before C{when} one by one, each at its own time (as
    C{Clock.advance} would not: it runs them all at the end time).
    """
    while True:
        due = min((call.getTime() for call in clock.getDelayedCalls()), default=float("inf"))
        if due >= when:
            break
        clock.rightNow = due
        clock.advance(0)
    if when != float("inf"):
        clock.rightNow = when


class SamePicksTests(SynchronousTestCase):
    """
    The live proxy and the simulator agree, attempt by attempt.
    """

    def check(self, strategy: str) -> None:
        scenario = _scenario(strategy)
        arrivals = _arrivals(scenario.requests)
        live, live_errors = _live_picks(scenario, arrivals)
        run = simulate(
            scenario.contenders[0], scenario.servers, arrivals, scenario.seed, trace=True
        )
        simulated = run.picks or []
        # The first difference, not a diff of thousands of picks.
        first = next(
            (i for i, (a, b) in enumerate(zip(live, simulated, strict=False)) if a != b), None
        )
        self.assertIsNone(first, f"attempt {first}: live and simulated picks differ")
        self.assertEqual(len(live), len(simulated))
        self.assertEqual(live_errors, run.errors)
        # The scenario exercises what it means to: retries after refusals,
        # and every server used.
        self.assertGreater(run.retries, 0)
        self.assertEqual(set(live), {"a", "b", "c"})

    def test_roundrobin(self) -> None:
        """
        Round robin picks alike.
        """
        self.check("roundrobin")

    def test_leastconn(self) -> None:
        """
        Least connections picks alike.
        """
        self.check("leastconn")

    def test_random2(self) -> None:
        """
        Two random choices pick alike (the same seed).
        """
        self.check("random2")

    def test_ewma(self) -> None:
        """
        Peak EWMA picks alike: the same response times at the same times.
        """
        self.check("ewma")
