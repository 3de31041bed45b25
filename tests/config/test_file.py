"""
Tests for L{lbproxy.config.file} and C{lbproxy check}: the TOML file.
"""

from __future__ import annotations

import io
import sys

from twisted.trial.unittest import SynchronousTestCase

from lbproxy.cli import main
from lbproxy.config.file import ConfigFileError, load_config
from lbproxy.config.model import RouteConfig, ServerConfig

EXAMPLE = """
listen = ["tcp:8080", "tcp:8081:interface=127.0.0.1"]
read-timeout = 30
access-log = "off"
drain-timeout = 5

[upstream.web]
servers = ["localhost:3000", { address = "localhost:3001", weight = 2 },
           { address = "localhost:3002", backup = true }]
health-path = "/healthz"
health-interval = 2.0
health-timeout = 1.0
rise = 2
fall = 3
max-fails = 2

[upstream.api]
servers = ["10.0.0.5:9000"]
health-check = false

[[route]]
host = "api.example.com"
path = "/api/"
upstream = "api"

[[route]]
upstream = "web"
"""


class LoadTests(SynchronousTestCase):
    """
    L{load_config} reads the documented shape.
    """

    def _write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def _problems(self, text: str) -> list[str]:
        path = self._write(text)
        error = self.assertRaises(ConfigFileError, load_config, path)
        return [p.removeprefix(path + ": ") for p in error.problems]

    def test_example(self) -> None:
        """
        The README's example becomes the matching L{Config}.
        """
        config = load_config(self._write(EXAMPLE))
        self.assertEqual(config.listen, ("tcp:8080", "tcp:8081:interface=127.0.0.1"))
        self.assertEqual((config.read_timeout, config.access_log), (30.0, "off"))
        self.assertEqual(config.drain_timeout, 5.0)
        web, api = config.pools
        self.assertEqual(
            web.servers,
            (
                ServerConfig("localhost", 3000),
                ServerConfig("localhost", 3001, weight=2),
                ServerConfig("localhost", 3002, backup=True),
            ),
        )
        self.assertEqual(
            (web.health_path, web.health_interval, web.health_timeout, web.rise, web.fall),
            ("/healthz", 2.0, 1.0, 2, 3),
        )
        self.assertEqual(web.max_fails, 2)
        self.assertFalse(api.health_check)
        self.assertEqual(
            config.routes,
            (RouteConfig("api", host="api.example.com", path="/api/"), RouteConfig("web")),
        )

    def test_minimal(self) -> None:
        """
        One pool and nothing else: defaults everywhere, no routes needed.
        """
        config = load_config(self._write('[upstream.web]\nservers = ["localhost:3000"]\n'))
        self.assertEqual(config.listen, ("tcp:8080",))
        self.assertEqual(config.routes, ())

    def test_unknown_keys(self) -> None:
        """
        Unknown keys anywhere are errors naming their key path.
        """
        problems = self._problems(
            'lisen = ["tcp:1"]\n[upstream.web]\nservers = [{ address = "a:1", wieght = 2 }]\n'
            'helth-path = "/"\n[[route]]\nupstream = "web"\nprefix = "/"\n'
        )
        self.assertEqual(
            [p.split(":")[0] for p in problems],
            [
                "lisen",
                "upstream.web.helth-path",
                "upstream.web.servers[0].wieght",
                "route[0].prefix",
            ],
        )

    def test_every_problem_reported(self) -> None:
        """
        All problems are listed at once, each with its key path and what
        was expected.
        """
        problems = self._problems(
            'read-timeout = "soon"\nupstream-keepalive = -1\n'
            '[upstream.web]\nservers = ["nope", { address = "a:1", weight = 0 }]\n'
            'health-interval = -2\nhealth-status = "abc"\nrise = 0\nmax-fails = "x"\n'
        )
        joined = "\n".join(problems)
        for expected in (
            "read-timeout: expected a positive number of seconds, got 'soon'",
            "upstream-keepalive: expected a whole number, 0 or more, got -1",
            "upstream.web.servers[0].address: bad upstream address 'nope'",
            "upstream.web.servers[1].weight: expected a whole number, 1 or more, got 0",
            "upstream.web.health-interval: expected a positive number of seconds, got -2",
            "upstream.web.health-status: expected statuses such as 200-399, got 'abc'",
            "upstream.web.rise: expected a whole number, 1 or more, got 0",
            "upstream.web.max-fails: expected a whole number, 0 or more, got 'x'",
        ):
            self.assertIn(expected, joined)

    def test_not_finite_seconds(self) -> None:
        """
        TOML's C{inf} and C{nan} are not a number of seconds, at the top
        level or in a pool (a C{nan} timeout would never fire, or fire at
        once).
        """
        problems = self._problems(
            'read-timeout = inf\nclient-timeout = nan\n[upstream.web]\nservers = ["a:1"]\n'
            "health-interval = nan\nhealth-timeout = inf\nfail-timeout = -inf\n"
        )
        self.assertEqual(
            problems,
            [
                "read-timeout: expected a positive number of seconds, got inf",
                "client-timeout: expected a positive number of seconds, got nan",
                "upstream.web.health-interval: expected a positive number of seconds, got nan",
                "upstream.web.health-timeout: expected a positive number of seconds, got inf",
                "upstream.web.fail-timeout: expected a positive number of seconds, got -inf",
            ],
        )

    def test_health_path_and_host(self) -> None:
        """
        A health check path or host that cannot go into a request (a space,
        a non-ASCII character) is refused when the file is read, rather
        than failing every check with a traceback.
        """
        for key, value in (
            ("health-path", "/a b"),
            ("health-path", "/caf\u00e9"),
            ("health-host", "caf\u00e9.example"),
            ("health-host", "a b"),
        ):
            problems = self._problems(f'[upstream.web]\nservers = ["a:1"]\n{key} = "{value}"\n')
            self.assertEqual(len(problems), 1, problems)
            self.assertTrue(problems[0].startswith(f"upstream.web.{key}: expected"), problems)
            self.assertTrue(problems[0].endswith(f"got {value!r}"), problems)

    def test_route_to_unknown_pool(self) -> None:
        """
        A route naming no pool is an error listing the pools.
        """
        problems = self._problems(
            '[upstream.web]\nservers = ["a:1"]\n[[route]]\nupstream = "wbe"\n'
        )
        self.assertEqual(problems, ["route to 'wbe': no such upstream pool (pools: web)"])

    def test_two_pools_need_routes(self) -> None:
        """
        Several pools without routes would send everything nowhere: error.
        """
        problems = self._problems(
            '[upstream.a]\nservers = ["a:1"]\n[upstream.b]\nservers = ["b:1"]\n'
        )
        self.assertIn("no route", problems[0])

    def test_no_pool(self) -> None:
        """
        A file without any pool is an error.
        """
        self.assertIn("at least one pool is needed", self._problems('listen = ["tcp:1"]\n')[0])

    def test_syntax_error_has_line(self) -> None:
        """
        A TOML syntax error names the file and the line.
        """
        problems = self._problems('[upstream.web]\nservers = ["a:1"]\nmax-fails = = 1\n')
        self.assertIn("not valid TOML", problems[0])
        self.assertIn("line", problems[0])

    def test_missing_file(self) -> None:
        """
        A file that cannot be read is one clear problem.
        """
        error = self.assertRaises(ConfigFileError, load_config, "/nonexistent/lb.toml")
        self.assertEqual(
            error.problems, ["/nonexistent/lb.toml: cannot read: No such file or directory"]
        )


