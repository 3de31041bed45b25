"""
Tests for L{lbproxy.tap}: the C{twistd lbproxy} options and the service tree
L{make_proxy_service} builds, on a memory reactor.
"""

from __future__ import annotations

import io
import sys
from dataclasses import replace

from twisted.internet.testing import MemoryReactorClock
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from lbproxy import __version__
from lbproxy.config.model import Config, PoolConfig, ServerConfig
from lbproxy.http.accesslog import TwistdLog
from lbproxy.service.twistdlog import TwistdLogAppends
from lbproxy.tap import Options, make_proxy_service


def _parse(*args: str) -> Options:
    """
    Parse C{args} as C{twistd lbproxy} would.
    """
    options = Options()
    options.parseOptions(list(args))
    return options


class OptionsTests(SynchronousTestCase):
    """
    L{Options} turns the command line into a L{Config}.
    """

    def assertUsageError(self, args: list[str], *fragments: str) -> None:
        """
        Parsing C{args} raises L{UsageError} whose message contains each of
        C{fragments}.
        """
        error = self.assertRaises(UsageError, Options().parseOptions, args)
        for fragment in fragments:
            self.assertIn(fragment, str(error))

    def test_upstream_list(self) -> None:
        """
        C{--upstream a:1,b:2} gives the pool C{default} of those servers, in
        order.
        """
        pools = _parse("--upstream", "a:1,b:2").config.pools
        self.assertEqual(
            pools, (PoolConfig("default", (ServerConfig("a", 1), ServerConfig("b", 2))),)
        )

    def test_upstream_repeated(self) -> None:
        """
        Repeated C{--upstream} options accumulate in order.
        """
        servers = _parse("--upstream", "a:1,b:2", "--upstream", "c:3").config.pools[0].servers
        self.assertEqual([s.address for s in servers], ["a:1", "b:2", "c:3"])

    def test_defaults(self) -> None:
        """
        Without other options the defaults apply: listen on C{tcp:8080},
        connect timeout 5 s, read and client timeouts 60 s, 32 idle upstream
        connections kept for 4 s, access log on.
        """
        config = _parse("--upstream", "a:1").config
        self.assertEqual(
            config,
            Config(
                pools=(PoolConfig("default", (ServerConfig("a", 1),)),),
                listen=("tcp:8080",),
                connect_timeout=5.0,
                read_timeout=60.0,
                client_timeout=60.0,
                upstream_keepalive=32,
                upstream_idle_timeout=4.0,
                access_log="-",
                demo=False,
            ),
        )

    def test_values(self) -> None:
        """
        Every option's value reaches the configuration.
        """
        config = _parse(
            "--upstream=a:1",
            "--connect-timeout=0.5",
            "--read-timeout=30",
            "--client-timeout=10",
            "--upstream-keepalive=0",
            "--upstream-idle-timeout=2.5",
            "--access-log=off",
        ).config
        self.assertEqual(
            (
                config.connect_timeout,
                config.read_timeout,
                config.client_timeout,
                config.upstream_keepalive,
                config.upstream_idle_timeout,
                config.access_log,
            ),
            (0.5, 30.0, 10.0, 0, 2.5, "off"),
        )

    def test_listen_repeated(self) -> None:
        """
        Repeated C{--listen} options all listen, in order, replacing the
        default.
        """
        config = _parse(
            "--upstream", "a:1", "--listen", "tcp:8081", "--listen", "unix:/tmp/lb.sock"
        ).config
        self.assertEqual(config.listen, ("tcp:8081", "unix:/tmp/lb.sock"))

    def test_bad_upstream(self) -> None:
        """
        A bad C{--upstream} is a usage error naming the option and the value.
        """
        self.assertUsageError(["--upstream", "nope"], "--upstream", "'nope'")

    def test_bad_read_timeout(self) -> None:
        """
        A C{--read-timeout} that is not a number is a usage error naming it.
        """
        self.assertUsageError(
            ["--upstream", "a:1", "--read-timeout", "abc"], "--read-timeout", "'abc'"
        )

    def test_zero_read_timeout(self) -> None:
        """
        A zero C{--read-timeout} is a usage error naming it.
        """
        self.assertUsageError(
            ["--upstream", "a:1", "--read-timeout", "0"], "--read-timeout", "'0'", "positive"
        )

    def test_bad_listen(self) -> None:
        """
        An unknown endpoint type in C{--listen} is a usage error naming it.
        """
        self.assertUsageError(["--upstream", "a:1", "--listen", "bogus:1"], "'bogus:1'")

    def test_negative_keepalive(self) -> None:
        """
        A negative C{--upstream-keepalive} is a usage error naming the value.
        """
        self.assertUsageError(
            ["--upstream", "a:1", "--upstream-keepalive", "-1"], "'-1'", "0 or more"
        )

    def test_keepalive_not_number(self) -> None:
        """
        A C{--upstream-keepalive} that is not a number is a usage error naming
        the value.
        """
        self.assertUsageError(["--upstream", "a:1", "--upstream-keepalive", "x"], "'x'")

    def test_no_upstream(self) -> None:
        """
        Neither C{--upstream} nor C{--demo} is a usage error that says how to
        give one.
        """
        self.assertUsageError([], "--upstream HOST:PORT", "--demo")

    def test_demo_and_upstream(self) -> None:
        """
        C{--demo} with C{--upstream} is a usage error.
        """
        self.assertUsageError(
            ["--demo", "--upstream", "a:1"], "--demo and --upstream cannot be combined"
        )

    def test_demo(self) -> None:
        """
        C{--demo} alone is accepted and recorded in the configuration.
        """
        self.assertIs(_parse("--demo").config.demo, True)

    def test_usage_shows_defaults(self) -> None:
        """
        The help text names each main option with its default (or says that
        C{--upstream} is required).
        """
        text = " ".join(Options().getUsage(width=80).split())
        for expected in (
            "--upstream= Upstream servers HOST:PORT",
            "[required, or --demo]",
            "--listen= A Twisted server endpoint",
            "[default: tcp:8080]",
            "--connect-timeout= Seconds to wait for a connection",
            "[default: 5]",
            "--read-timeout= Seconds an app server may stay silent",
            "[default: 60]",
        ):
            self.assertIn(expected, text)

    def test_version(self) -> None:
        """
        C{--version} prints lbproxy's version and exits 0.
        """
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        error = self.assertRaises(SystemExit, Options().parseOptions, ["--version"])
        self.assertEqual((error.code, out.getvalue()), (0, f"lbproxy {__version__}\n"))


