"""
Tests for L{lbproxy.balancing.routes}: which pool a request goes to.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from lbproxy.balancing.routes import Router, host_matches, request_host
from lbproxy.config.model import RouteConfig


class RequestHostTests(SynchronousTestCase):
    """
    L{request_host} reads the host name out of a C{Host} header.
    """

    def test_forms(self) -> None:
        """
        Lower-cased, without the port; IPv6 literals keep their brackets.
        """
        self.assertEqual(request_host(b"API.Example.com:8080"), "api.example.com")
        self.assertEqual(request_host(b"example.com"), "example.com")
        self.assertEqual(request_host(b"[::1]:8080"), "[::1]")
        self.assertEqual(request_host(None), "")


class HostMatchTests(SynchronousTestCase):
    """
    L{host_matches}: exact names and C{*.} wildcards, as nginx's
    C{server_name}.
    """

    def test_exact(self) -> None:
        """
        An exact pattern matches only that name, case-insensitively.
        """
        self.assertTrue(host_matches("API.example.com", "api.example.com"))
        self.assertFalse(host_matches("api.example.com", "www.example.com"))

    def test_wildcard(self) -> None:
        """
        C{*.example.com} matches subdomains, not C{example.com} itself nor
        names merely ending in C{example.com}.
        """
        self.assertTrue(host_matches("*.example.com", "api.example.com"))
        self.assertTrue(host_matches("*.example.com", "a.b.example.com"))
        self.assertFalse(host_matches("*.example.com", "example.com"))
        self.assertFalse(host_matches("*.example.com", "badexample.com"))


class RouterTests(SynchronousTestCase):
    """
    L{Router.route}: first match wins; no routes means the one pool.
    """

    def setUp(self) -> None:
        self.router = Router(
            [
                RouteConfig("api", host="api.example.com", path="/v2/"),
                RouteConfig("api-any", host="api.example.com"),
                RouteConfig("wild", host="*.example.com"),
                RouteConfig("static", path="/static/"),
            ],
            {"api": "API", "api-any": "API-ANY", "wild": "WILD", "static": "STATIC"},
        )

    def test_order_and_criteria(self) -> None:
        """
        Host and path must both match; the first matching route wins.
        """
        route = self.router.route
        self.assertEqual(route(b"api.example.com", b"/v2/users"), "API")
        self.assertEqual(route(b"api.example.com:443", b"/v1/users"), "API-ANY")
        self.assertEqual(route(b"www.example.com", b"/static/x.css"), "WILD")
        self.assertEqual(route(b"other.org", b"/static/x.css"), "STATIC")

    def test_no_match(self) -> None:
        """
        A request no route matches gets no pool (lbproxy answers 404).
        """
        self.assertIsNone(self.router.route(b"other.org", b"/"))
        self.assertIsNone(self.router.route(None, b"/"))

    def test_prefix_is_raw(self) -> None:
        """
        Paths are compared as sent, without decoding.
        """
        self.assertIsNone(self.router.route(b"other.org", b"/%73tatic/x"))

    def test_single_pool_without_routes(self) -> None:
        """
        With no routes, every request goes to the only pool.
        """
        router = Router([], {"default": "POOL"})
        self.assertEqual(router.route(b"anything", b"/whatever"), "POOL")
        self.assertEqual(router.route(None, b"*"), "POOL")
