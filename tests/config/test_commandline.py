"""
Tests for L{lbproxy.config.commandline}: the twistd options derived from
the option table.
"""

from __future__ import annotations

from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from lbproxy.config.commandline import Options, flag_name
from lbproxy.config.model import all_options
from lbproxy.config.options import FLAG


def _parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


class CommandLineTests(SynchronousTestCase):
    """
    Every option of the table is a command-line option, spelled as in the
    file, with its help and default.
    """

    def test_every_option_in_help(self) -> None:
        """
        C{--help} lists every option of the table that the command line
        takes, under its command-line spelling.
        """
        text = Options().getUsage(width=200)
        for each in all_options():
            if not each.spec.command_line:
                continue
            spelling = flag_name(each) if each.kind is FLAG else each.name + "="
            self.assertIn(f"--{spelling}", text, each.name)

    def test_pool_options_apply_to_default_pool(self) -> None:
        """
        Pool options given on the command line apply to the C{--upstream}
        pool.
        """
        pool = _parse(
            "--upstream", "a:1", "--fall", "5", "--health-path", "/up", "--max-tries", "2"
        ).config.pools[0]
        self.assertEqual(
            (pool.name, pool.fall, pool.health_path, pool.max_tries), ("default", 5, "/up", 2)
        )

    def test_flag_on_by_default(self) -> None:
        """
        A flag that is on by default is turned off with C{--no-NAME}.
        """
        self.assertTrue(_parse("--upstream", "a:1").config.pools[0].health_check)
        self.assertFalse(
            _parse("--upstream", "a:1", "--no-health-check").config.pools[0].health_check
        )

    def test_sizes_with_suffix(self) -> None:
        """
        Sizes take nginx's suffixes on the command line too.
        """
        self.assertEqual(
            _parse("--upstream", "a:1", "--max-body-size", "1m").config.max_body_size, 1 << 20
        )

    def test_bad_value_names_option(self) -> None:
        """
        A bad value is a usage error naming the option and the value as
        given.
        """
        error = self.assertRaises(UsageError, _parse, "--upstream", "a:1", "--health-status", "abc")
        self.assertEqual(
            str(error), "--health-status: expected statuses such as 200-399, got 'abc'"
        )

    def test_config_refuses_other_options(self) -> None:
        """
        With C{--config}, another option is refused, named as given.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[upstream.web]\nservers = ["a:1"]\n')
        for args, name in (
            (["--fall", "2"], "--fall"),
            (["--no-health-check"], "--no-health-check"),
            (["--listen", "tcp:1"], "--listen"),
            (["--upstream", "b:2"], "--upstream"),
        ):
            error = self.assertRaises(UsageError, _parse, "--config", path, *args)
            self.assertEqual(str(error), f"{name}: with --config, set it in {path} instead")
        self.assertEqual(_parse("--config", path).config.pools[0].name, "web")


class BalancingOptionsTests(SynchronousTestCase):
    """
    The balancing options and server parameters on the command line.
    """

    def test_pool_options(self) -> None:
        """
        C{--balance}, C{--hash-key}, C{--sticky-cookie}, C{--ewma-decay},
        C{--queue-timeout} and C{--max-queue} set the default pool's.
        """
        pool = _parse(
            "--upstream",
            "a:1",
            "--balance",
            "hash",
            "--hash-key",
            "cookie:sid",
            "--sticky-cookie",
            "lbsrv",
            "--ewma-decay",
            "2.5",
            "--queue-timeout",
            "3",
            "--max-queue",
            "7",
        ).config.pools[0]
        self.assertEqual(
            (pool.balance, pool.hash_key, pool.sticky_cookie, pool.ewma_decay),
            ("hash", "cookie:sid", "lbsrv", 2.5),
        )
        self.assertEqual((pool.queue_timeout, pool.max_queue), (3.0, 7))

    def test_defaults(self) -> None:
        """
        Round robin, the client address as hash key, no sticky cookie, a
        10 s decay and queue timeout, 1000 waiting requests at most.
        """
        pool = _parse("--upstream", "a:1").config.pools[0]
        self.assertEqual(
            (pool.balance, pool.hash_key, pool.sticky_cookie, pool.ewma_decay),
            ("roundrobin", "ip", "", 10.0),
        )
        self.assertEqual((pool.queue_timeout, pool.max_queue), (10.0, 1000))

    def test_server_parameters(self) -> None:
        """
        C{--upstream} and C{--backup} entries take nginx-like parameters;
        C{--backup} keeps them and adds C{backup}.
        """
        servers = (
            _parse(
                "--upstream", "a:1 weight=3 max-conns=10,b:2 down", "--backup", "c:3 max-conns=2"
            )
            .config.pools[0]
            .servers
        )
        self.assertEqual(
            [(s.host, s.weight, s.max_conns, s.down, s.backup) for s in servers],
            [("a", 3, 10, False, False), ("b", 1, 0, True, False), ("c", 1, 2, False, True)],
        )

    def test_bad_parameter(self) -> None:
        """
        A bad parameter is a usage error naming the option and the entry.
        """
        error = self.assertRaises(UsageError, _parse, "--upstream", "a:1 weight=none")
        self.assertIn("--upstream: bad upstream entry 'a:1 weight=none'", str(error))