def _config(*listen: str) -> Config:
    """
    A configuration with one upstream server, listening on C{listen}.
    """
    return Config(pools=(PoolConfig("default", (ServerConfig("a", 1),)),), listen=listen)


class MakeProxyServiceTests(SynchronousTestCase):
    """
    L{make_proxy_service} builds services that listen and time on the
    reactor it is given.
    """

    def _start(self, config: Config) -> tuple[MemoryReactorClock, object]:
        """
        Build and start the services for C{config} on a memory reactor; stop
        them on cleanup.
        """
        reactor = MemoryReactorClock()
        service, site = make_proxy_service(config, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        return reactor, site

    def test_listens(self) -> None:
        """
        Starting the service listens with the site on every configured
        endpoint, in order.
        """
        reactor, site = self._start(_config("tcp:8080", "tcp:8081:interface=127.0.0.1"))
        self.assertEqual(
            [(port, factory, interface) for port, factory, _, interface in reactor.tcpServers],
            [(8080, site, ""), (8081, site, "127.0.0.1")],
        )

    def test_listens_in_privileged_start(self) -> None:
        """
        The listeners are bound in C{privilegedStartService}, which twistd
        calls before it drops root (C{--uid}/C{--gid}), so that ports below
        1024 can be used; C{startService} does not bind them again.
        """
        reactor = MemoryReactorClock()
        service, site = make_proxy_service(_config("tcp:80", "tcp:443"), reactor)
        service.privilegedStartService()
        self.addCleanup(service.stopService)
        self.assertEqual(
            [(port, factory) for port, factory, _, _ in reactor.tcpServers],
            [(80, site), (443, site)],
        )
        self.assertFalse(service.running)
        service.startService()
        self.assertEqual(len(reactor.tcpServers), 2)
        self.assertTrue(service.running)

    def test_not_listening_before_start(self) -> None:
        """
        Building the services does not listen yet; twistd starts them.
        """
        reactor = MemoryReactorClock()
        make_proxy_service(_config("tcp:8080"), reactor)
        self.assertEqual(reactor.tcpServers, [])

    def test_sweep_timer_on_given_reactor(self) -> None:
        """
        The idle-connection sweep is scheduled on the reactor given, not on
        the global one.
        """
        config = _config("tcp:8080")
        pool = replace(config.pools[0], health_check=False)
        reactor, _ = self._start(replace(config, pools=(pool,)))
        self.assertEqual(len(reactor.getDelayedCalls()), 1)

    def test_health_checks_on_given_reactor(self) -> None:
        """
        Health checks are scheduled on the reactor given (the first check
        starts at once and times itself there); with checks turned off
        there are none.
        """
        reactor, site = self._start(_config("tcp:8080"))
        self.assertGreater(len(reactor.getDelayedCalls()), 1)
        config = _config("tcp:8080")
        pool = replace(config.pools[0], health_check=False)
        reactor, _ = self._start(replace(config, pools=(pool,)))
        self.assertEqual(len(reactor.getDelayedCalls()), 1)


class TwistdLogTests(SynchronousTestCase):
    """
    When twistd logs to a file, the service keeps twistd's descriptor of
    it appending (L{lbproxy.service.twistdlog}), since C{access-log -}
    appends there too.
    """

    def test_file(self) -> None:
        """
        With twistd logging to a file, a L{TwistdLogAppends} for that file
        is in the service tree.
        """
        service, _ = make_proxy_service(
            _config("tcp:8080"), MemoryReactorClock(), twistd_log=TwistdLog(path="/var/log/x.log")
        )
        appends = [s for s in service if isinstance(s, TwistdLogAppends)]
        self.assertEqual([s.path for s in appends], ["/var/log/x.log"])

    def test_stdout(self) -> None:
        """
        With twistd logging to standard output there is none.
        """
        service, _ = make_proxy_service(
            _config("tcp:8080"), MemoryReactorClock(), twistd_log=TwistdLog(stdout=True)
        )
        self.assertEqual([s for s in service if isinstance(s, TwistdLogAppends)], [])


class UpstreamAnswerOptionsTests(SynchronousTestCase):
    """
    The options about upstream answers reach the L{Config} and the
    upstream client.
    """

    def test_max_upstream_headers_size(self) -> None:
        """
        C{--max-upstream-headers-size} defaults to 64 KiB, takes a value,
        refuses 0, and is the client's limit.
        """
        self.assertEqual(_parse("--upstream", "a:1").config.max_upstream_headers_size, 65536)
        config = _parse("--upstream", "a:1", "--max-upstream-headers-size", "4096").config
        self.assertEqual(config.max_upstream_headers_size, 4096)
        self.assertRaises(
            UsageError,
            Options().parseOptions,
            ["--upstream", "a:1", "--max-upstream-headers-size", "0"],
        )
        _, site = make_proxy_service(config, MemoryReactorClock())
        self.assertEqual(site.resource.client.max_headers_size, 4096)

    def test_send_timeout(self) -> None:
        """
        C{--send-timeout} defaults to 60 s (nginx's C{send_timeout}), takes
        fractions, refuses 0, and is the proxy resource's.
        """
        self.assertEqual(_parse("--upstream", "a:1").config.send_timeout, 60.0)
        config = _parse("--upstream", "a:1", "--send-timeout", "2.5").config
        self.assertEqual(config.send_timeout, 2.5)
        self.assertRaises(
            UsageError, Options().parseOptions, ["--upstream", "a:1", "--send-timeout", "0"]
        )
        _, site = make_proxy_service(config, MemoryReactorClock())
        self.assertEqual(site.resource.send_timeout, 2.5)
