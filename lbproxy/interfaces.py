"""
The contracts several lbproxy classes implement.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from typing import TYPE_CHECKING

from zope.interface import Interface

if TYPE_CHECKING:
    from lbproxy.balancing.pool import Server

__all__ = ["IBalancer"]


class IBalancer(Interface):
    """
    A load-balancing strategy: chooses one server of a pool per request.

    Implementations keep whatever state they need (a rotation position,
    weights) and never do I/O.
    """

    def pick(servers: Sequence[Server], exclude: Container[Server]) -> Server | None:
        """
        Choose the server for the next request.

        @param servers: the pool's candidates, in configuration order;
            servers that are not C{up} must not be chosen.
        @param exclude: servers already tried for this request.
        @return: the chosen server, or L{None} if no candidate is left.
        """
