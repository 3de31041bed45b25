"""
Tests for L{lbproxy.balancing.hashing}: the hash ring, request keys and
the cookie reader.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from lbproxy.balancing.hashing import HashRing, cookie_value, request_key, stable_hash
from tests.balancing.fakes import FakeRequest, servers


class StableHashTests(SynchronousTestCase):
    """
    L{stable_hash} is the same in every process.
    """

    def test_known_value(self) -> None:
        """
        The hash of a given input is fixed (BLAKE2b, not Python's salted
        C{hash}), so that workers and restarts place keys alike.
        """
        self.assertEqual(stable_hash(b"10.0.0.1:80#0"), stable_hash(b"10.0.0.1:80#0"))
        self.assertEqual(stable_hash(b"abc"), 0xD8BB14D833D59559)

    def test_64_bits(self) -> None:
        """
        Hashes spread over 64 bits.
        """
        values = [stable_hash(b"%d" % i) for i in range(100)]
        self.assertTrue(all(0 <= v < 2**64 for v in values))
        self.assertGreater(max(values), 2**63)


class HashRingTests(SynchronousTestCase):
    """
    L{HashRing} finds the first available server at or after a hash.
    """

    def test_points_by_weight(self) -> None:
        """
        A server of weight 3 has three times the points of one of weight 1.
        """
        heavy, light = candidates = servers(3, 1)
        ring = HashRing(candidates, points=10)
        owners = [ring.find(stable_hash(b"%d" % i), ()) for i in range(4000)]
        self.assertTrue(2600 < owners.count(heavy) < 3400, owners.count(heavy))
        self.assertEqual(owners.count(heavy) + owners.count(light), 4000)

    def test_wraps_around(self) -> None:
        """
        A hash after the last point belongs to the first point's server.
        """
        candidates = servers(1, 1)
        ring = HashRing(candidates, points=1)
        self.assertIs(ring.find(2**64 - 1, ()), ring.find(0, ()))

    def test_passes_over_unavailable(self) -> None:
        """
        Servers down or excluded are passed over; with all of them
        unavailable (past the walk's patience) there is no server.
        """
        a, b, c = candidates = servers(1, 1, 1)
        ring = HashRing(candidates, points=50)
        a.up = False
        owners = {ring.find(stable_hash(b"%d" % i), [b]) for i in range(200)}
        self.assertEqual(owners, {c})
        c.up = False
        self.assertIsNone(ring.find(12345, [b]))

    def test_empty(self) -> None:
        """
        A ring of no server finds none.
        """
        self.assertIsNone(HashRing([]).find(1, ()))


class CookieValueTests(SynchronousTestCase):
    """
    L{cookie_value} reads one cookie of a C{Cookie} header.
    """

    def test_found(self) -> None:
        """
        The value of the named cookie, wherever it is in the list.
        """
        self.assertEqual(cookie_value(b"a=1; lb=xyz; b=2", b"lb"), b"xyz")
        self.assertEqual(cookie_value(b"lb=xyz", b"lb"), b"xyz")
        self.assertEqual(cookie_value(b"a=1;lb=", b"lb"), b"")

    def test_not_found(self) -> None:
        """
        No header, another cookie whose name contains it, or a pair without
        C{=}: L{None}.
        """
        self.assertIsNone(cookie_value(None, b"lb"))
        self.assertIsNone(cookie_value(b"xlb=1; lbx=2", b"lb"))
        self.assertIsNone(cookie_value(b"lb", b"lb"))


class RequestKeyTests(SynchronousTestCase):
    """
    L{request_key} reads what C{--hash-key} names.
    """

    def test_kinds(self) -> None:
        """
        C{ip}, C{path}, C{header:NAME} and C{cookie:NAME}.
        """
        request = FakeRequest(
            client_address=b"10.0.0.7",
            target=b"/a/b?c=d",
            headers={b"x-user": b"ann", b"cookie": b"sid=42"},
        )
        self.assertEqual(request_key("ip")(request), b"10.0.0.7")
        self.assertEqual(request_key("path")(request), b"/a/b")
        self.assertEqual(request_key("header:X-User")(request), b"ann")
        self.assertEqual(request_key("cookie:sid")(request), b"42")
        self.assertIsNone(request_key("header:X-Other")(request))

    def test_unknown(self) -> None:
        """
        Any other spelling is a L{ValueError}.
        """
        for spec in ("host", "header:", "ip:x", ""):
            self.assertRaises(ValueError, request_key, spec)
