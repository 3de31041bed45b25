# -*- test-case-name: tests.balancing.test_routes -*-
"""
Routing: which pool a request goes to, by its C{Host} and path.

Routes are tried in order and the first match wins, like a list of nginx
C{location} blocks under C{server_name}s.  With no routes at all, every
request goes to the single pool (the command-line case).  A request no
route matches gets C{404} from lbproxy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Generic, TypeVar

from lbproxy.config.model import RouteConfig

__all__ = ["Router", "host_matches", "request_host"]

PoolT = TypeVar("PoolT")


def request_host(host_header: bytes | None) -> str:
    """
    The host name a C{Host} header names: lower-cased, without its port.

    @param host_header: the header's value, or L{None} if there was none.
    @return: e.g. C{"api.example.com"}, or C{""}.
    """
    if not host_header:
        return ""
    host = host_header.decode("latin-1").strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if ":" in host else host


def host_matches(pattern: str, host: str) -> bool:
    """
    Whether C{host} matches a route's C{host}: exactly, or C{*.example.com}
    for any name ending in C{.example.com} (not C{example.com} itself, as
    nginx's C{server_name *.example.com}).
    """
    pattern = pattern.lower()
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


class Router(Generic[PoolT]):
    """
    Chooses a pool for each request.
    """

    def __init__(self, routes: Sequence[RouteConfig], pools: Mapping[str, PoolT]) -> None:
        """
        @param routes: the routes, in order; if empty, C{pools} must hold
            exactly one pool, which takes every request.
        @param pools: the pools by name.
        """
        self.pools = dict(pools)
        self._routes = [(route, self.pools[route.upstream]) for route in routes]
        #: The one pool that takes every request when there are no routes.
        self.only: PoolT | None = next(iter(self.pools.values())) if not routes else None

    def route(self, host_header: bytes | None, path: bytes) -> PoolT | None:
        """
        The pool for a request, or L{None} if no route matches.

        @param host_header: the request's C{Host} header.
        @param path: the request target (its path is compared).
        """
        if self.only is not None:
            return self.only
        host = request_host(host_header)
        text = path.decode("latin-1")
        for route, pool in self._routes:
            if route.host is not None and not host_matches(route.host, host):
                continue
            if route.path is not None and not text.startswith(route.path):
                continue
            return pool
        return None
