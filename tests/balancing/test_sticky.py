"""
Tests for L{lbproxy.balancing.sticky}: the sticky cookie's ids and headers.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from lbproxy.balancing.server import Server
from lbproxy.balancing.sticky import StickyCookie, sticky_id
from lbproxy.config.model import ServerConfig
from tests.balancing.fakes import FakeRequest


def _servers() -> list[Server]:
    return [Server(ServerConfig("10.0.0.1", 3000)), Server(ServerConfig("10.0.0.2", 3000))]


class StickyIdTests(SynchronousTestCase):
    """
    L{sticky_id} names a server opaquely and the same in every process.
    """

    def test_opaque(self) -> None:
        """
        The id is 16 hex digits and shows nothing of the address.
        """
        ident = sticky_id("web", _servers()[0])
        self.assertEqual(len(ident), 16)
        int(ident, 16)
        for part in (b"10.0.0.1", b"3000", b"10", b"web"):
            self.assertNotIn(part, ident)

    def test_stable(self) -> None:
        """
        Another process (other L{Server} objects for the same address)
        gives the same id; another address, pool or scheme another.
        """
        self.assertEqual(sticky_id("web", _servers()[0]), sticky_id("web", _servers()[0]))
        ids = {
            sticky_id("web", _servers()[0]),
            sticky_id("web", _servers()[1]),
            sticky_id("api", _servers()[0]),
            sticky_id("web", Server(ServerConfig("10.0.0.1", 3000, "https"))),
        }
        self.assertEqual(len(ids), 4)


class StickyCookieTests(SynchronousTestCase):
    """
    L{StickyCookie} finds the server a cookie names and names a server in
    a C{Set-Cookie}.
    """

    def setUp(self) -> None:
        self.servers = _servers()
        self.sticky = StickyCookie("lbsrv", "web", self.servers)

    def request(self, cookie: bytes | None) -> FakeRequest:
        return FakeRequest(headers={b"cookie": cookie} if cookie is not None else {})

    def test_set_cookie(self) -> None:
        """
        A client without the cookie gets C{NAME=ID; Path=/; HttpOnly}.
        """
        ident = sticky_id("web", self.servers[1])
        self.assertEqual(
            self.sticky.set_cookie(self.servers[1], self.request(None), secure=False),
            b"lbsrv=" + ident + b"; Path=/; HttpOnly",
        )

    def test_secure_over_tls(self) -> None:
        """
        Over TLS the cookie is C{Secure}.
        """
        cookie = self.sticky.set_cookie(self.servers[0], self.request(None), secure=True)
        assert cookie is not None
        self.assertTrue(cookie.endswith(b"; Path=/; HttpOnly; Secure"), cookie)

    def test_round_trip(self) -> None:
        """
        The cookie set names the server; a client sending it back is not
        sent it again.
        """
        cookie = self.sticky.set_cookie(self.servers[1], self.request(None), secure=False)
        assert cookie is not None
        back = self.request(b"a=1; " + cookie.split(b";")[0])
        self.assertIs(self.sticky.named(back), self.servers[1])
        self.assertIsNone(self.sticky.set_cookie(self.servers[1], back, secure=False))

    def test_other_server_sets_anew(self) -> None:
        """
        An answer from another server than the cookie names sets the cookie
        anew.
        """
        back = self.request(b"lbsrv=" + sticky_id("web", self.servers[0]))
        cookie = self.sticky.set_cookie(self.servers[1], back, secure=False)
        assert cookie is not None
        self.assertIn(sticky_id("web", self.servers[1]), cookie)

    def test_unknown_ids(self) -> None:
        """
        No cookie, another cookie, or an id of no server of the pool (an
        address, another pool's id): no server.
        """
        for cookie in (None, b"other=1", b"lbsrv=10.0.0.1:3000", b"lbsrv=" + b"0" * 16):
            self.assertIsNone(self.sticky.named(self.request(cookie)))
        other = sticky_id("api", self.servers[0])
        self.assertIsNone(self.sticky.named(self.request(b"lbsrv=" + other)))

    def test_unknown_server(self) -> None:
        """
        A server the pool does not list (a reload in between) gets no
        cookie.
        """
        stranger = Server(ServerConfig("10.0.0.9", 1))
        self.assertIsNone(self.sticky.set_cookie(stranger, self.request(None), secure=False))
