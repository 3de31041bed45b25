# -*- test-case-name: tests.balancing.test_strategies -*-
"""
Load-balancing strategies, one small class each, behind L{IBalancer}.
"""

from __future__ import annotations

from collections.abc import Container, Sequence

from zope.interface import implementer

from lbproxy.interfaces import Candidate, IBalancer

__all__ = ["RoundRobin"]


@implementer(IBalancer)
class RoundRobin:
    """
    nginx's default: smooth weighted round robin.

    With equal weights the servers take turns in configuration order
    (A, B, A, B, ...).  With weights, each server gets its share spread out
    evenly rather than in bursts (weights 5, 1, 1 give A A B A C A A), the
    algorithm of nginx's C{ngx_http_upstream_get_peer}: every candidate's
    current weight grows by its weight, the largest wins and gives back the
    total.
    """

    def __init__(self) -> None:
        self._current: dict[Candidate, int] = {}

    def pick(self, servers: Sequence[Candidate], exclude: Container[Candidate]) -> Candidate | None:
        """
        Choose the next server in rotation; see L{IBalancer.pick}.
        """
        current = self._current
        best: Candidate | None = None
        best_weight = 0
        total = 0
        for server in servers:
            if not server.up or server in exclude:
                continue
            weight = server.weight
            total += weight
            mine = current.get(server, 0) + weight
            current[server] = mine
            if best is None or mine > best_weight:
                best, best_weight = server, mine
        if best is not None:
            current[best] = best_weight - total
        return best
