"""
Tests for L{lbproxy.config.dns}: DNS sources of servers, on the command line
and in the file, and the C{resolver} and C{dns-refresh} options.
"""

from __future__ import annotations

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from lbproxy.config.commandline import Options
from lbproxy.config.dns import (
    DnsSource,
    is_dns_address,
    parse_dns_source,
    parse_resolver,
    parse_upstream,
    parse_upstream_list,
)
from lbproxy.config.file import ConfigFileError, parse_config
from lbproxy.config.model import PoolConfig
from lbproxy.config.servers import ServerConfig
from lbproxy.errors import ConfigError


class ParseDnsSourceTests(SynchronousTestCase):
    """
    L{parse_dns_source} reads C{dns+a://} and C{dns+srv://} addresses.
    """

    def test_a(self) -> None:
        """
        C{dns+a://NAME:PORT} looks up A and AAAA records, servers on C{PORT}.
        """
        self.assertEqual(
            parse_dns_source("dns+a://app.internal:3000"), DnsSource("a", "app.internal", 3000)
        )

    def test_srv(self) -> None:
        """
        C{dns+srv://NAME} looks up SRV records, which give the ports.
        """
        self.assertEqual(
            parse_dns_source("dns+srv://_web._tcp.service.consul"),
            DnsSource("srv", "_web._tcp.service.consul"),
        )

    def test_https(self) -> None:
        """
        C{https+dns+a://} speaks TLS to the servers found.
        """
        source = parse_dns_source("https+dns+a://app.internal:443")
        self.assertEqual((source.kind, source.scheme), ("a", "https"))

    def test_normalised(self) -> None:
        """
        The name is lower case, without its trailing dot.
        """
        self.assertEqual(parse_dns_source("DNS+A://App.Internal.:80").name, "app.internal")

    def test_a_needs_port(self) -> None:
        """
        C{dns+a://} without a port is refused, saying how to write it.
        """
        error = self.assertRaises(ConfigError, parse_dns_source, "dns+a://app.internal")
        self.assertIn("dns+a://NAME:PORT", str(error))

    def test_srv_no_port(self) -> None:
        """
        C{dns+srv://} with a port is refused: the records give the ports.
        """
        error = self.assertRaises(ConfigError, parse_dns_source, "dns+srv://_web._tcp.x:80")
        self.assertIn("SRV records give the ports", str(error))

    def test_srv_no_weight(self) -> None:
        """
        A weight for C{dns+srv://} is refused: the records give the weights.
        """
        error = self.assertRaises(ConfigError, parse_dns_source, "dns+srv://_web._tcp.x", 2)
        self.assertIn("SRV records give the weights", str(error))

    def test_bad_name(self) -> None:
        """
        A name with an empty label, or characters DNS names do not have,
        is refused.
        """
        for text in ("dns+a://a..b:80", "dns+a://a!b:80", "dns+a://-a:80"):
            self.assertRaises(ConfigError, parse_dns_source, text)

    def test_path(self) -> None:
        """
        A path is refused.
        """
        self.assertRaises(ConfigError, parse_dns_source, "dns+a://app:80/x")

    def test_url_and_label(self) -> None:
        """
        C{url} is the source as an address, C{label} as log lines show it.
        """
        source = parse_dns_source("https+dns+a://app.internal:443")
        self.assertEqual(
            (source.url, source.label), ("https+dns+a://app.internal:443", "dns+a app.internal")
        )

    def test_server_from_a(self) -> None:
        """
        A server found by an https A source is the address on the source's
        port, verified against the name looked up.
        """
        source = DnsSource("a", "app.internal", 443, "https", weight=2, backup=True)
        self.assertEqual(
            source.server("10.0.0.7"),
            ServerConfig("10.0.0.7", 443, "https", 2, True, tls_name="app.internal"),
        )

    def test_server_from_srv(self) -> None:
        """
        A server found by an SRV record has its port and weight, and over
        TLS is verified against the record's target.
        """
        source = DnsSource("srv", "_web._tcp.x", scheme="https")
        self.assertEqual(
            source.server("10.0.0.7", 8443, 5, name="node1.x"),
            ServerConfig("10.0.0.7", 8443, "https", 5, False, tls_name="node1.x"),
        )

    def test_is_dns_address(self) -> None:
        """
        C{is_dns_address} tells DNS sources from servers.
        """
        self.assertEqual(
            [is_dns_address(t) for t in ("dns+a://x:1", " https+dns+srv://x", "dns:1", "x:1")],
            [True, True, False, False],
        )

    def test_upstream_list(self) -> None:
        """
        C{--upstream} lists mix servers and DNS sources.
        """
        self.assertEqual(
            parse_upstream_list("a:1,dns+a://b:2"),
            (ServerConfig("a", 1), DnsSource("a", "b", 2)),
        )

    def test_parse_upstream_server(self) -> None:
        """
        L{parse_upstream} reads a plain server as L{parse_server} does.
        """
        self.assertEqual(parse_upstream("https://a:1"), ServerConfig("a", 1, "https"))

    def test_parameters(self) -> None:
        """
        Entries take nginx-like parameters: a server all of its own, a DNS
        name C{weight=N} and C{backup} for every server it finds; on the
        command line and as a string in a file alike.
        """
        self.assertEqual(
            parse_upstream_list("a:1 weight=2 max-conns=3 down,dns+a://b:2 weight=3 backup"),
            (
                ServerConfig("a", 1, weight=2, max_conns=3, down=True),
                DnsSource("a", "b", 2, weight=3, backup=True),
            ),
        )
        config = parse_config(
            {"upstream": {"web": {"servers": ["dns+a://b:2 backup", "c:3 weight=4"]}}}
        )
        [pool] = config.pools
        self.assertEqual(pool.sources, (DnsSource("a", "b", 2, backup=True),))
        self.assertEqual(pool.servers, (ServerConfig("c", 3, weight=4),))

    def test_dns_parameter_refused(self) -> None:
        """
        A parameter a DNS name cannot take is named in one line.
        """
        error = self.assertRaises(ConfigError, parse_upstream, "dns+a://b:2 max-conns=3")
        self.assertEqual(
            str(error),
            "bad upstream entry 'dns+a://b:2 max-conns=3': unknown parameter 'max-conns=3' "
            "(a DNS name takes weight=N or backup)",
        )


