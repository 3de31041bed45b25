"""
Where lbproxy looks for plugins (C{twisted.plugin}): balancing strategies
(L{lbproxy.interfaces.IBalancerFactory}), the built-in ones
(L{lbproxy.plugins.lbproxy_balancers}) and any user's.

As with C{twisted/plugins}, every C{lbproxy/plugins/} directory on
C{sys.path} that has no C{__init__.py} of its own is part of this package,
so another distribution adds a strategy by shipping one module there,
without changing lbproxy (and must not ship an C{__init__.py} there, which
would hide lbproxy's own).
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))
__all__: list[str] = []
