"""
Tests for L{lbproxy.config.model} and L{lbproxy.config.options}: the
option table, its kinds, and the records' validation.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from lbproxy.config.model import Config, PoolConfig, ServerConfig, all_options
from lbproxy.config.options import (
    BYTES,
    COUNT,
    ENDPOINTS,
    SECONDS,
    Reload,
    Scope,
    needs_restart,
    parse_duration,
    parse_size,
)
from lbproxy.errors import ConfigError


class ParseDurationTests(SynchronousTestCase):
    """
    L{parse_duration} reads a positive, finite number of seconds.
    """

    def test_whole(self) -> None:
        """
        An integer is that many seconds.
        """
        self.assertEqual(parse_duration("5"), 5.0)

    def test_fraction(self) -> None:
        """
        Fractions are allowed.
        """
        self.assertEqual(parse_duration("0.25"), 0.25)

    def test_not_number(self) -> None:
        """
        Text that is not a number is rejected, the message naming the value.
        """
        message = str(self.assertRaises(ConfigError, parse_duration, "abc"))
        self.assertEqual(message, "expected a positive number of seconds, got 'abc'")

    def test_not_positive(self) -> None:
        """
        Zero and negative numbers, infinity and NaN are rejected, the message
        naming the value.
        """
        for text in ("0", "-1", "inf", "nan", "1e400"):
            message = str(self.assertRaises(ConfigError, parse_duration, text))
            self.assertEqual(message, f"expected a positive number of seconds, got {text!r}")


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
        self.assertTrue(message.startswith("listen: "), message)

    def test_negative_keepalive(self) -> None:
        """
        A negative upstream keepalive is rejected, the message naming it.
        """
        message = str(
            self.assertRaises(ConfigError, Config, pools=self._pools(), upstream_keepalive=-1)
        )
        self.assertEqual(message, "upstream-keepalive: expected a whole number, 0 or more, got -1")

    def test_zero_keepalive(self) -> None:
        """
        An upstream keepalive of 0 (close after each use) is allowed.
        """
        self.assertEqual(Config(pools=self._pools(), upstream_keepalive=0).upstream_keepalive, 0)

    def test_admin_token_and_file(self) -> None:
        """
        An admin token and a token file contradict each other.
        """
        message = str(
            self.assertRaises(
                ConfigError,
                Config,
                pools=self._pools(),
                admin_token="a",
                admin_token_file="/etc/lbproxy/token",
            )
        )
        self.assertEqual(message, "admin-token and admin-token-file contradict: give one of them")

    def test_admin_token_not_repeated(self) -> None:
        """
        A token that is not a bearer token is refused without being
        repeated: errors reach terminals and logs.
        """
        message = str(
            self.assertRaises(ConfigError, Config, pools=self._pools(), admin_token="my secret")
        )
        self.assertEqual(
            message, "admin-token: expected letters, digits and -._~+/ (a bearer token)"
        )

    def test_access_log_format(self) -> None:
        """
        The access log format is C{combined} (the default) or C{json}.
        """
        self.assertEqual(Config(pools=self._pools()).access_log_format, "combined")
        self.assertEqual(
            Config(pools=self._pools(), access_log_format="json").access_log_format, "json"
        )
        message = str(
            self.assertRaises(ConfigError, Config, pools=self._pools(), access_log_format="main")
        )
        self.assertEqual(message, "access-log-format: expected one of combined, json, got 'main'")

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


class TableTests(SynchronousTestCase):
    """
    The option table: every option declared once, on the model, with what
    the command line, the file and the README need.
    """

    def test_every_field_is_an_option(self) -> None:
        """
        Every field of L{Config} and L{PoolConfig} is an option, except the
        structure (pools, routes, the pool's name, servers and DNS sources).
        """
        structure = {"pools", "routes", "name", "servers", "sources"}
        declared = {o.field for o in all_options()}
        for model in (Config, PoolConfig):
            for name in model.__dataclass_fields__:
                if name not in structure:
                    self.assertIn(name, declared, f"{model.__name__}.{name}")

    def test_names(self) -> None:
        """
        An option's name is its field with dashes, and names are unique
        across both scopes (a file key means one thing).
        """
        names = [o.name for o in all_options()]
        self.assertEqual(len(names), len(set(names)))
        for each in all_options():
            self.assertEqual(each.name, each.field.replace("_", "-"))

    def test_help_and_defaults(self) -> None:
        """
        Every option has help text ending with a full stop, and its default
        passes its own kind's check.
        """
        for each in all_options():
            self.assertTrue(each.help.endswith("."), each.name)
            each.kind.check(each.default)

    def test_scopes(self) -> None:
        """
        Health and retry options are per pool; timeouts of the process are
        global.
        """
        scopes = {o.name: o.scope for o in all_options()}
        self.assertIs(scopes["fall"], Scope.POOL)
        self.assertIs(scopes["health-path"], Scope.POOL)
        self.assertIs(scopes["read-timeout"], Scope.GLOBAL)

    def test_reload(self) -> None:
        """
        Only C{workers} and C{demo} need a restart; every other option is
        applied by a reload.
        """
        restart = [o.name for o in all_options() if o.reload is Reload.RESTART]
        self.assertEqual(restart, ["workers", "demo"])

    def test_needs_restart(self) -> None:
        """
        L{needs_restart} names the restart-only options two configurations
        differ in, and only those.
        """
        pools = (PoolConfig("default", (ServerConfig("a", 1),)),)
        old = Config(pools=pools, workers=1, read_timeout=5)
        self.assertEqual(
            needs_restart(old, Config(pools=pools, workers=2, read_timeout=9), Scope.GLOBAL),
            ["workers"],
        )
        self.assertEqual(needs_restart(old, Config(pools=pools, read_timeout=9), Scope.GLOBAL), [])


class KindTests(SynchronousTestCase):
    """
    The kinds parse command-line text and file values alike.
    """

    def test_sizes(self) -> None:
        """
        Sizes take nginx's suffixes.
        """
        self.assertEqual(
            [parse_size(t) for t in ("8192", "8k", "8K", "1m", "2g")],
            [8192, 8192, 8192, 1024**2, 2 * 1024**3],
        )
        self.assertEqual(BYTES.from_file("64k"), 65536)
        self.assertRaises(ConfigError, parse_size, "1.5m")
        self.assertRaises(ConfigError, BYTES.from_text, "0")

    def test_seconds(self) -> None:
        """
        Seconds are positive and finite, from text and from TOML numbers;
        a boolean is not a number.
        """
        self.assertEqual(SECONDS.from_text("0.5"), 0.5)
        self.assertEqual(SECONDS.from_file(2), 2.0)
        for bad in (True, "1", 0, -1.0, float("inf"), float("nan")):
            self.assertRaises(ConfigError, SECONDS.from_file, bad)

    def test_count(self) -> None:
        """
        A count is a whole number, 0 or more; text that is not one names
        itself in the message.
        """
        self.assertEqual(COUNT.from_text("0"), 0)
        message = str(self.assertRaises(ConfigError, COUNT.from_text, "-1"))
        self.assertEqual(message, "expected a whole number, 0 or more, got '-1'")
        self.assertRaises(ConfigError, COUNT.from_file, 1.5)

    def test_workers(self) -> None:
        """
        Workers are a whole number, 1 or more, or C{auto}: one per core.
        """
        kind = next(o.kind for o in all_options() if o.name == "workers")
        self.assertEqual(kind.from_text("2"), 2)
        self.assertEqual(kind.from_file(3), 3)
        self.assertEqual(kind.from_text("auto"), os.cpu_count())
        self.assertEqual(kind.from_file("auto"), os.cpu_count())
        for bad in ("0", "-1", "x", "1.5"):
            message = str(self.assertRaises(ConfigError, kind.from_text, bad))
            self.assertIn("1 or more, or 'auto'", message)
        for value in (0, True, 1.5, "2"):
            self.assertRaises(ConfigError, kind.from_file, value)

    def test_endpoints(self) -> None:
        """
        Endpoints are a list of strings in a file (one string is a list of
        one); on the command line each C{--listen} adds one.
        """
        self.assertEqual(ENDPOINTS.from_file("tcp:1"), ("tcp:1",))
        self.assertEqual(ENDPOINTS.from_file(["tcp:1", "unix:/x"]), ("tcp:1", "unix:/x"))
        self.assertEqual(ENDPOINTS.from_text("tcp:1"), ("tcp:1",))
        for bad in ([], [1], "", [""]):
            self.assertRaises(ConfigError, ENDPOINTS.from_file, bad)
