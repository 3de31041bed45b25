# -*- test-case-name: tests.balancing.test_hashing -*-
"""
Consistent hashing: the ring behind C{--balance hash} (L{HashRing}), the
request keys it hashes (L{request_key}), and the cookie reader that
sticky sessions share (L{cookie_value}).

A ring, not Maglev: every server gets L{POINTS_PER_WEIGHT} points per unit
of weight on a circle of 64-bit hashes, placed by hashing its address, and
a key goes to the owner of the first point at or after the key's hash,
found by bisection.  Two properties follow that Maglev's lookup table would
only approximate, and both are the issue's:

  - a server out of rotation (down, ejected, already tried, at its
    max-conns) is passed over at lookup: its keys go to the next server on
    the circle, no other key moves, nothing is rebuilt, and its keys come
    back with it;
  - removing one of N servers from the pool moves only its own keys,
    about 1/N of them.

Maglev would give an evener spread, but it must rebuild its whole table
(65537 entries) whenever a server changes state, a stall in a
single-threaded proxy, and a rebuild moves some keys of other servers too.
Points are placed by the server's address alone, so every process (every
worker, every restart, every lbproxy in front of the same servers) agrees.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Callable, Container, Sequence

from lbproxy.interfaces import BalancedRequest, Candidate

__all__ = [
    "POINTS_PER_WEIGHT",
    "HashRing",
    "KeyFunction",
    "cookie_value",
    "request_key",
    "stable_hash",
]

#: Points on the ring per unit of weight.  nginx's C{hash ... consistent}
#: uses 160 (ketama's); more points even out the arcs (a server's share
#: varies by about 1/sqrt(points)), at a few kilobytes per server and a
#: build on each configuration change.  400 keeps two servers weighted 3:1
#: within about 1% of 75%.
POINTS_PER_WEIGHT = 400

#: What a strategy reads of a request to hash it; L{None} or empty when
#: the request has no such key.
KeyFunction = Callable[[BalancedRequest], bytes | None]


def stable_hash(data: bytes) -> int:
    """
    A 64-bit hash of C{data} that every process computes alike (Python's
    own C{hash} of bytes is salted per process).
    """
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class HashRing:
    """
    Servers placed on a circle of 64-bit hashes; see the module docstring.

    @ivar servers: the servers it was built from (a strategy keeps one ring
        per candidate list, and rebuilds when the list changes).
    """

    __slots__ = ("servers", "_hashes", "_owners")

    def __init__(self, servers: Sequence[Candidate], points: int = POINTS_PER_WEIGHT) -> None:
        """
        @param servers: the servers, up or not: those out of rotation are
            passed over at lookup, so that their keys come back with them.
        @param points: points per unit of weight.
        """
        self.servers = servers
        placed = []
        for index, server in enumerate(servers):
            name = server.address.encode("utf-8")
            for point in range(points * server.weight):
                # A server's points do not depend on the others', so adding
                # or removing one server moves no other server's points.
                placed.append((stable_hash(b"%s#%d" % (name, point)), index))
        placed.sort()
        self._hashes = [position for position, _ in placed]
        self._owners = [servers[index] for _, index in placed]

    def find(self, key_hash: int, exclude: Container[Candidate]) -> Candidate | None:
        """
        The server owning C{key_hash}: the owner of the first point at or
        after it that is up and not excluded.

        @param key_hash: the key's L{stable_hash}.
        @param exclude: servers to pass over (see L{IBalancer.pick}).
        @return: the server, or L{None} if every one is down or excluded.
        """
        owners = self._owners
        count = len(owners)
        if not count:
            return None
        start = bisect_left(self._hashes, key_hash)
        # Runs of points of unavailable servers are short unless nearly all
        # are unavailable: walk a little, then make sure one is available
        # before walking the whole ring.
        patience = 2 * len(self.servers)
        for step in range(count):
            server = owners[(start + step) % count]
            if server.up and server not in exclude:
                return server
            if step == patience and not any(s.up and s not in exclude for s in self.servers):
                return None
        return None


def cookie_value(header: bytes | None, name: bytes) -> bytes | None:
    """
    The value of cookie C{name} in a C{Cookie} header (RFC 6265 section
    5.4: C{a=1; b=2}), or L{None}.
    """
    if not header or name not in header:
        return None
    for pair in header.split(b";"):
        key, equals, value = pair.strip().partition(b"=")
        if equals and key == name:
            return value
    return None


def request_key(spec: str) -> KeyFunction:
    """
    The key C{--hash-key} names: C{ip} (the client's address), C{path}
    (the target without its query), C{header:NAME} or C{cookie:NAME}.

    @raise ValueError: for any other spelling (the configuration checks it
        first).
    """
    kind, _, name = spec.partition(":")
    if kind == "ip" and not name:
        return _client_address
    if kind == "path" and not name:
        return _path
    if kind == "header" and name:
        header = name.lower().encode("ascii")

        def header_value(request: BalancedRequest) -> bytes | None:
            return request.header(header)

        return header_value
    if kind == "cookie" and name:
        cookie = name.encode("ascii")

        def cookie_key(request: BalancedRequest) -> bytes | None:
            return cookie_value(request.header(b"cookie"), cookie)

        return cookie_key
    raise ValueError(f"unknown hash key {spec!r}")


def _client_address(request: BalancedRequest) -> bytes | None:
    return request.client_address


def _path(request: BalancedRequest) -> bytes | None:
    return request.target.partition(b"?")[0]
