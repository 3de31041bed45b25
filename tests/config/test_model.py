"""
Tests for L{lbproxy.config.model}: parsing upstream addresses and durations, and
validating the configuration records.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from lbproxy.config.model import (
    Config,
    PoolConfig,
    ServerConfig,
    parse_duration,
    parse_server,
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


class ParseDurationTests(SynchronousTestCase):
    """
    L{parse_duration} reads a positive, finite number of seconds.
    """

    def test_whole(self) -> None:
        """
        An integer is that many seconds.
        """
        self.assertEqual(parse_duration("5", "--read-timeout"), 5.0)

    def test_fraction(self) -> None:
        """
        Fractions are allowed.
        """
        self.assertEqual(parse_duration("0.25", "--read-timeout"), 0.25)

    def test_not_number(self) -> None:
        """
        Text that is not a number is rejected, the message naming the option
        and the value.
        """
        message = str(self.assertRaises(ConfigError, parse_duration, "abc", "--read-timeout"))
        self.assertEqual(message, "--read-timeout 'abc' is not a number of seconds")

    def test_not_positive(self) -> None:
        """
        Zero and negative numbers, infinity and NaN are rejected, the message
        naming the option and the value.
        """
        for text in ("0", "-1", "inf", "nan", "1e400"):
            message = str(self.assertRaises(ConfigError, parse_duration, text, "--x"))
            self.assertEqual(message, f"--x {text!r} must be a positive number of seconds")


class RecordTests(SynchronousTestCase):
    """
    The configuration records validate themselves on construction.
    """

    def _pools(self) -> tuple[PoolConfig, ...]:
        return (PoolConfig("default", (ServerConfig("a", 1),)),)

    def test_defaults(self) -> None:
        """
        L{Config}'s defaults are lbproxy's documented ones.
        """
        config = Config(pools=self._pools())
        self.assertEqual(
            (
                config.listen,
                config.connect_timeout,
                config.read_timeout,
                config.client_timeout,
                config.upstream_keepalive,
                config.upstream_idle_timeout,
                config.access_log,
                config.demo,
            ),
            (("tcp:8080",), 5.0, 60.0, 60.0, 32, 4.0, "-", False),
        )

    def test_no_pools(self) -> None:
        """
        A configuration without pools is rejected.
        """
        message = str(self.assertRaises(ConfigError, Config, pools=()))
        self.assertIn("--upstream", message)

    def test_no_listen(self) -> None:
        """
        A configuration listening nowhere is rejected.
        """
        message = str(self.assertRaises(ConfigError, Config, pools=self._pools(), listen=()))
        self.assertIn("--listen", message)

    def test_negative_keepalive(self) -> None:
        """
        A negative upstream keepalive is rejected, the message naming it.
        """
        message = str(
            self.assertRaises(ConfigError, Config, pools=self._pools(), upstream_keepalive=-1)
        )
        self.assertEqual(message, "upstream keepalive -1 must be 0 or more")

    def test_zero_keepalive(self) -> None:
        """
        An upstream keepalive of 0 (close after each use) is allowed.
        """
        self.assertEqual(Config(pools=self._pools(), upstream_keepalive=0).upstream_keepalive, 0)

    def test_empty_pool(self) -> None:
        """
        A pool without servers is rejected, the message naming it.
        """
        message = str(self.assertRaises(ConfigError, PoolConfig, "api", ()))
        self.assertEqual(message, "upstream pool 'api' has no servers")

    def test_server_weight(self) -> None:
        """
        A server weight below 1 is rejected.
        """
        message = str(self.assertRaises(ConfigError, ServerConfig, "a", 1, weight=0))
        self.assertEqual(message, "upstream weight 0 must be at least 1")

    def test_server_empty_host(self) -> None:
        """
        A server with an empty host is rejected.
        """
        self.assertRaises(ConfigError, ServerConfig, "", 1)

    def test_frozen(self) -> None:
        """
        Configuration records cannot be changed after construction.
        """
        server = ServerConfig("a", 1)
        self.assertRaises(AttributeError, setattr, server, "port", 2)