class DnsTableTests(SynchronousTestCase):
    """
    A DNS name written as a table in a file takes the same parameters as
    the string form.
    """

    def test_table_parameter_refused(self) -> None:
        """
        C{max-conns} and C{down} on a DNS name are named, each in one line,
        not silently ignored.
        """
        error = self.assertRaises(
            ConfigFileError,
            parse_config,
            {
                "upstream": {
                    "web": {
                        "servers": [
                            {"address": "dns+a://app:3000", "max-conns": 10},
                            {"address": "dns+srv://_http._tcp.app", "down": True},
                        ]
                    }
                }
            },
            "lb.toml",
        )
        self.assertEqual(
            error.problems,
            [
                "lb.toml: upstream.web.servers[0].max-conns: not for a DNS name "
                "(a DNS name takes weight or backup)",
                "lb.toml: upstream.web.servers[1].down: not for a DNS name "
                "(a DNS name takes weight or backup)",
            ],
        )

    def test_table_weight_and_backup(self) -> None:
        """
        C{weight} and C{backup} in a table apply to every server it finds.
        """
        config = parse_config(
            {
                "upstream": {
                    "web": {"servers": [{"address": "dns+a://b:2", "weight": 3, "backup": True}]}
                }
            }
        )
        self.assertEqual(config.pools[0].sources, (DnsSource("a", "b", 2, weight=3, backup=True),))


class ParseResolverTests(SynchronousTestCase):
    """
    L{parse_resolver} reads the C{resolver} setting.
    """

    def test_address_and_port(self) -> None:
        """
        C{IP:PORT} names a DNS server.
        """
        self.assertEqual(parse_resolver("127.0.0.1:8600"), ("127.0.0.1", 8600))

    def test_default_port(self) -> None:
        """
        Without a port, 53.
        """
        self.assertEqual(parse_resolver("10.0.0.2"), ("10.0.0.2", 53))

    def test_ipv6(self) -> None:
        """
        An IPv6 address is in brackets.
        """
        self.assertEqual(parse_resolver("[::1]:5353"), ("::1", 5353))

    def test_name_refused(self) -> None:
        """
        A name is refused: it would need another DNS server to look it up.
        """
        for text in ("localhost:53", "::1", "", "1.2.3.4:0", "1.2.3.4:x"):
            self.assertRaises(ConfigError, parse_resolver, text)


class PoolTests(SynchronousTestCase):
    """
    A pool may have DNS sources beside or instead of servers.
    """

    def test_only_dns(self) -> None:
        """
        A pool with only DNS sources is valid.
        """
        pool = PoolConfig("web", (), (DnsSource("a", "app", 80),))
        self.assertEqual(pool.sources, (DnsSource("a", "app", 80),))

    def test_neither(self) -> None:
        """
        A pool with neither is refused.
        """
        self.assertRaises(ConfigError, PoolConfig, "web", ())


