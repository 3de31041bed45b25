# -*- test-case-name: tests.config.test_commandline -*-
"""
The twistd command line, derived from the option table.

L{Options} is C{twistd lbproxy}'s L{usage.Options}: every option of the
table (L{lbproxy.config.model}) becomes C{--NAME} with its help, its
default shown, and its kind as the parser; flags that are on by default
are turned off with C{--no-NAME}.  Besides the table it takes
C{--upstream} and C{--backup} (the servers of the pool C{default}),
C{--config FILE} and C{--version}.  After parsing, C{options.config} is
the L{Config}.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.python import usage

from lbproxy import __version__
from lbproxy.config.dns import DnsSource, parse_upstream_list
from lbproxy.config.file import ConfigFileError, load_config
from lbproxy.config.model import Config, PoolConfig, all_options
from lbproxy.config.options import FLAG, Option, Scope
from lbproxy.config.servers import ServerConfig
from lbproxy.errors import ConfigError

__all__ = ["Options", "flag_name"]


def flag_name(option: Option) -> str:
    """
    The command-line spelling of a flag: C{--NAME} for one off by default,
    C{--no-NAME} for one on by default.
    """
    return f"no-{option.name}" if option.default else option.name


def _help(option: Option) -> str:
    scope = " Per pool." if option.scope is Scope.POOL else ""
    if option.kind is FLAG:
        return option.help + scope
    default = option.kind.show(option.default)
    return f"{option.help}{scope} [default: {default}]"


def _coerce(option: Option) -> Any:
    def coerce(text: str) -> Any:
        # A UsageError passes through usage.Options as it is; a ValueError
        # would be prefixed with "Parameter type enforcement failed".
        try:
            return option.parse_text(text)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None

    coerce.coerceDoc = ""  # type: ignore[attr-defined]
    return coerce


def _repeatable(option: Option) -> Any:
    def handler(self: Options, value: str) -> None:
        try:
            self[option.name] = (self[option.name] or ()) + option.parse_text(value)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None

    handler.__doc__ = _help(option)
    return handler


def _table() -> tuple[list[list[Any]], list[list[Any]], list[Option]]:
    """
    The C{optFlags} and C{optParameters} of the table's options, and its
    repeatable ones (which get C{opt_} methods).
    """
    flags: list[list[Any]] = []
    parameters: list[list[Any]] = []
    repeatable: list[Option] = []
    for each in all_options():
        if not each.spec.command_line:
            continue
        if each.spec.repeatable:
            repeatable.append(each)
        elif each.kind is FLAG:
            flags.append([flag_name(each), None, _help(each)])
        else:
            # None as the parsed default: "not given", so that --config can
            # refuse options given beside it; the help shows the default.
            parameters.append([each.name, None, None, _help(each), _coerce(each)])
    return flags, parameters, repeatable


_FLAGS, _PARAMETERS, _REPEATABLE = _table()


class Options(usage.Options):
    """
    Options of C{twistd lbproxy}; C{--help} shows every default.

    @ivar config: the configuration, after parsing.
    @ivar config_path: the C{--config} file, if one was given.
    """

    synopsis = "[options]"
    longdesc = (
        "Reverse proxy and load balancer: each request goes to the next "
        "--upstream server in turn (round robin, like nginx's upstream block)."
    )
    optFlags = _FLAGS
    optParameters = [
        *_PARAMETERS,
        [
            "config",
            "c",
            None,
            "A TOML configuration file (see README.rst); SIGHUP reloads it. "
            "Other options then come from the file.",
        ],
    ]

    config: Config
    config_path: str | None = None

    def __init__(self) -> None:
        super().__init__()
        self["upstream"] = []
        self["backup"] = []
        for each in _REPEATABLE:
            self[each.name] = None

    def opt_upstream(self, value: str) -> None:
        # (Help text below: usage.Options prints a docstring as written.)
        try:
            self["upstream"].extend(parse_upstream_list(value))
        except ConfigError as e:
            raise usage.UsageError(f"--upstream: {e}") from None

    def opt_backup(self, value: str) -> None:
        # (Help text below.)
        try:
            self["backup"].extend(
                replace(upstream, backup=True) for upstream in parse_upstream_list(value)
            )
        except ConfigError as e:
            raise usage.UsageError(f"--backup: {e}") from None

    opt_upstream.__doc__ = (
        "Upstream servers HOST:PORT[,HOST:PORT...] (or http://HOST:PORT, "
        "https://HOST:PORT, [::1]:PORT), each optionally followed by parameters as on "
        'nginx\'s server line: "HOST:PORT weight=2 max-conns=10", backup, down; or DNS '
        "names whose records are servers: dns+a://NAME:PORT, dns+srv://_SERVICE._tcp.NAME "
        '(https+dns+a://... for TLS); repeatable; they form the pool "default" '
        "(nginx: upstream { server ...; }). [required, or --demo]"
    )
    opt_backup.__doc__ = (
        "Backup servers HOST:PORT[,...] (or dns+a://NAME:PORT): they take requests "
        "only while every --upstream server is out of rotation (nginx: server ... "
        "backup); repeatable."
    )

    def opt_version(self) -> None:
        """
        Print lbproxy's version and exit.
        """
        print(f"lbproxy {__version__}")
        raise SystemExit(0)

    def parseOptions(self, options: Any = None) -> None:
        """
        Parse, and under twistd turn a usage error into one line on stderr
        and exit status 1.

        twistd answers a subcommand's C{UsageError} by printing its whole
        usage (over 100 lines) before the error; lbproxy's own tests and
        callers (no parent command) still get the C{UsageError}.
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if getattr(self, "parent", None) is None:
                raise
            raise SystemExit(f"twistd lbproxy: {e}") from None

    def _given(self) -> list[str]:
        """
        The options given on the command line, as C{--NAME}.
        """
        given = [f"--{name}" for name in ("upstream", "backup") if self[name]]
        for each in all_options():
            if not each.spec.command_line:
                continue
            if each.kind is FLAG and not each.spec.repeatable:
                if self[flag_name(each)]:
                    given.append(f"--{flag_name(each)}")
            elif self[each.name] is not None:
                given.append(f"--{each.name}")
        return given

    def postOptions(self) -> None:
        """
        Check the options together and build the L{Config}.
        """
        if self["config"] is not None:
            given = self._given()
            if given:
                raise usage.UsageError(
                    f"{given[0]}: with --config, set it in {self['config']} instead"
                )
            self.config_path = self["config"]
            try:
                self.config = load_config(self["config"])
            except ConfigFileError as e:
                raise usage.UsageError("; ".join(e.problems)) from None
            return
        try:
            self.config = self._from_options()
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None

    def _value(self, each: Option) -> Any:
        if each.kind is FLAG and not each.spec.repeatable:
            given = bool(self[flag_name(each)])
            return not each.default if given else each.default
        value = self[each.name]
        return each.default if value is None else value

    def _from_options(self) -> Config:
        demo = self._value(next(o for o in all_options() if o.name == "demo"))
        if demo and self["upstream"]:
            raise ConfigError("--demo and --upstream cannot be combined")
        if not demo and not self["upstream"]:
            raise ConfigError(
                "no upstream servers: give --upstream HOST:PORT[,HOST:PORT...] "
                "(or --demo to try lbproxy)"
            )
        upstreams = [*self["upstream"], *self["backup"]]
        servers = tuple(u for u in upstreams if isinstance(u, ServerConfig))
        sources = tuple(u for u in upstreams if isinstance(u, DnsSource))
        if demo:
            # The pool is filled when the demo apps listen.
            servers = (ServerConfig("127.0.0.1", 3000),)
        settings: dict[Scope, dict[str, Any]] = {Scope.GLOBAL: {}, Scope.POOL: {}}
        for each in all_options():
            if each.spec.command_line:
                settings[each.scope][each.field] = self._value(each)
        pool = PoolConfig("default", servers, sources, **settings[Scope.POOL])
        return Config(pools=(pool,), **settings[Scope.GLOBAL])


for _each in _REPEATABLE:
    setattr(Options, "opt_" + _each.name.replace("-", "_"), _repeatable(_each))
