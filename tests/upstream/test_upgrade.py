"""
Tests for L{lbproxy.upstream.upgrade}: what a request offers to switch to,
and whether a C{101} takes it.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from lbproxy.upstream.upgrade import protocol_names, switch_refusal, upgrade_offer

_WEBSOCKET_101 = [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")]


class OfferTests(SynchronousTestCase):
    """
    L{upgrade_offer} is the C{Upgrade} value to forward, or L{None}.
    """

    def test_websocket(self) -> None:
        """
        A WebSocket handshake offers C{websocket}, as sent.
        """
        headers = [(b"Host", b"h"), (b"upgrade", b"WebSocket"), (b"Sec-WebSocket-Key", b"k")]
        self.assertEqual(upgrade_offer(headers), b"WebSocket")

    def test_several_headers_joined(self) -> None:
        """
        Several C{Upgrade} headers are one list (RFC 9110 section 5.3).
        """
        headers = [(b"Upgrade", b"foo/2"), (b"Upgrade", b"bar")]
        self.assertEqual(upgrade_offer(headers), b"foo/2, bar")

    def test_none(self) -> None:
        """
        No C{Upgrade} header, or one that lists nothing: no offer.
        """
        self.assertIsNone(upgrade_offer([(b"Host", b"h")]))
        self.assertIsNone(upgrade_offer([(b"Upgrade", b" , ")]))

    def test_h2c_never(self) -> None:
        """
        C{h2c}, alone or beside another protocol, in any case, is never
        offered (h2c smuggling).
        """
        for value in (b"h2c", b"H2C", b"websocket, h2c", b"h2c/1"):
            self.assertIsNone(upgrade_offer([(b"Upgrade", value)]), value)


class SwitchTests(SynchronousTestCase):
    """
    L{switch_refusal} says why a C{101} cannot open a tunnel.
    """

    def test_good(self) -> None:
        """
        A 101 to an offered protocol, with C{Upgrade} and C{Connection:
        upgrade} in any case, is good.
        """
        self.assertIsNone(switch_refusal(b"websocket", _WEBSOCKET_101))
        self.assertIsNone(
            switch_refusal(
                b"foo, WebSocket", [(b"upgrade", b"websocket/13"), (b"CONNECTION", b"x, upgrade")]
            )
        )

    def test_not_asked(self) -> None:
        """
        A 101 to a plain request is refused.
        """
        self.assertEqual(
            switch_refusal(None, _WEBSOCKET_101),
            "101 Switching Protocols to a request that did not ask to upgrade",
        )

    def test_headers_missing(self) -> None:
        """
        A 101 without C{Upgrade}, or without C{Connection: upgrade}, is
        refused.
        """
        for headers in ([(b"Connection", b"upgrade")], [(b"Upgrade", b"websocket")], []):
            self.assertEqual(
                switch_refusal(b"websocket", headers),
                "101 Switching Protocols without Upgrade and Connection: upgrade",
            )

    def test_other_protocol(self) -> None:
        """
        A switch to a protocol the client did not offer (C{h2c} to a
        WebSocket request) is refused.
        """
        self.assertEqual(
            switch_refusal(b"websocket", [(b"Upgrade", b"h2c"), (b"Connection", b"upgrade")]),
            "101 Switching Protocols to a protocol the client did not ask for",
        )

    def test_protocol_names(self) -> None:
        """
        Names are lower-cased, without versions or blanks.
        """
        self.assertEqual(
            protocol_names([b"WebSocket, foo/2 ,", b" Bar"]), {b"websocket", b"foo", b"bar"}
        )
