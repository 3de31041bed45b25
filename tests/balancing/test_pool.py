"""
Tests for L{lbproxy.balancing.pool}: servers' state and the pool's primary/backup choice.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lbproxy.balancing.pool import Pool, Server
from lbproxy.balancing.strategies import RoundRobin
from lbproxy.config.model import PoolConfig, ServerConfig


def _pool(*servers: ServerConfig) -> Pool:
    """
    A pool named C{"default"} of C{servers}, balanced round robin.
    """
    return Pool(PoolConfig("default", servers), RoundRobin(), Clock())


def _hosts(pool: Pool, count: int, exclude: tuple[Server, ...] = ()) -> list[str | None]:
    """
    The hosts of C{count} successive picks from C{pool} (L{None}: no pick).
    """
    hosts: list[str | None] = []
    for _ in range(count):
        server = pool.pick(exclude)
        hosts.append(None if server is None else server.config.host)
    return hosts


class ServerTests(SynchronousTestCase):
    """
    L{Server} starts up and shows its address.
    """

    def test_address(self) -> None:
        """
        C{address} is the configuration's C{host:port}.
        """
        self.assertEqual(Server(ServerConfig("localhost", 3000)).address, "localhost:3000")

    def test_address_ipv6(self) -> None:
        """
        An IPv6 server's C{address} puts brackets around the host.
        """
        self.assertEqual(Server(ServerConfig("::1", 3000)).address, "[::1]:3000")

    def test_initial_state(self) -> None:
        """
        A new server is up and has its configured weight.
        """
        server = Server(ServerConfig("a", 1, weight=3))
        self.assertEqual((server.up, server.weight), (True, 3))

    def test_repr_up(self) -> None:
        """
        The repr shows the address and C{up}.
        """
        self.assertEqual(repr(Server(ServerConfig("a", 1))), "<Server a:1 up>")

    def test_repr_down(self) -> None:
        """
        The repr of a server that is not up says C{down}.
        """
        server = Server(ServerConfig("a", 1))
        server.up = False
        self.assertEqual(repr(server), "<Server a:1 down>")


class PoolTests(SynchronousTestCase):
    """
    L{Pool.pick} balances among primary servers and falls back to backups.
    """

    def test_servers_in_order(self) -> None:
        """
        C{servers} holds a L{Server} per configured server, in order, and the
        pool takes its configuration's name.
        """
        pool = _pool(ServerConfig("a", 1), ServerConfig("b", 2, backup=True))
        self.assertEqual(
            (pool.name, [s.address for s in pool.servers]), ("default", ["a:1", "b:2"])
        )

    def test_primaries_take_turns(self) -> None:
        """
        Primary servers take turns.
        """
        pool = _pool(ServerConfig("a", 1), ServerConfig("b", 1))
        self.assertEqual(_hosts(pool, 4), ["a", "b", "a", "b"])

    def test_backup_unused_while_primary_up(self) -> None:
        """
        A backup server is not picked while a primary server can be.
        """
        pool = _pool(ServerConfig("a", 1), ServerConfig("z", 1, backup=True))
        self.assertEqual(_hosts(pool, 3), ["a", "a", "a"])

    def test_backup_when_primaries_down(self) -> None:
        """
        With every primary down, backups take turns.
        """
        pool = _pool(
            ServerConfig("a", 1),
            ServerConfig("y", 1, backup=True),
            ServerConfig("z", 1, backup=True),
        )
        pool.servers[0].up = False
        self.assertEqual(_hosts(pool, 3), ["y", "z", "y"])

    def test_backup_when_primaries_excluded(self) -> None:
        """
        With every primary already tried for this request, a backup is picked.
        """
        pool = _pool(ServerConfig("a", 1), ServerConfig("z", 1, backup=True))
        self.assertEqual(_hosts(pool, 1, exclude=(pool.servers[0],)), ["z"])

    def test_primary_back_up(self) -> None:
        """
        Once a primary is up again, backups are no longer picked.
        """
        pool = _pool(ServerConfig("a", 1), ServerConfig("z", 1, backup=True))
        pool.servers[0].up = False
        self.assertEqual(_hosts(pool, 1), ["z"])
        pool.servers[0].up = True
        self.assertEqual(_hosts(pool, 2), ["a", "a"])

    def test_exclude(self) -> None:
        """
        An excluded primary is skipped while another primary can be picked.
        """
        pool = _pool(ServerConfig("a", 1), ServerConfig("b", 1))
        self.assertEqual(_hosts(pool, 2, exclude=(pool.servers[0],)), ["b", "b"])

    def test_nothing_left(self) -> None:
        """
        With every server, backups included, down or excluded, there is no
        pick.
        """
        pool = _pool(ServerConfig("a", 1), ServerConfig("z", 1, backup=True))
        pool.servers[0].up = False
        self.assertEqual(_hosts(pool, 1, exclude=(pool.servers[1],)), [None])

    def test_no_backups_nothing_left(self) -> None:
        """
        A pool without backups gives no pick once its primaries are down.
        """
        pool = _pool(ServerConfig("a", 1))
        pool.servers[0].up = False
        self.assertIsNone(pool.pick())
