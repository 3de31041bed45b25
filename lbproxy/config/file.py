# -*- test-case-name: tests.config.test_file -*-
"""
The configuration file: TOML (read with C{tomllib}) into a L{Config}.

Every option has the same name here as on the command line, without the
dashes in front (L{lbproxy.config.options})::

    listen = ["tcp:8080"]                 # global options at the top level
    read-timeout = 60
    max-fails = 1                         # a pool option here: every pool's default

    [upstream.web]                        # a pool; --upstream fills "default"
    servers = ["localhost:3000", { address = "localhost:3001", weight = 2 },
               { address = "localhost:3002", backup = true },
               "localhost:3003 max-conns=10"]  # or nginx-like parameters
    health-path = "/healthz"              # pool options
    fall = 3

    [upstream.app]                        # servers found by DNS (lbproxy.config.dns)
    servers = ["dns+a://app.internal:3000", "dns+srv://_web._tcp.service.consul"]

    [[route]]                             # first match wins
    host = "api.example.com"              # optional; exact or "*.example.com"
    path = "/api/"                        # optional prefix
    upstream = "api"

Unknown keys are errors, so a typo never passes silently.  Every problem
is collected, each as one line with the file name and the key path, and
raised together in a L{ConfigFileError}.
"""

from __future__ import annotations

import tomllib
from typing import Any

from lbproxy.config.dns import DnsSource, is_dns_address, parse_dns_source, parse_upstream
from lbproxy.config.model import Config, PoolConfig, RouteConfig, all_options
from lbproxy.config.options import Option, Scope
from lbproxy.config.servers import ServerConfig, parse_server
from lbproxy.errors import ConfigError

__all__ = ["ConfigFileError", "load_config", "parse_config"]

_SERVER_KEYS = ("address", "weight", "backup", "max-conns", "down")
_ROUTE_KEYS = ("host", "path", "upstream")


class ConfigFileError(ConfigError):
    """
    A configuration file has problems.

    @ivar problems: one line per problem, each naming the file and key.
    """

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def load_config(path: str) -> Config:
    """
    Read and check a configuration file.

    @raise ConfigFileError: listing every problem.
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigFileError([f"{path}: cannot read: {e.strerror}"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigFileError([f"{path}: not valid TOML: {e}"]) from None
    return parse_config(data, path)


class _Problems:
    """
    Collects problems, each prefixed with the file name.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: list[str] = []

    def add(self, where: str, what: str) -> None:
        self.lines.append(f"{self.source}: {where}: {what}")

    def error(self, error: ConfigError) -> None:
        self.lines.append(f"{self.source}: {error}")


def _by_name(scope: Scope) -> dict[str, Option]:
    return {o.name: o for o in all_options() if o.scope is scope and o.spec.file}


def parse_config(data: dict[str, Any], source: str = "<config>") -> Config:
    """
    Build a L{Config} from parsed TOML.

    @param data: what C{tomllib} read.
    @param source: the file name, for messages.
    @raise ConfigFileError: listing every problem.
    """
    problems = _Problems(source)
    global_options = _by_name(Scope.GLOBAL)
    pool_options = _by_name(Scope.POOL)
    settings: dict[str, Any] = {}
    pool_defaults: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("upstream", "route"):
            continue
        known = global_options.get(key) or pool_options.get(key)
        if known is None:
            problems.add(key, _unknown(key, [*global_options, *pool_options, "upstream", "route"]))
            continue
        target = settings if known.scope is Scope.GLOBAL else pool_defaults
        try:
            target[known.field] = known.parse_file(value, key)
        except ConfigError as e:
            problems.error(e)
    pools = _pools(data.get("upstream"), pool_options, pool_defaults, problems)
    routes = _routes(data.get("route", []), problems)
    if problems.lines:
        raise ConfigFileError(problems.lines)
    try:
        return Config(pools=pools, routes=routes, **settings)
    except ConfigError as e:
        raise ConfigFileError([f"{source}: {e}"]) from None


def _unknown(key: str, expected: list[str]) -> str:
    if key == "health":
        # The spelling of lbproxy 0.1's files.
        return "unknown key: health checks are set with health-path, health-interval, ... keys"
    return f"unknown key (expected one of {', '.join(sorted(expected))})"


