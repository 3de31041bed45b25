# -*- test-case-name: tests.simulation.test_scenario -*-
"""
A simulation scenario: a TOML file naming the servers and how they behave,
when requests arrive, and the strategies and settings to compare::

    requests = 1000000          # how many (at most the log's, with a log)
    seed = 1                    # the same seed, the same run
    strategies = ["roundrobin", "leastconn",
                  { name = "ewma-1s", balance = "ewma", ewma-decay = 1 }]

    [arrivals]
    rate = 10000                # Poisson, requests a second; or:
    # log = "access.log"        # the times of an access log (combined or
                                # JSON), relative to this file

    [settings]                  # lbproxy options, as in a configuration file
    max-fails = 1
    read-timeout = 5

    [[server]]
    name = "a"                              # its name in the report
    weight = 1
    latency = { lognormal = 10, sigma = 0.5 }   # median ms; or { fixed = 10 }
    slow = { from = 30, to = 60, factor = 50 }  # seconds of the run (or a list)
    fail = { from = 70, to = 75, mode = "refused", rate = 1.0 }
                                # refused, connect-timeout or read-timeout

A strategy named by a string is C{balance = NAME}; a table gives a name
for the report and any pool options.  Every problem is one line naming
the file and the key (L{ScenarioError}).  What keys on the request
(C{balance = "hash"}, C{sticky-cookie}) is refused: simulated requests
carry no address, path, header or cookie.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass
from typing import Any

from lbproxy.balancing.registry import installed_strategies, unknown_strategy
from lbproxy.config.file import ConfigFileError, parse_config
from lbproxy.config.model import Config
from lbproxy.errors import ConfigError

__all__ = [
    "Contender",
    "FailWindow",
    "Scenario",
    "ScenarioError",
    "ServerModel",
    "SlowSpell",
    "load_scenario",
    "parse_scenario",
]

#: How a failing server fails: nothing listening (the connection is
#: refused at once), nothing answering the connection (the connect
#: timeout passes), or a connection that never answers (the read timeout
#: passes).  The numbers are the simulator's outcome kinds.
FAIL_MODES = {"refused": 1, "connect-timeout": 2, "read-timeout": 3}

_TOP_KEYS = ("requests", "seed", "strategies", "arrivals", "settings", "server")
_SERVER_KEYS = ("name", "weight", "max-conns", "backup", "latency", "slow", "fail")


class ScenarioError(ConfigError):
    """
    A scenario file has a problem; the message is one line naming the file
    and the key.
    """


@dataclass(frozen=True, slots=True)
class SlowSpell:
    """
    A stretch of the run, C{start} to C{end} seconds, when a server's
    response times are C{factor} times longer.
    """

    start: float
    end: float
    factor: float


@dataclass(frozen=True, slots=True)
class FailWindow:
    """
    A stretch of the run, C{start} to C{end} seconds, when a fraction
    C{rate} of a server's requests fail as C{mode} says (L{FAIL_MODES}).
    """

    start: float
    end: float
    mode: str
    rate: float = 1.0

    @property
    def kind(self) -> int:
        """
        The simulator's number for C{mode}.
        """
        return FAIL_MODES[self.mode]


@dataclass(frozen=True, slots=True)
class ServerModel:
    """
    One modelled app server.

    @ivar median: its median response time, in seconds (the fixed one if
        C{sigma} is 0).
    @ivar sigma: the shape of its lognormal response times; 0 for fixed.
    """

    name: str
    median: float
    sigma: float = 0.0
    weight: int = 1
    max_conns: int = 0
    backup: bool = False
    slow: tuple[SlowSpell, ...] = ()
    fail: tuple[FailWindow, ...] = ()


@dataclass(frozen=True, slots=True)
class Contender:
    """
    One strategy and its settings, compared with the others.

    @ivar name: its name in the report.
    @ivar config: the lbproxy configuration it runs with (one pool,
        C{sim}, whose servers are the scenario's, in order).
    """

    name: str
    config: Config


@dataclass(frozen=True, slots=True)
class Scenario:
    """
    What to simulate.

    @ivar rate: Poisson arrivals a second, if C{log} is empty.
    @ivar log: an access log whose times are the arrivals.
    """

    requests: int
    seed: int
    servers: tuple[ServerModel, ...]
    contenders: tuple[Contender, ...]
    rate: float = 0.0
    log: str = ""


def load_scenario(path: str) -> Scenario:
    """
    Read and check a scenario file.

    @raise ScenarioError: naming the first problem.
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ScenarioError(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{path}: not valid TOML: {e}") from None
    return parse_scenario(data, path)


def parse_scenario(data: dict[str, Any], source: str = "<scenario>") -> Scenario:
    """
    Build a L{Scenario} from parsed TOML.

    @param source: the file name, for messages; a relative C{log} is
        relative to its directory.
    @raise ScenarioError: naming the first problem.
    """
    _known_keys(data, _TOP_KEYS, "", source)
    requests = _number(data, "requests", source, integer=True, default=None)
    seed = int(_number(data, "seed", source, integer=True, default=1, low=None) or 0)
    rate, log = _arrivals(data.get("arrivals"), source)
    if requests is None and not log:
        raise ScenarioError(f"{source}: requests: missing (how many requests to simulate)")
    entries = data.get("server")
    if not isinstance(entries, list) or not entries:
        raise ScenarioError(f"{source}: server: expected one or more [[server]] tables")
    servers = tuple(_server(entry, f"server[{i}]", source) for i, entry in enumerate(entries))
    names = [server.name for server in servers]
    for name in names:
        if names.count(name) > 1:
            raise ScenarioError(f"{source}: server: the name {name!r} is used twice")
    contenders = _contenders(data, servers, source)
    return Scenario(
        requests=int(requests or 0),
        seed=seed,
        servers=servers,
        contenders=contenders,
        rate=rate,
        log=log,
    )


def _known_keys(table: dict[str, Any], known: tuple[str, ...], where: str, source: str) -> None:
    for key in table:
        if key not in known:
            raise ScenarioError(
                f"{source}: {where}{key}: unknown key (expected one of {', '.join(known)})"
            )


def _number(
    table: dict[str, Any],
    key: str,
    source: str,
    *,
    where: str = "",
    integer: bool = False,
    default: float | None = None,
    low: float | None = 0.0,
    positive: bool = True,
) -> float | None:
    """
    The number at C{key} (a positive one unless C{low} is L{None}).
    """
    value = table.get(key, default)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (integer and not isinstance(value, int))
        or not math.isfinite(value)
    ):
        expected = "an integer" if integer else "a number"
        raise ScenarioError(f"{source}: {where}{key}: expected {expected}, got {value!r}")
    if low is not None and (value <= low if positive else value < low):
        raise ScenarioError(
            f"{source}: {where}{key}: must be {'above' if positive else 'at least'} {low:g}, "
            f"got {value!r}"
        )
    return float(value) if not integer else int(value)


def _arrivals(table: Any, source: str) -> tuple[float, str]:
    if not isinstance(table, dict):
        raise ScenarioError(f'{source}: arrivals: expected a table with rate = N or log = "FILE"')
    _known_keys(table, ("rate", "log"), "arrivals.", source)
    if ("rate" in table) == ("log" in table):
        raise ScenarioError(f'{source}: arrivals: expected one of rate = N or log = "FILE"')
    if "rate" in table:
        rate = _number(table, "rate", source, where="arrivals.")
        assert rate is not None
        return rate, ""
    log = table["log"]
    if not isinstance(log, str) or not log:
        raise ScenarioError(f"{source}: arrivals.log: expected a file name, got {log!r}")
    return 0.0, os.path.join(os.path.dirname(source), log)


def _server(entry: Any, where: str, source: str) -> ServerModel:
    if not isinstance(entry, dict):
        raise ScenarioError(f"{source}: {where}: expected a table")
    _known_keys(entry, _SERVER_KEYS, f"{where}.", source)
    name = entry.get("name", f"s{where[7:-1]}")
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_." for c in name):
        raise ScenarioError(
            f"{source}: {where}.name: expected letters, digits, '-', '_' or '.', got {name!r}"
        )
    median, sigma = _latency(entry.get("latency"), f"{where}.latency", source)
    weight = _number(entry, "weight", source, where=f"{where}.", integer=True, default=1)
    max_conns = _number(
        entry, "max-conns", source, where=f"{where}.", integer=True, default=0, positive=False
    )
    backup = entry.get("backup", False)
    if not isinstance(backup, bool):
        raise ScenarioError(f"{source}: {where}.backup: expected true or false, got {backup!r}")
    slow = tuple(
        SlowSpell(*_window(spell, f"{where}.slow", source, ("factor",)))
        for spell in _tables(entry.get("slow", []), f"{where}.slow", source)
    )
    fail = []
    for window in _tables(entry.get("fail", []), f"{where}.fail", source):
        start, end = _window(window, f"{where}.fail", source, ("mode", "rate"))[:2]
        mode = window.get("mode", "refused")
        if mode not in FAIL_MODES:
            raise ScenarioError(
                f"{source}: {where}.fail.mode: expected one of {', '.join(FAIL_MODES)}, "
                f"got {mode!r}"
            )
        rate = _number(window, "rate", source, where=f"{where}.fail.", default=1.0)
        assert rate is not None
        if rate > 1:
            raise ScenarioError(f"{source}: {where}.fail.rate: must be 1 at most, got {rate!r}")
        fail.append(FailWindow(start, end, mode, rate))
    return ServerModel(
        name=name,
        median=median,
        sigma=sigma,
        weight=int(weight or 1),
        max_conns=int(max_conns or 0),
        backup=backup,
        slow=slow,
        fail=tuple(fail),
    )


def _latency(table: Any, where: str, source: str) -> tuple[float, float]:
    """
    The median response time in seconds and the lognormal shape.
    """
    if not isinstance(table, dict) or ("fixed" in table) == ("lognormal" in table):
        raise ScenarioError(
            f"{source}: {where}: expected {{ fixed = MS }} or {{ lognormal = MS, sigma = S }}"
        )
    if "fixed" in table:
        _known_keys(table, ("fixed",), f"{where}.", source)
        fixed = _number(table, "fixed", source, where=f"{where}.")
        assert fixed is not None
        return fixed / 1000, 0.0
    _known_keys(table, ("lognormal", "sigma"), f"{where}.", source)
    median = _number(table, "lognormal", source, where=f"{where}.")
    sigma = _number(table, "sigma", source, where=f"{where}.", default=0.5)
    assert median is not None and sigma is not None
    return median / 1000, sigma


def _tables(value: Any, where: str, source: str) -> list[dict[str, Any]]:
    tables = [value] if isinstance(value, dict) else value
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ScenarioError(f"{source}: {where}: expected a table or a list of tables")
    return tables


def _window(
    table: dict[str, Any], where: str, source: str, extra: tuple[str, ...]
) -> tuple[float, float, float]:
    """
    C{from}, C{to} (seconds of the run) and a C{factor} if asked for.
    """
    _known_keys(table, ("from", "to", *extra), f"{where}.", source)
    start = _number(table, "from", source, where=f"{where}.", positive=False)
    end = _number(table, "to", source, where=f"{where}.", positive=False)
    if start is None or end is None:
        raise ScenarioError(f"{source}: {where}: expected from = SECONDS and to = SECONDS")
    if end <= start:
        raise ScenarioError(f"{source}: {where}: to ({end:g}) must be after from ({start:g})")
    factor = 1.0
    if "factor" in extra:
        value = _number(table, "factor", source, where=f"{where}.", default=None)
        if value is None:
            raise ScenarioError(f"{source}: {where}.factor: missing (how many times slower)")
        factor = value
    return start, end, factor


def _contenders(
    data: dict[str, Any], servers: tuple[ServerModel, ...], source: str
) -> tuple[Contender, ...]:
    entries = data.get("strategies")
    if not isinstance(entries, list) or not entries:
        raise ScenarioError(
            f"{source}: strategies: expected a list of strategy names or tables, "
            'e.g. ["roundrobin", "leastconn"]'
        )
    settings = data.get("settings", {})
    if not isinstance(settings, dict):
        raise ScenarioError(f"{source}: settings: expected a table of lbproxy options")
    server_entries = [
        {
            "address": f"{server.name}:80",
            "weight": server.weight,
            "max-conns": server.max_conns,
            "backup": server.backup,
        }
        for server in servers
    ]
    servers_table = {"sim": {"servers": server_entries}}
    # The settings and each strategy's options are lbproxy's own, checked
    # by the configuration file's reader (top-level pool options are
    # every pool's defaults there).
    _config({**settings, "upstream": servers_table}, f"{source}: settings")
    contenders = []
    for i, entry in enumerate(entries):
        where = f"{source}: strategies[{i}]"
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ScenarioError(f"{where}: expected a strategy name or a table with a name")
        options = dict(entry)
        name = options.pop("name")
        options.setdefault("balance", name)
        config = _config({**settings, **options, "upstream": servers_table}, where)
        balance = config.pools[0].balance
        if balance not in installed_strategies():
            raise ScenarioError(f"{where}: balance: {unknown_strategy(balance)}")
        sticky_where = where if "sticky-cookie" in options else f"{source}: settings"
        _check_keyless(config, where, sticky_where)
        contenders.append(Contender(name, config))
    names = [c.name for c in contenders]
    for name in names:
        if names.count(name) > 1:
            raise ScenarioError(f"{source}: strategies: the name {name!r} is used twice")
    return tuple(contenders)


def _check_keyless(config: Config, where: str, sticky_where: str) -> None:
    """
    Refuse what keys on the request: simulated requests carry no address,
    path, header or cookie, so C{hash} and a sticky cookie would silently
    run as round robin and their figures would say nothing about them.

    @param where: the contender, for the message.
    @param sticky_where: where its C{sticky-cookie} came from (the
        contender or the settings).
    """
    pool = config.pools[0]
    if pool.balance == "hash":
        raise ScenarioError(
            f"{where}: balance: 'hash' "
            "cannot be simulated: simulated requests carry no address, path, header or "
            "cookie to hash (it would run as round robin)"
        )
    if pool.sticky_cookie:
        raise ScenarioError(
            f"{sticky_where}: sticky-cookie: cannot be simulated: simulated requests carry "
            "no cookie (it would change nothing)"
        )


def _config(data: dict[str, Any], where: str) -> Config:
    try:
        return parse_config(data, where)
    except ConfigFileError as e:
        raise ScenarioError(e.problems[0]) from None
