"""
Tests for L{lbproxy.balancing.registry}: strategies are C{twisted.plugin}
plugins in L{lbproxy.plugins}, the built-in ones and a user's, made here
at test time in a directory of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from random import Random
from textwrap import dedent

from twisted.internet.task import Clock
from twisted.plugin import IPlugin
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

import lbproxy.plugins
from lbproxy.balancing.registry import (
    BalancerPlugin,
    installed_strategies,
    make_balancer,
)
from lbproxy.balancing.strategies import (
    ConsistentHash,
    LeastConn,
    PeakEwma,
    RandomTwo,
    RoundRobin,
)
from lbproxy.config.model import PoolConfig, ServerConfig
from lbproxy.errors import ConfigError
from lbproxy.interfaces import IBalancer, IBalancerFactory
from lbproxy.service.service import build_router
from lbproxy.tap import Options

_TREE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: A user's strategy, one class and its plugin, as README.rst shows.
_PLUGIN = dedent(
    '''
    from zope.interface import implementer

    from lbproxy.balancing.registry import BalancerPlugin
    from lbproxy.interfaces import IBalancer


    @implementer(IBalancer)
    class FirstUp:
        """Always the first server in rotation: a strategy for the tests."""

        def __init__(self, config, clock, rng):
            pass

        def pick(self, servers, exclude, request=None):
            for server in servers:
                if server.up and server not in exclude:
                    return server
            return None

        def started(self, server):
            pass

        def finished(self, server, elapsed):
            pass


    firstup = BalancerPlugin("firstup", "the first server in rotation", FirstUp)
    '''
)

_SCENARIO = dedent(
    """
    requests = 2000
    strategies = ["firstup", "roundrobin"]

    [arrivals]
    rate = 1000

    [[server]]
    name = "a"
    latency = { fixed = 5 }

    [[server]]
    name = "b"
    latency = { fixed = 5 }
    """
)


def _pool_config(balance: str, **options: object) -> PoolConfig:
    return PoolConfig("web", (ServerConfig("a", 1),), balance=balance, **options)  # type: ignore[arg-type]


class BuiltInTests(SynchronousTestCase):
    """
    The built-in strategies are plugins like any other.
    """

    def test_names(self) -> None:
        """
        The built-in strategies are installed under their C{--balance}
        names, sorted.
        """
        self.assertEqual(
            [n for n in installed_strategies() if n != "firstup"],
            ["ewma", "hash", "leastconn", "random2", "roundrobin"],
        )

    def test_plugins(self) -> None:
        """
        Each is an L{IPlugin} and an L{IBalancerFactory} that makes an
        L{IBalancer}.
        """
        for name, factory in installed_strategies().items():
            self.assertTrue(verifyObject(IBalancerFactory, factory), name)
            self.assertTrue(IPlugin.providedBy(factory), name)
            balancer = factory.make(_pool_config(name), Clock(), Random(1))
            self.assertTrue(verifyObject(IBalancer, balancer), name)

    def test_made_by_name(self) -> None:
        """
        C{balance} chooses the class; the pool's other options reach it.
        """
        clock = Clock()
        kinds = {
            "roundrobin": RoundRobin,
            "leastconn": LeastConn,
            "random2": RandomTwo,
            "ewma": PeakEwma,
            "hash": ConsistentHash,
        }
        for name, kind in kinds.items():
            self.assertIs(type(make_balancer(_pool_config(name), clock)), kind)

    def test_unknown(self) -> None:
        """
        A name no strategy answers to is a L{ConfigError} naming the
        installed ones.
        """
        error = self.assertRaises(ConfigError, make_balancer, _pool_config("fastest"), Clock())
        self.assertIn("'fastest'", str(error))
        self.assertIn("ewma, hash, leastconn, random2, roundrobin", str(error))

    def test_bad_name(self) -> None:
        """
        A plugin's name must be one C{--balance} accepts.
        """
        self.assertRaises(ValueError, BalancerPlugin, "Fast One", "", RoundRobin.from_config)


def make_plugin_directory(test: SynchronousTestCase) -> str:
    """
    A directory holding C{lbproxy/plugins/firstup_strategy.py} (and no
    C{__init__.py}), as another distribution installs it.

    @return: the directory, to go on C{sys.path}.
    """
    root = test.mktemp()
    plugins = os.path.join(root, "lbproxy", "plugins")
    os.makedirs(plugins)
    with open(os.path.join(plugins, "firstup_strategy.py"), "w") as f:
        f.write(_PLUGIN)
    return os.path.abspath(root)


class UserPluginTests(SynchronousTestCase):
    """
    A user's plugin package adds a strategy that C{--balance}, the
    configuration file and the simulator accept, with no change to
    lbproxy.
    """

    def setUp(self) -> None:
        self.root = make_plugin_directory(self)
        # What importing lbproxy.plugins does for a directory that is on
        # sys.path at start (pluginPackagePaths), done after the import.
        self.patch(sys, "path", [self.root, *sys.path])
        self.patch(
            lbproxy.plugins,
            "__path__",
            [*lbproxy.plugins.__path__, os.path.join(self.root, "lbproxy", "plugins")],
        )
        installed_strategies.cache_clear()
        self.addCleanup(installed_strategies.cache_clear)

    def test_installed(self) -> None:
        """
        The plugin's strategy is installed beside the built-in ones.
        """
        self.assertIn("firstup", installed_strategies())
        self.assertIn("roundrobin", installed_strategies())

    def test_balance_option(self) -> None:
        """
        C{--balance firstup} passes the checks and the pool's strategy is
        the plugin's.
        """
        options = Options()
        options.parseOptions(["--upstream", "a:1,b:1", "--balance", "firstup"])
        pool = build_router(options.config, Clock()).only
        assert pool is not None
        picked = [pool.pick() for _ in range(3)]
        self.assertEqual([s.address if s else None for s in picked], ["a:1"] * 3)

    def test_balance_option_unknown(self) -> None:
        """
        Without the plugin the name is refused (so the test above tests
        the plugin).
        """
        self.patch(lbproxy.plugins, "__path__", lbproxy.plugins.__path__[:-1])
        installed_strategies.cache_clear()
        self.assertRaises(
            UsageError, Options().parseOptions, ["--upstream", "a:1", "--balance", "firstup"]
        )


class PluginProcessTests(SynchronousTestCase):
    """
    In a fresh process with the plugin's directory on C{PYTHONPATH} (as
    an installed distribution would be), C{lbproxy balancers} lists the
    strategy and C{lbproxy simulate} runs it.
    """

    def run_lbproxy(self, *arguments: str) -> str:
        root = make_plugin_directory(self)
        scenario = os.path.join(root, "scenario.toml")
        with open(scenario, "w") as f:
            f.write(_SCENARIO)
        environment = dict(os.environ, PYTHONPATH=os.pathsep.join([root, _TREE]))
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "lbproxy",
                *[scenario if a == "SCENARIO" else a for a in arguments],
            ],
            env=environment,
            capture_output=True,
            text=True,
            cwd=root,
            check=False,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        return done.stdout

    def test_listed(self) -> None:
        """
        C{lbproxy balancers} names the plugin's strategy and its
        description.
        """
        output = self.run_lbproxy("balancers")
        self.assertIn("firstup     the first server in rotation", output)

    def test_simulated(self) -> None:
        """
        C{lbproxy simulate} runs the plugin's strategy: every request to
        the first server, where round robin shares them.
        """
        output = json.loads(self.run_lbproxy("simulate", "SCENARIO", "--json", "--jobs", "1"))
        shares = {name: s["share"] for name, s in output["strategies"].items()}
        self.assertEqual(shares["firstup"], {"a": 1.0, "b": 0.0})
        self.assertEqual(shares["roundrobin"], {"a": 0.5, "b": 0.5})