class CheckCommandTests(SynchronousTestCase):
    """
    C{lbproxy check FILE}: a summary and 0, or the problems and 1; never a
    traceback.
    """

    def _command(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        return main(list(argv)), out.getvalue(), err.getvalue()

    def test_ok(self) -> None:
        """
        A valid file: one summary line, status 0.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(EXAMPLE)
        status, out, err = self._command("check", path)
        self.assertEqual(status, 0)
        self.assertEqual(
            out,
            f"{path}: ok: 2 pool(s), 4 server(s), 2 route(s), "
            "listening on tcp:8080, tcp:8081:interface=127.0.0.1\n",
        )

    def test_problems(self) -> None:
        """
        A broken file: every problem on stderr, status 1.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[upstream.web]\nservers = ["a:1"]\ncolor = "red"\n[[route]]\nupstream = "x"\n')
        status, out, err = self._command("check", path)
        self.assertEqual(status, 1)
        self.assertEqual(out, "")
        self.assertEqual(len(err.splitlines()), 1)
        self.assertIn(f"{path}: upstream.web.color: unknown key", err)
        self.assertNotIn("Traceback", err)

    def test_bad_endpoint(self) -> None:
        """
        A listen endpoint Twisted cannot parse (C{tcpp:1}, which used to
        pass as "ok"): one line naming the file, the key and the value,
        status 1.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('listen = ["tcpp:1"]\n[upstream.web]\nservers = ["a:1"]\n')
        status, out, err = self._command("check", path)
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err, f"{path}: listen[0]: 'tcpp:1': Unknown endpoint type: 'tcpp'\n")

    def test_missing_certificate(self) -> None:
        """
        A certificate file that cannot be read fails the check, named.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(
                'upstream-client-cert = "/nonexistent/client.pem"\n'
                '[upstream.web]\nservers = ["https://a:1"]\n'
            )
        status, out, err = self._command("check", path)
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(
            err,
            f"{path}: upstream-client-cert: upstream client certificate "
            "'/nonexistent/client.pem': No such file or directory\n",
        )


class LimitTests(SynchronousTestCase):
    """
    The framing limits are checked when the file is read, not at start.
    """

    def test_zero_limit(self) -> None:
        """
        A limit of 0 is a problem naming the key.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('max-request-line = 0\n[upstream.web]\nservers = ["a:1"]\n')
        error = self.assertRaises(ConfigFileError, load_config, path)
        self.assertEqual(
            error.problems,
            [
                f"{path}: max-request-line: expected a size in bytes, 1 or more "
                "(8192, 8k, 1m), got 0"
            ],
        )


class UpstreamAnswerKeysTests(SynchronousTestCase):
    """
    The file twins of the options about upstream answers.
    """

    def _load(self, text: str):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text + '[upstream.web]\nservers = ["a:1"]\n')
        return path, load_config

    def test_max_upstream_headers_size(self) -> None:
        """
        C{max-upstream-headers-size} sets the limit; 0 is a problem naming it.
        """
        path, load = self._load("max-upstream-headers-size = 8192\n")
        self.assertEqual(load(path).max_upstream_headers_size, 8192)
        path, load = self._load("max-upstream-headers-size = 0\n")
        error = self.assertRaises(ConfigFileError, load, path)
        self.assertEqual(
            error.problems,
            [
                f"{path}: max-upstream-headers-size: expected a size in bytes, 1 or more "
                "(8192, 8k, 1m), got 0"
            ],
        )

    def test_send_timeout(self) -> None:
        """
        C{send-timeout} sets the send timeout; 0 is a problem naming it.
        """
        path, load = self._load("send-timeout = 2.5\n")
        self.assertEqual(load(path).send_timeout, 2.5)
        path, load = self._load("send-timeout = 0\n")
        error = self.assertRaises(ConfigFileError, load, path)
        self.assertEqual(len(error.problems), 1)
        self.assertIn("send-timeout", error.problems[0])


class BalancingKeysTests(SynchronousTestCase):
    """
    The file's balancing keys: per-pool options and server parameters.
    """

    def _load(self, text: str):  # type: ignore[no-untyped-def]
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return load_config(path)

    def _problems(self, text: str) -> list[str]:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        error = self.assertRaises(ConfigFileError, load_config, path)
        return [p.removeprefix(path + ": ") for p in error.problems]

    def test_pool_options(self) -> None:
        """
        C{balance}, C{hash-key}, C{ewma-decay}, C{sticky-cookie},
        C{queue-timeout} and C{max-queue} go per pool, or at the top level
        as every pool's default.
        """
        config = self._load(
            'balance = "leastconn"\nqueue-timeout = 2\n'
            '[upstream.web]\nservers = ["a:1"]\nbalance = "hash"\nhash-key = "header:X-User"\n'
            'sticky-cookie = "lbsrv"\newma-decay = 5\nmax-queue = 0\n'
            '[upstream.api]\nservers = ["b:1"]\n'
            '[[route]]\npath = "/api/"\nupstream = "api"\n[[route]]\nupstream = "web"\n'
        )
        web, api = config.pools
        self.assertEqual(
            (web.balance, web.hash_key, web.sticky_cookie, web.ewma_decay, web.max_queue),
            ("hash", "header:X-User", "lbsrv", 5.0, 0),
        )
        self.assertEqual((api.balance, api.queue_timeout, api.max_queue), ("leastconn", 2.0, 1000))

    def test_bad_pool_options(self) -> None:
        """
        Values of the wrong shape are named by key.
        """
        problems = self._problems(
            '[upstream.web]\nservers = ["a:1"]\nbalance = "Least Conn"\n'
            'hash-key = "host"\nsticky-cookie = "a b"\n'
        )
        self.assertEqual(len(problems), 3)
        self.assertIn("upstream.web.balance: expected a strategy name", problems[0])
        self.assertIn("upstream.web.hash-key: expected ip, path, header:NAME", problems[1])
        self.assertIn("upstream.web.sticky-cookie: expected a cookie name", problems[2])

    def test_server_keys(self) -> None:
        """
        A server table takes C{max-conns} and C{down}; a string takes the
        command line's parameters.
        """
        config = self._load(
            '[upstream.web]\nservers = [{ address = "a:1", max-conns = 5, down = true },\n'
            '  "b:2 weight=2 max-conns=3 backup"]\n'
        )
        self.assertEqual(
            config.pools[0].servers,
            (
                ServerConfig("a", 1, max_conns=5, down=True),
                ServerConfig("b", 2, weight=2, max_conns=3, backup=True),
            ),
        )

    def test_bad_server_keys(self) -> None:
        """
        Wrong values of server keys and parameters are named by entry.
        """
        problems = self._problems(
            '[upstream.web]\nservers = [{ address = "a:1", max-conns = -1 },\n'
            '  { address = "a:2", down = "yes" }, "b:2 slow", { address = "a:3", maxconn = 1 }]\n'
        )
        self.assertEqual(
            problems[:3],
            [
                "upstream.web.servers[0].max-conns: expected a whole number, 0 or more, got -1",
                "upstream.web.servers[1].down: expected true or false, got 'yes'",
                "upstream.web.servers[2]: bad upstream entry 'b:2 slow': unknown parameter "
                "'slow' (expected weight=N, max-conns=N, backup or down)",
            ],
        )
        self.assertTrue(problems[3].startswith("upstream.web.servers[3].maxconn: unknown key"))
