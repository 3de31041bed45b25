"""
Tests for L{lbproxy.balancing.strategies}: nginx's smooth weighted round robin.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from lbproxy.balancing.pool import Server
from lbproxy.balancing.strategies import RoundRobin
from lbproxy.config.model import ServerConfig
from lbproxy.interfaces import IBalancer


def _servers(*names: str, weights: tuple[int, ...] = ()) -> list[Server]:
    """
    Servers on hosts C{names}, port 80, with the given weights (1 if none).
    """
    weights = weights or (1,) * len(names)
    pairs = zip(names, weights, strict=True)
    return [Server(ServerConfig(name, 80, weight=weight)) for name, weight in pairs]


def _picks(
    balancer: RoundRobin, servers: list[Server], count: int, exclude: object = ()
) -> list[str | None]:
    """
    The hosts of C{count} successive picks (L{None} for no pick).
    """
    hosts: list[str | None] = []
    for _ in range(count):
        server = balancer.pick(servers, exclude)  # type: ignore[arg-type]
        hosts.append(None if server is None else server.config.host)
    return hosts


class RoundRobinTests(SynchronousTestCase):
    """
    L{RoundRobin} takes turns, by weight, among the servers it may pick.
    """

    def test_interface(self) -> None:
        """
        L{RoundRobin} provides L{IBalancer}.
        """
        self.assertTrue(verifyObject(IBalancer, RoundRobin()))

    def test_two_alternate(self) -> None:
        """
        Two equal servers alternate, the first configured first.
        """
        servers = _servers("a", "b")
        self.assertEqual(_picks(RoundRobin(), servers, 6), ["a", "b"] * 3)

    def test_three_in_order(self) -> None:
        """
        Three equal servers take turns in configuration order.
        """
        servers = _servers("a", "b", "c")
        self.assertEqual(_picks(RoundRobin(), servers, 6), ["a", "b", "c"] * 2)

    def test_smooth_weighted(self) -> None:
        """
        Weights 5, 1, 1 give nginx's documented smooth sequence
        C{a a b a c a a} (C{ngx_http_upstream_round_robin.c}), which then
        repeats.
        """
        servers = _servers("a", "b", "c", weights=(5, 1, 1))
        sequence = ["a", "a", "b", "a", "c", "a", "a"]
        self.assertEqual(_picks(RoundRobin(), servers, 14), sequence * 2)

    def test_down_skipped(self) -> None:
        """
        A server that is not up is never picked; the others keep taking turns.
        """
        servers = _servers("a", "b", "c")
        servers[1].up = False
        self.assertEqual(_picks(RoundRobin(), servers, 4), ["a", "c", "a", "c"])

    def test_back_up_rejoins(self) -> None:
        """
        A server marked up again takes turns again, from where it left off
        (nginx does not credit it for the picks it missed).
        """
        servers = _servers("a", "b")
        balancer = RoundRobin()
        servers[1].up = False
        self.assertEqual(_picks(balancer, servers, 2), ["a", "a"])
        servers[1].up = True
        self.assertEqual(_picks(balancer, servers, 2), ["a", "b"])

    def test_exclude(self) -> None:
        """
        An excluded server (already tried for this request) is not picked.
        """
        servers = _servers("a", "b", "c")
        picked = _picks(RoundRobin(), servers, 4, exclude=[servers[0]])
        self.assertEqual(picked, ["b", "c", "b", "c"])

    def test_all_excluded(self) -> None:
        """
        With every server excluded there is nothing to pick.
        """
        servers = _servers("a", "b")
        self.assertIsNone(RoundRobin().pick(servers, set(servers)))

    def test_all_down(self) -> None:
        """
        With every server down there is nothing to pick.
        """
        servers = _servers("a", "b")
        for server in servers:
            server.up = False
        self.assertIsNone(RoundRobin().pick(servers, ()))

    def test_no_servers(self) -> None:
        """
        An empty candidate list gives L{None}.
        """
        self.assertIsNone(RoundRobin().pick([], ()))
