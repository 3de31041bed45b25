"""
Tests for L{lbproxy.config.servers}: upstream addresses.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from lbproxy.config.servers import (
    ServerConfig,
    parse_server,
    parse_server_entry,
    parse_server_list,
)
from lbproxy.errors import ConfigError


class ParseServerTests(SynchronousTestCase):
    """
    L{parse_server} reads one upstream address.
    """

    def test_host_port(self) -> None:
        """
        C{host:port} gives an http server.
        """
        self.assertEqual(parse_server("localhost:3000"), ServerConfig("localhost", 3000, "http"))

    def test_http_url(self) -> None:
        """
        C{http://host:port} is the same server.
        """
        self.assertEqual(parse_server("http://localhost:3000"), ServerConfig("localhost", 3000))

    def test_trailing_slash(self) -> None:
        """
        A trailing C{/} is allowed.
        """
        self.assertEqual(parse_server("http://localhost:3000/"), ServerConfig("localhost", 3000))

    def test_ipv6(self) -> None:
        """
        C{[::1]:3000} gives host C{::1}, without brackets.
        """
        self.assertEqual(parse_server("[::1]:3000"), ServerConfig("::1", 3000))

    def test_ipv6_address(self) -> None:
        """
        An IPv6 server's address has the brackets back.
        """
        self.assertEqual(parse_server("[::1]:3000").address, "[::1]:3000")

    def test_ipv4(self) -> None:
        """
        An IPv4 literal is a host.
        """
        server = parse_server("127.0.0.1:80")
        self.assertEqual((server, server.address), (ServerConfig("127.0.0.1", 80), "127.0.0.1:80"))

    def test_surrounding_space(self) -> None:
        """
        Spaces around the address are ignored.
        """
        self.assertEqual(parse_server(" localhost:3000 "), ServerConfig("localhost", 3000))

    def assertRejected(self, text: str, *fragments: str) -> None:
        """
        L{parse_server} raises L{ConfigError} for C{text}, with a one-line
        message containing C{repr(text)} and each of C{fragments}.
        """
        message = str(self.assertRaises(ConfigError, parse_server, text))
        self.assertNotIn("\n", message)
        for fragment in (repr(text), *fragments):
            self.assertIn(fragment, message)

    def test_no_port(self) -> None:
        """
        A host without a port is rejected.
        """
        self.assertRejected("localhost", "HOST:PORT")

    def test_no_host(self) -> None:
        """
        A port without a host is rejected.
        """
        self.assertRejected(":3000", "no host")

    def test_port_zero(self) -> None:
        """
        Port 0 is rejected, the message naming the address and the range.
        """
        self.assertRejected("localhost:0", "1-65535")

    def test_port_too_large(self) -> None:
        """
        A port above 65535 is rejected.
        """
        self.assertRejected("localhost:70000", "out of range")

    def test_port_not_number(self) -> None:
        """
        A port that is not a number is rejected.
        """
        self.assertRejected("localhost:abc", "'abc'")

    def test_https(self) -> None:
        """
        C{https://host:port} is a TLS upstream.
        """
        self.assertEqual(parse_server("https://x:1"), ServerConfig("x", 1, scheme="https"))

    def test_other_scheme(self) -> None:
        """
        Schemes other than C{http} and C{https} are rejected.
        """
        self.assertRejected("ftp://x:1", "'ftp'", "not supported")

    def test_path(self) -> None:
        """
        A path other than C{/} is rejected.
        """
        self.assertRejected("http://x:1/path", "without a path")

    def test_query(self) -> None:
        """
        A query string is rejected.
        """
        self.assertRejected("http://x:1/?a=b", "without a path")

    def test_user_info(self) -> None:
        """
        User info is rejected.
        """
        self.assertRejected("http://u:p@x:1", "user info")

    def test_empty(self) -> None:
        """
        An empty or blank address is rejected.
        """
        for text in ("", "  "):
            message = str(self.assertRaises(ConfigError, parse_server, text))
            self.assertEqual(message, "empty upstream address")


class ParseServerListTests(SynchronousTestCase):
    """
    L{parse_server_list} reads comma-separated upstream addresses.
    """

    def test_order(self) -> None:
        """
        The servers come back in the order given.
        """
        self.assertEqual(parse_server_list("a:1,b:2"), (ServerConfig("a", 1), ServerConfig("b", 2)))

    def test_empty_items_skipped(self) -> None:
        """
        Empty items (a doubled or trailing comma) are skipped.
        """
        self.assertEqual(
            parse_server_list("a:1,,b:2,"), (ServerConfig("a", 1), ServerConfig("b", 2))
        )

    def test_empty_list(self) -> None:
        """
        A list without any address is rejected.
        """
        message = str(self.assertRaises(ConfigError, parse_server_list, " , "))
        self.assertEqual(message, "bad upstream list ' , ': no addresses")

    def test_bad_item(self) -> None:
        """
        One bad address rejects the list, the message naming it.
        """
        message = str(self.assertRaises(ConfigError, parse_server_list, "a:1,nope,b:2"))
        self.assertIn("'nope'", message)


class ServerEntryTests(SynchronousTestCase):
    """
    L{parse_server_entry} reads an address and nginx-like parameters.
    """

    def test_plain(self) -> None:
        """
        An address alone is the server with the defaults.
        """
        self.assertEqual(parse_server_entry(" a:1 "), ServerConfig("a", 1))

    def test_parameters(self) -> None:
        """
        C{weight=N}, C{max-conns=N}, C{backup} and C{down}, in any order.
        """
        self.assertEqual(
            parse_server_entry("https://a:1 max-conns=10  weight=3 backup down"),
            ServerConfig("a", 1, "https", weight=3, backup=True, max_conns=10, down=True),
        )

    def test_bad_parameters(self) -> None:
        """
        A wrong value or an unknown parameter names the entry and itself.
        """
        cases = {
            "a:1 weight=0": "weight takes a whole number, 1 or more, got '0'",
            "a:1 max-conns=-1": "max-conns takes a whole number, 0 or more, got '-1'",
            "a:1 max-conns=\u00b2": "max-conns takes a whole number",
            "a:1 max_conns=5": "unknown parameter 'max_conns=5'",
            "a:1 backup=1": "unknown parameter 'backup=1'",
            "a:1 weight": "unknown parameter 'weight'",
        }
        for text, message in cases.items():
            error = self.assertRaises(ConfigError, parse_server_entry, text)
            self.assertIn(message, str(error))
            self.assertIn(repr(text), str(error))

    def test_bad_address(self) -> None:
        """
        The address is checked as L{parse_server} does.
        """
        self.assertRaises(ConfigError, parse_server_entry, "a weight=2")
        self.assertRaises(ConfigError, parse_server_entry, "   ")

    def test_list(self) -> None:
        """
        L{parse_server_list} takes entries with parameters.
        """
        self.assertEqual(
            parse_server_list("a:1 weight=2,b:2 down"),
            (ServerConfig("a", 1, weight=2), ServerConfig("b", 2, down=True)),
        )

    def test_max_conns_checked(self) -> None:
        """
        L{ServerConfig} refuses a negative C{max_conns}.
        """
        self.assertRaises(ConfigError, ServerConfig, "a", 1, max_conns=-1)
