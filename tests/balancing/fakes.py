"""
Fakes of what a balancing strategy reads, implementing the real protocols
(L{lbproxy.interfaces.Candidate}, L{lbproxy.interfaces.BalancedRequest}),
so that strategies are tested without pools or sockets.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Container, Sequence
from dataclasses import dataclass, field

from lbproxy.interfaces import BalancedRequest, Candidate, IBalancer


@dataclass(eq=False)
class FakeServer:
    """
    A candidate server; compared and hashed by identity, as L{Server} is.
    """

    address: str
    weight: int = 1
    up: bool = True
    active: int = 0


@dataclass
class FakeRequest:
    """
    A request with a client address, a target and headers.
    """

    client_address: bytes = b"10.1.2.3"
    target: bytes = b"/"
    headers: dict[bytes, bytes] = field(default_factory=dict)

    def header(self, name: bytes) -> bytes | None:
        return self.headers.get(name)


def servers(*weights: int) -> list[FakeServer]:
    """
    Servers C{10.0.0.1:80}, C{10.0.0.2:80} ... with the given weights.
    """
    return [FakeServer(f"10.0.0.{i}:80", weight) for i, weight in enumerate(weights, 1)]


def shares(
    balancer: IBalancer,
    candidates: Sequence[FakeServer],
    count: int,
    requests: Sequence[BalancedRequest | None] = (None,),
    exclude: Container[Candidate] = (),
) -> Counter[str]:
    """
    How many of C{count} picks went to each address (C{"-"} for none),
    cycling through C{requests}.
    """
    picked: Counter[str] = Counter()
    for i in range(count):
        server = balancer.pick(candidates, exclude, requests[i % len(requests)])
        picked["-" if server is None else server.address] += 1
    return picked