class CommandLineTests(SynchronousTestCase):
    """
    C{--upstream dns+...}, C{--resolver} and C{--dns-refresh}.
    """

    def _parse(self, *argv: str) -> Options:
        options = Options()
        options.parseOptions(list(argv))
        return options

    def test_dns_upstream(self) -> None:
        """
        DNS sources of C{--upstream} and C{--backup} are the default pool's
        sources, servers its servers.
        """
        options = self._parse(
            "--upstream",
            "a:1,dns+a://app:80",
            "--upstream",
            "dns+srv://_web._tcp.x",
            "--backup",
            "dns+a://spare:80",
        )
        pool = options.config.pools[0]
        self.assertEqual(pool.servers, (ServerConfig("a", 1),))
        self.assertEqual(
            pool.sources,
            (
                DnsSource("a", "app", 80),
                DnsSource("srv", "_web._tcp.x"),
                DnsSource("a", "spare", 80, backup=True),
            ),
        )

    def test_resolver_and_refresh(self) -> None:
        """
        C{--resolver} is global, C{--dns-refresh} the pool's.
        """
        options = self._parse(
            "--upstream", "dns+a://app:80", "--resolver", "127.0.0.1:8600", "--dns-refresh", "5"
        )
        self.assertEqual(options.config.resolver, "127.0.0.1:8600")
        self.assertEqual(options.config.pools[0].dns_refresh, 5.0)

    def test_defaults(self) -> None:
        """
        By default the system's resolver, and a lookup at least every 30 s.
        """
        options = self._parse("--upstream", "dns+a://app:80")
        self.assertEqual((options.config.resolver, options.config.pools[0].dns_refresh), ("", 30))

    def test_bad_resolver(self) -> None:
        """
        A resolver that is not an address is a usage error naming it.
        """
        error = self.assertRaises(
            usage.UsageError, self._parse, "--upstream", "a:1", "--resolver", "dns.example:53"
        )
        self.assertIn("--resolver", str(error))

    def test_bad_dns_upstream(self) -> None:
        """
        A bad DNS address is a usage error naming C{--upstream}.
        """
        error = self.assertRaises(usage.UsageError, self._parse, "--upstream", "dns+a://app")
        self.assertIn("--upstream: bad upstream address 'dns+a://app'", str(error))


class FileTests(SynchronousTestCase):
    """
    DNS sources in C{servers = [...]}, and the C{resolver} key.
    """

    def test_strings_and_tables(self) -> None:
        """
        A DNS source is a string, or a table with C{address}, C{weight}
        (C{dns+a} only) and C{backup}.
        """
        config = parse_config(
            {
                "resolver": "127.0.0.1:8600",
                "dns-refresh": 10,
                "upstream": {
                    "web": {
                        "servers": [
                            "dns+srv://_web._tcp.service.consul",
                            {"address": "dns+a://spare.internal:80", "weight": 2, "backup": True},
                            "10.0.0.9:80",
                        ]
                    }
                },
            }
        )
        pool = config.pools[0]
        self.assertEqual(config.resolver, "127.0.0.1:8600")
        self.assertEqual(pool.dns_refresh, 10.0)
        self.assertEqual(pool.servers, (ServerConfig("10.0.0.9", 80),))
        self.assertEqual(
            pool.sources,
            (
                DnsSource("srv", "_web._tcp.service.consul"),
                DnsSource("a", "spare.internal", 80, weight=2, backup=True),
            ),
        )

    def test_only_dns(self) -> None:
        """
        A pool may have only DNS sources.
        """
        config = parse_config({"upstream": {"web": {"servers": ["dns+a://app:80"]}}})
        self.assertEqual(config.pools[0].servers, ())

    def test_bad_source_named(self) -> None:
        """
        A bad DNS address is a problem naming its key path.
        """
        error = self.assertRaises(
            ConfigFileError,
            parse_config,
            {"upstream": {"web": {"servers": ["dns+srv://_web._tcp.x:80"]}}},
            "lb.toml",
        )
        self.assertIn("lb.toml: upstream.web.servers[0].address: bad upstream", error.problems[0])

    def test_bad_resolver(self) -> None:
        """
        A resolver that is not an address is a problem naming the key.
        """
        error = self.assertRaises(
            ConfigFileError,
            parse_config,
            {"resolver": "dns.example", "upstream": {"web": {"servers": ["a:1"]}}},
            "lb.toml",
        )
        self.assertEqual(
            error.problems,
            [
                "lb.toml: resolver: expected a DNS server IP[:PORT], or empty for "
                "the system's, got 'dns.example'"
            ],
        )
