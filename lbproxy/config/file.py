# -*- test-case-name: tests.config.test_file -*-
"""
The configuration file: TOML (read with C{tomllib}) into a L{Config}.

Shape (every command-line option has a twin, spelled the same without the
leading dashes)::

    listen = ["tcp:8080"]                 # Twisted endpoint strings
    read-timeout = 60                     # top-level: the global options

    [upstream.web]                        # a pool; --upstream fills "default"
    servers = ["localhost:3000", { address = "localhost:3001", weight = 2 },
               { address = "localhost:3002", backup = true }]
    health = { path = "/healthz", interval = 2.0, timeout = 1.0, rise = 2, fall = 3 }
    max-fails = 1
    fail-timeout = 10

    [[route]]                             # first match wins
    host = "api.example.com"              # optional; exact or "*.example.com"
    path = "/api/"                        # optional prefix
    upstream = "api"

Unknown keys are errors, so a typo never passes silently.  Every problem
is collected, each as one line with the file name and the key path, and
raised together in a L{ConfigFileError}.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import fields
from typing import Any

from lbproxy.config.model import (
    Config,
    HealthConfig,
    PoolConfig,
    RouteConfig,
    ServerConfig,
    parse_server,
    parse_status_ranges,
)
from lbproxy.errors import ConfigError

__all__ = ["ConfigFileError", "load_config", "parse_config"]

#: Top-level keys that are not plain values of L{Config}.
_STRUCTURED = {"listen", "upstream", "route"}
#: L{Config} fields with no file twin.
_NOT_IN_FILE = {"pools", "routes", "demo", "listen"}


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
    Collects problems, each prefixed with the file name and key path.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: list[str] = []

    def add(self, where: str, what: str) -> None:
        self.lines.append(f"{self.source}: {where}: {what}")


def _scalar_fields() -> dict[str, Any]:
    return {
        f.name: f.default
        for f in fields(Config)
        if f.name not in _NOT_IN_FILE and not isinstance(f.default, (tuple, list))
    }


def _seconds(value: float) -> bool:
    """
    Whether C{value} is a usable number of seconds: positive and finite
    (TOML has C{inf} and C{nan}; a C{nan} timeout never compares true).
    """
    return value > 0 and math.isfinite(value)


def _check_type(value: Any, default: Any) -> str | None:
    """
    What is wrong with C{value} for a field whose default is C{default}.
    """
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "expected true or false"
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not _seconds(value):
            return "expected a positive number of seconds"
        return None
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return "expected a whole number, 0 or more"
        return None
    if isinstance(default, str) or default is None:
        return None if isinstance(value, str) else "expected a string"
    return None


def parse_config(data: dict[str, Any], source: str = "<config>") -> Config:
    """
    Build a L{Config} from parsed TOML.

    @param data: what C{tomllib} read.
    @param source: the file name, for messages.
    @raise ConfigFileError: listing every problem.
    """
    problems = _Problems(source)
    scalars = _scalar_fields()
    settings: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if key in _STRUCTURED:
            continue
        if name not in scalars:
            problems.add(key, "unknown key")
            continue
        wrong = _check_type(value, scalars[name])
        if wrong:
            problems.add(key, f"{wrong}, got {value!r}")
            continue
        settings[name] = float(value) if isinstance(scalars[name], float) else value

    listen = data.get("listen", ["tcp:8080"])
    if isinstance(listen, str):
        listen = [listen]
    if not isinstance(listen, list) or not all(isinstance(x, str) for x in listen) or not listen:
        problems.add("listen", f"expected a list of endpoint strings, got {listen!r}")
        listen = ["tcp:8080"]

    pools = _pools(data.get("upstream"), problems)
    routes = _routes(data.get("route", []), problems)

    if problems.lines:
        raise ConfigFileError(problems.lines)
    try:
        return Config(pools=pools, listen=tuple(listen), routes=routes, **settings)
    except ConfigError as e:
        raise ConfigFileError([f"{source}: {e}"]) from None


def _pools(upstream: Any, problems: _Problems) -> tuple[PoolConfig, ...]:
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
        pool = _pool(name, table, where, problems)
        if pool is not None:
            pools.append(pool)
    return tuple(pools)


_POOL_KEYS = {"servers", "health", "max-fails", "fail-timeout", "max-tries"}
_SERVER_KEYS = {"address", "weight", "backup"}
_HEALTH_KEYS = {"enabled", "path", "interval", "timeout", "status", "host", "rise", "fall"}


def _unknown(expected: set[str]) -> str:
    return f"unknown key (expected one of {', '.join(sorted(expected))})"


def _pool(name: str, table: dict[str, Any], where: str, problems: _Problems) -> PoolConfig | None:
    for key in table:
        if key not in _POOL_KEYS:
            problems.add(
                f"{where}.{key}", f"unknown key (expected one of {', '.join(sorted(_POOL_KEYS))})"
            )
    servers = []
    entries = table.get("servers")
    if not isinstance(entries, list) or not entries:
        problems.add(f"{where}.servers", "expected a non-empty list of servers")
        entries = []
    for index, entry in enumerate(entries):
        server = _server(entry, f"{where}.servers[{index}]", problems)
        if server is not None:
            servers.append(server)
    health = _health(table.get("health", {}), f"{where}.health", problems)
    settings: dict[str, Any] = {}
    for key, field_name, kind in (
        ("max-fails", "max_fails", "count"),
        ("fail-timeout", "fail_timeout", "seconds"),
        ("max-tries", "max_tries", "positive"),
    ):
        if key in table:
            value = _number(table[key], kind, f"{where}.{key}", problems)
            if value is not None:
                settings[field_name] = value
    if not servers or health is None:
        return None
    try:
        return PoolConfig(name, tuple(servers), health=health, **settings)
    except ConfigError as e:
        problems.add(where, str(e))
        return None


def _server(entry: Any, where: str, problems: _Problems) -> ServerConfig | None:
    if isinstance(entry, str):
        entry = {"address": entry}
    if not isinstance(entry, dict):
        problems.add(where, f'expected "HOST:PORT" or {{ address = "HOST:PORT" }}, got {entry!r}')
        return None
    for key in entry:
        if key not in _SERVER_KEYS:
            problems.add(f"{where}.{key}", "unknown key (expected address, weight, backup)")
    address = entry.get("address")
    if not isinstance(address, str):
        problems.add(f"{where}.address", 'expected "HOST:PORT"')
        return None
    weight = _number(entry.get("weight", 1), "positive", f"{where}.weight", problems)
    backup = entry.get("backup", False)
    if not isinstance(backup, bool):
        problems.add(f"{where}.backup", f"expected true or false, got {backup!r}")
        return None
    try:
        server = parse_server(address)
        return ServerConfig(server.host, server.port, server.scheme, int(weight or 1), backup)
    except ConfigError as e:
        problems.add(f"{where}.address", str(e))
        return None


def _health(table: Any, where: str, problems: _Problems) -> HealthConfig | None:
    if not isinstance(table, dict):
        problems.add(where, 'expected a table, e.g. { path = "/healthz" }')
        return None
    settings: dict[str, Any] = {}
    for key, value in table.items():
        if key not in _HEALTH_KEYS:
            problems.add(
                f"{where}.{key}", f"unknown key (expected one of {', '.join(sorted(_HEALTH_KEYS))})"
            )
        elif key in ("interval", "timeout"):
            settings[key] = _number(value, "seconds", f"{where}.{key}", problems)
        elif key in ("rise", "fall"):
            settings[key] = _number(value, "positive", f"{where}.{key}", problems)
        elif key == "enabled":
            if not isinstance(value, bool):
                problems.add(f"{where}.{key}", f"expected true or false, got {value!r}")
            settings[key] = value
        elif key == "status":
            try:
                settings["statuses"] = parse_status_ranges(str(value))
            except ConfigError as e:
                problems.add(f"{where}.status", str(e))
        elif not isinstance(value, str):
            problems.add(f"{where}.{key}", f"expected a string, got {value!r}")
        else:
            settings[key] = value
    if any(v is None for v in settings.values()):
        return None
    try:
        return HealthConfig(**settings)
    except (ConfigError, TypeError) as e:
        problems.add(where, str(e))
        return None


def _number(value: Any, kind: str, where: str, problems: _Problems) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        problems.add(where, f"expected a number, got {value!r}")
        return None
    if kind == "seconds":
        if not _seconds(value):
            problems.add(where, f"expected a positive number of seconds, got {value!r}")
            return None
        return float(value)
    if not isinstance(value, int) or value < (1 if kind == "positive" else 0):
        least = 1 if kind == "positive" else 0
        problems.add(where, f"expected a whole number, {least} or more, got {value!r}")
        return None
    return value


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
            if key not in ("host", "path", "upstream"):
                problems.add(f"{where}.{key}", "unknown key (expected host, path, upstream)")
        upstream = entry.get("upstream")
        if not isinstance(upstream, str):
            problems.add(f"{where}.upstream", "expected the name of an [upstream.NAME] pool")
            continue
        try:
            routes.append(RouteConfig(upstream, entry.get("host"), entry.get("path")))
        except ConfigError as e:
            problems.add(where, str(e))
    return tuple(routes)
