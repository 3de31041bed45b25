# -*- test-case-name: tests.balancing.test_registry -*-
"""
The installed balancing strategies, by C{--balance} name: every
L{IBalancerFactory} plugin in L{lbproxy.plugins}, found with
C{twisted.plugin.getPlugins} (the built-in ones are plugins too, in
L{lbproxy.plugins.lbproxy_balancers}).

A strategy is one class implementing L{IBalancer} and one
L{BalancerPlugin} naming it, in a module of an C{lbproxy/plugins/}
directory on C{sys.path}::

    # mypackage/lbproxy/plugins/fastest.py  (no __init__.py beside it)
    from lbproxy.balancing.registry import BalancerPlugin
    from mypackage.fastest import Fastest

    fastest = BalancerPlugin("fastest", "the lowest last response time", Fastest)

Plugins are looked for once per process (L{installed_strategies}), as
twistd looks for its own.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache
from random import Random

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.plugin import IPlugin, getPlugins
from zope.interface import implementer

import lbproxy.plugins
from lbproxy.config.model import PoolConfig
from lbproxy.errors import ConfigError
from lbproxy.interfaces import IBalancer, IBalancerFactory

__all__ = [
    "BalancerPlugin",
    "installed_strategies",
    "make_balancer",
    "unknown_strategy",
]

_log = Logger()

#: What C{--balance} accepts as a name (the configuration checks the same).
_NAME = re.compile(r"[a-z][a-z0-9_-]*")


@implementer(IPlugin, IBalancerFactory)
class BalancerPlugin:
    """
    A strategy registered under a name: put one in a module of
    L{lbproxy.plugins} and C{--balance NAME} makes it.

    @ivar name: the C{--balance} name.
    @ivar description: one line for C{lbproxy balancers}.
    """

    def __init__(
        self,
        name: str,
        description: str,
        factory: Callable[[PoolConfig, IReactorTime, Random], IBalancer],
    ) -> None:
        """
        @param factory: makes the strategy of a pool from the pool's
            configuration, a clock and a source of randomness (a
            classmethod, say, or the class itself if it takes those).
        @raise ValueError: if C{name} is not a strategy name.
        """
        if _NAME.fullmatch(name) is None:
            raise ValueError(f"balancer plugin name {name!r} must match {_NAME.pattern}")
        self.name = name
        self.description = description
        self._factory = factory

    def __repr__(self) -> str:
        return f"<BalancerPlugin {self.name}>"

    def make(self, config: PoolConfig, clock: IReactorTime, rng: Random) -> IBalancer:
        """
        The strategy of one pool; see L{IBalancerFactory.make}.
        """
        return self._factory(config, clock, rng)


@cache
def installed_strategies() -> dict[str, IBalancerFactory]:
    """
    Every installed strategy by name, sorted by name; looked for once per
    process (C{installed_strategies.cache_clear()} looks again).

    A name claimed twice keeps the first plugin found, and the other is
    logged; an object that is not a proper plugin (no valid name) is
    logged and left out.
    """
    found: dict[str, IBalancerFactory] = {}
    for plugin in getPlugins(IBalancerFactory, lbproxy.plugins):
        name = getattr(plugin, "name", None)
        if not isinstance(name, str) or _NAME.fullmatch(name) is None:
            _log.warn(
                "balancer plugin {plugin!r} ignored: bad name {name!r}", plugin=plugin, name=name
            )
            continue
        if name in found:
            _log.warn(
                "balancer plugin {plugin!r} ignored: {name!r} is taken by {other!r}",
                plugin=plugin,
                name=name,
                other=found[name],
            )
            continue
        found[name] = plugin
    return dict(sorted(found.items()))


def make_balancer(config: PoolConfig, clock: IReactorTime, rng: Random | None = None) -> IBalancer:
    """
    The strategy C{config.balance} names, for one pool.

    @param rng: the randomness the strategy draws from; a new one if
        L{None}.
    @raise ConfigError: if no installed strategy has that name.
    """
    factory = installed_strategies().get(config.balance)
    if factory is None:
        raise ConfigError(unknown_strategy(config.balance))
    return factory.make(config, clock, rng or Random())


def unknown_strategy(name: str) -> str:
    """
    The message for a C{--balance} no installed strategy answers to.
    """
    return f"unknown strategy {name!r} (expected one of {', '.join(installed_strategies())})"