def _pools(
    upstream: Any,
    pool_options: dict[str, Option],
    defaults: dict[str, Any],
    problems: _Problems,
) -> tuple[PoolConfig, ...]:
    if upstream is None:
        problems.add("upstream", "no [upstream.NAME] table: at least one pool is needed")
        return ()
    if not isinstance(upstream, dict):
        problems.add("upstream", "expected tables [upstream.NAME]")
        return ()
    pools = []
    for name, table in upstream.items():
        where = f"upstream.{name}"
        if not isinstance(table, dict):
            problems.add(where, "expected a table")
            continue
        settings = dict(defaults)
        for key, value in table.items():
            if key == "servers":
                continue
            known = pool_options.get(key)
            if known is None:
                problems.add(f"{where}.{key}", _unknown(key, [*pool_options, "servers"]))
                continue
            try:
                settings[known.field] = known.parse_file(value, f"{where}.{key}")
            except ConfigError as e:
                problems.error(e)
        upstreams = _servers(table.get("servers"), f"{where}.servers", problems)
        if not upstreams:
            continue
        servers = tuple(u for u in upstreams if isinstance(u, ServerConfig))
        sources = tuple(u for u in upstreams if isinstance(u, DnsSource))
        try:
            pools.append(PoolConfig(name, servers, sources, **settings))
        except ConfigError as e:
            problems.add(where, str(e))
    return tuple(pools)


def _servers(entries: Any, where: str, problems: _Problems) -> tuple[ServerConfig | DnsSource, ...]:
    if not isinstance(entries, list) or not entries:
        problems.add(where, "expected a non-empty list of servers")
        return ()
    servers: list[ServerConfig | DnsSource] = []
    for index, entry in enumerate(entries):
        server = _server(entry, f"{where}[{index}]", problems)
        if server is not None:
            servers.append(server)
    return tuple(servers)


def _server(entry: Any, where: str, problems: _Problems) -> ServerConfig | DnsSource | None:
    if isinstance(entry, str):
        if len(entry.split()) > 1:
            # "HOST:PORT weight=2 max-conns=10": the command line's spelling.
            try:
                return parse_upstream(entry)
            except ConfigError as e:
                problems.add(where, str(e))
                return None
        entry = {"address": entry}
    if not isinstance(entry, dict):
        problems.add(where, f'expected "HOST:PORT" or {{ address = "HOST:PORT" }}, got {entry!r}')
        return None
    for key in entry:
        if key not in _SERVER_KEYS:
            problems.add(f"{where}.{key}", _unknown(key, list(_SERVER_KEYS)))
    address = entry.get("address")
    if not isinstance(address, str):
        problems.add(f"{where}.address", 'expected "HOST:PORT"')
        return None
    if is_dns_address(address):
        # As the string form (parse_upstream): the servers a name gives
        # share its weight and backup flag, and nothing else.
        refused = [key for key in ("max-conns", "down") if key in entry]
        for key in refused:
            problems.add(f"{where}.{key}", "not for a DNS name (a DNS name takes weight or backup)")
        if refused:
            return None
    weight = entry.get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
        problems.add(f"{where}.weight", f"expected a whole number, 1 or more, got {weight!r}")
        return None
    max_conns = entry.get("max-conns", 0)
    if isinstance(max_conns, bool) or not isinstance(max_conns, int) or max_conns < 0:
        problems.add(f"{where}.max-conns", f"expected a whole number, 0 or more, got {max_conns!r}")
        return None
    flags = {}
    for flag in ("backup", "down"):
        flags[flag] = entry.get(flag, False)
        if not isinstance(flags[flag], bool):
            problems.add(f"{where}.{flag}", f"expected true or false, got {flags[flag]!r}")
            return None
    try:
        if is_dns_address(address):
            return parse_dns_source(address, weight, flags["backup"])
        server = parse_server(address)
        return ServerConfig(
            server.host,
            server.port,
            server.scheme,
            weight,
            flags["backup"],
            max_conns=max_conns,
            down=flags["down"],
        )
    except ConfigError as e:
        problems.add(f"{where}.address", str(e))
        return None


def _routes(entries: Any, problems: _Problems) -> tuple[RouteConfig, ...]:
    if not isinstance(entries, list):
        problems.add("route", "expected [[route]] tables")
        return ()
    routes = []
    for index, entry in enumerate(entries):
        where = f"route[{index}]"
        if not isinstance(entry, dict):
            problems.add(where, "expected a table")
            continue
        for key in entry:
            if key not in _ROUTE_KEYS:
                problems.add(f"{where}.{key}", _unknown(key, list(_ROUTE_KEYS)))
        upstream = entry.get("upstream")
        if not isinstance(upstream, str):
            problems.add(f"{where}.upstream", "expected the name of an [upstream.NAME] pool")
            continue
        host, path = entry.get("host"), entry.get("path")
        if not isinstance(host, (str, type(None))) or not isinstance(path, (str, type(None))):
            problems.add(where, "host and path must be strings")
            continue
        try:
            routes.append(RouteConfig(upstream, host, path))
        except ConfigError as e:
            problems.add(where, str(e))
    return tuple(routes)
