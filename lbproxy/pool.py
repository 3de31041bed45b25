# -*- test-case-name: tests.test_pool -*-
"""
Upstream pools and their servers' run-time state.

A L{Pool} is nginx's C{upstream} block: named servers and the balancer that
chooses among them.  A L{Server} is one app server's state as lbproxy sees
it.  Nothing here does I/O; the connections to a server live in
L{lbproxy.upstream}.
"""

from __future__ import annotations

from collections.abc import Container

from lbproxy.config import PoolConfig, ServerConfig
from lbproxy.interfaces import IBalancer

__all__ = ["Pool", "Server"]


class Server:
    """
    One upstream server in a pool.

    @ivar config: what the configuration says about it.
    @ivar address: C{host:port}, for logs and error messages.
    @ivar up: whether it may take requests (health checks change this).
    @ivar weight: its share of requests relative to its pool's others.
    """

    __slots__ = ("config", "address", "up", "weight")

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.address = config.address
        self.up = True
        self.weight = config.weight

    def __repr__(self) -> str:
        return f"<Server {self.address} {'up' if self.up else 'down'}>"


class Pool:
    """
    A named group of servers and the balancer that picks among them.

    Backup servers (C{backup=True}) are candidates only while no primary
    server can be picked, as nginx's C{backup} parameter.
    """

    def __init__(self, config: PoolConfig, balancer: IBalancer) -> None:
        """
        @param config: the pool's configuration.
        @param balancer: the strategy; one instance per pool, as it keeps
            the rotation state.
        """
        self.config = config
        self.name = config.name
        self.servers: tuple[Server, ...] = tuple(Server(s) for s in config.servers)
        self._primary = tuple(s for s in self.servers if not s.config.backup)
        self._backup = tuple(s for s in self.servers if s.config.backup)
        self._balancer = balancer

    def pick(self, exclude: Container[Server] = ()) -> Server | None:
        """
        Choose the server for the next request.

        @param exclude: servers already tried for this request.
        @return: a server, or L{None} if none is up and untried.
        """
        server = self._balancer.pick(self._primary, exclude)
        if server is None and self._backup:
            server = self._balancer.pick(self._backup, exclude)
        return server
