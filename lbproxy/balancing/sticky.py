# -*- test-case-name: tests.balancing.test_sticky -*-
"""
Sticky sessions by cookie (C{--sticky-cookie NAME}), HAProxy's C{cookie
NAME insert}: lbproxy names the server that answered in a cookie of its
own, and a client that sends it back goes to that server while it is in
rotation.

The cookie holds an opaque id, never the server's address: the first 16
hex digits of a BLAKE2b hash of the pool's name and the server's scheme,
host and port.  So every lbproxy process (every worker, every restart,
every proxy in front of the same pool) gives a server the same id without
sharing anything, and a cookie survives a restart.  Like nginx Plus's
C{sticky cookie} (an MD5 of the address), it hides the address from a
glance, not from someone who hashes every address of a private network.

The cookie is C{NAME=ID; Path=/; HttpOnly}, plus C{Secure} when the client
came over TLS (HAProxy leaves C{secure} to the operator; lbproxy knows the
listener, and a cookie first set over https then stays off plain http).
It has no C{Max-Age}: a session cookie, as HAProxy's and nginx Plus's
by default.  It is set only on answers whose server the client's cookie
did not already name, and the request's own C{Cookie} header goes to the
app server unchanged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from lbproxy.balancing.hashing import cookie_value
from lbproxy.balancing.server import Server
from lbproxy.interfaces import BalancedRequest

__all__ = ["StickyCookie", "sticky_id"]


def sticky_id(pool: str, server: Server) -> bytes:
    """
    The opaque id of C{server} in pool C{pool}: the same in every process.
    """
    config = server.config
    name = f"{pool}\0{config.scheme}://{config.host}:{config.port}".encode()
    return hashlib.blake2b(name, digest_size=8).hexdigest().encode("ascii")


class StickyCookie:
    """
    A pool's sticky cookie: which server a request's cookie names, and the
    C{Set-Cookie} that names the server of an answer.

    @ivar name: the cookie's name.
    """

    __slots__ = ("name", "_cookie", "_by_id", "_ids")

    def __init__(self, name: str, pool: str, servers: Iterable[Server]) -> None:
        """
        @param name: the cookie's name (C{--sticky-cookie}).
        @param pool: the pool's name, part of every id.
        @param servers: the pool's servers that may be named.
        """
        self.name = name
        self._cookie = name.encode("ascii")
        self._ids = {server: sticky_id(pool, server) for server in servers}
        self._by_id = {ident: server for server, ident in self._ids.items()}

    def named(self, request: BalancedRequest) -> Server | None:
        """
        The server the request's cookie names, in rotation or not; L{None}
        without a cookie or for an id of no server of the pool.
        """
        value = cookie_value(request.header(b"cookie"), self._cookie)
        if value is None:
            return None
        return self._by_id.get(value)

    def set_cookie(self, server: Server, request: BalancedRequest, secure: bool) -> bytes | None:
        """
        The C{Set-Cookie} value naming C{server}, or L{None} if the
        request's cookie names it already.

        @param secure: the client came over TLS: add C{Secure}.
        """
        ident = self._ids.get(server)
        if ident is None:
            # A server the pool no longer lists (a reload in between).
            return None
        if cookie_value(request.header(b"cookie"), self._cookie) == ident:
            return None
        cookie = self._cookie + b"=" + ident + b"; Path=/; HttpOnly"
        return cookie + b"; Secure" if secure else cookie
