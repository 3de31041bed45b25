# -*- test-case-name: tests.config.test_options -*-
"""
The one option table: how every option is declared.

An option is a field of the frozen configuration model
(L{lbproxy.config.model}) declared with L{option}: its type (by its field
annotation), default, kind (how it is written and checked), help text
naming its nginx or HAProxy twin, and what a reload does with it.  Everything
else comes from that one declaration:

  - the twistd command line (L{lbproxy.config.commandline}): C{--NAME},
    its help and default, its parser;
  - the configuration file (L{lbproxy.config.file}): the key C{NAME},
    spelled as on the command line, checked by the same kind;
  - the model's defaults;
  - the README's option list (L{lbproxy.config.docs}; a test fails when
    README.rst and the table disagree).

An option's name is its field's name with C{-} for C{_}
(C{read_timeout} is C{--read-timeout} and C{read-timeout = 60}).  Options
of L{lbproxy.config.model.PoolConfig} are per pool: in a file they go in an
C{[upstream.NAME]} table, or at the top level as the default of every pool;
on the command line they apply to the C{--upstream} pool.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

from lbproxy.errors import ConfigError

__all__ = [
    "BYTES",
    "COUNT",
    "ENDPOINTS",
    "FLAG",
    "POSITIVE",
    "PORT",
    "SECONDS",
    "TEXT",
    "BYTES_OR_ZERO",
    "Text",
    "Choice",
    "Kind",
    "Option",
    "Reload",
    "Scope",
    "option",
    "check_fields",
    "needs_restart",
    "options_of",
    "parse_duration",
    "parse_size",
]


class Reload(enum.Enum):
    """
    What a reload (SIGHUP) does with a changed option.
    """

    #: New requests and connections use the new value at once.
    APPLIED = "applied"
    #: Only a restart changes it; a reload logs that it changed.
    RESTART = "restart"


class Scope(enum.Enum):
    """
    Where an option lives.
    """

    #: The whole process.
    GLOBAL = "global"
    #: One pool: an C{[upstream.NAME]} key, or a top-level default for
    #: every pool.
    POOL = "pool"


class Kind:
    """
    How an option's value is written and checked: on the command line as
    text, in the file as a TOML value.

    @ivar metavar: what the value is called in C{--help} (C{SECONDS}).
    @ivar expected: what a good value is, for error messages.
    """

    metavar = "VALUE"
    expected = "a value"

    def from_text(self, text: str) -> Any:
        """
        The value of a command-line argument.

        @raise ConfigError: saying what was expected, not naming the option
            (the caller prefixes it).
        """
        return self.from_file(text)

    def from_file(self, value: object) -> Any:
        """
        The value of a TOML value.

        @raise ConfigError: saying what was expected.
        """
        raise NotImplementedError

    def check(self, value: Any) -> None:
        """
        Check a value of the model's type (made by a program rather than
        parsed), as L{from_file} checks a file's.

        @raise ConfigError: saying what was expected.
        """
        self.from_file(value)

    def show(self, value: Any) -> str:
        """
        A value as the user would write it, for C{--help} and the README.
        """
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)

    def wrong(self, value: object) -> ConfigError:
        """
        The error for a value that is not one of these.
        """
        return ConfigError(f"expected {self.expected}, got {value!r}")


def parse_duration(text: str) -> float:
    """
    A positive number of seconds, fractions allowed (C{"5"}, C{"0.5"}).

    @raise ConfigError: if C{text} is not a positive finite number.
    """
    return SECONDS.from_text(text)  # type: ignore[no-any-return]


class _Seconds(Kind):
    metavar = "SECONDS"
    expected = "a positive number of seconds"

    def from_text(self, text: str) -> float:
        try:
            return self.from_file(float(text))
        except (ValueError, ConfigError):
            raise self.wrong(text) from None

    def from_file(self, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.wrong(value)
        if not 0 < value < math.inf:
            raise self.wrong(value)
        return float(value)


class _Whole(Kind):
    """
    A whole number of at least C{minimum}, and at most C{maximum} if given.
    """

    def __init__(self, minimum: int, metavar: str, maximum: int | None = None) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.metavar = metavar
        upper = f" to {maximum}" if maximum is not None else " or more"
        self.expected = f"a whole number, {minimum}{upper}"

    def from_text(self, text: str) -> int:
        try:
            return self.from_file(int(text, 10))
        except (ValueError, ConfigError):
            raise self.wrong(text) from None

    def from_file(self, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.wrong(value)
        if value < self.minimum or (self.maximum is not None and value > self.maximum):
            raise self.wrong(value)
        return value


_SIZE_RE = re.compile(r"([0-9]+)([kKmMgG]?)")
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(text: str) -> int:
    """
    A size in bytes as nginx writes it: C{8192}, C{8k}, C{1m}, C{2g}.

    @raise ConfigError: if C{text} is not such a size.
    """
    match = _SIZE_RE.fullmatch(text.strip())
    if match is None:
        raise ConfigError(f"expected a size in bytes (8192, 8k, 1m), got {text!r}")
    digits, unit = match.groups()
    return int(digits) * _SIZE_UNITS[unit.lower()]


class _Bytes(_Whole):
    """
    A size in bytes: a whole number, or nginx's C{8k} and C{1m}.
    """

    def __init__(self, minimum: int) -> None:
        super().__init__(minimum, "BYTES")
        self.expected = f"a size in bytes, {minimum} or more (8192, 8k, 1m)"

    def from_text(self, text: str) -> int:
        try:
            return super().from_file(parse_size(text))
        except ConfigError:
            raise self.wrong(text) from None

    def from_file(self, value: object) -> int:
        if isinstance(value, str):
            return self.from_text(value)
        return super().from_file(value)

    def show(self, value: Any) -> str:
        return str(value)


class _Flag(Kind):
    metavar = ""
    expected = "true or false"

    def from_file(self, value: object) -> bool:
        if not isinstance(value, bool):
            raise self.wrong(value)
        return value


class Text(Kind):
    """
    A string; C{check} may refuse some (returning what is wrong).
    """

    def __init__(
        self,
        metavar: str,
        check: Callable[[str], str | None] | None = None,
        expected: str = "a string",
    ) -> None:
        self.metavar = metavar
        self._check = check
        self.expected = expected

    def from_file(self, value: object) -> str:
        if not isinstance(value, str):
            raise self.wrong(value)
        if self._check is not None:
            problem = self._check(value)
            if problem is not None:
                raise ConfigError(f"{problem}, got {value!r}")
        return value

    def show(self, value: Any) -> str:
        return str(value) if value else '""'


class Choice(Text):
    """
    One of a fixed set of names.
    """

    def __init__(self, *names: str) -> None:
        self.names = names
        expected = "one of " + ", ".join(names)
        super().__init__("|".join(names), self._is_one, expected)

    def _is_one(self, value: str) -> str | None:
        return None if value in self.names else f"expected {self.expected}"


class _Endpoints(Kind):
    """
    Twisted server endpoint descriptions (C{tcp:8080}); repeatable on the
    command line, a list (or one string) in the file.  Whether Twisted can
    parse them is checked with the rest of what the proxy needs to start
    (L{lbproxy.config.validate}).
    """

    metavar = "ENDPOINT"
    expected = "a list of endpoint strings"

    def from_text(self, text: str) -> tuple[str, ...]:
        if not text.strip():
            raise self.wrong(text)
        return (text,)

    def from_file(self, value: object) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            raise self.wrong(value)
        if not all(isinstance(item, str) and item.strip() for item in value):
            raise self.wrong(value)
        return tuple(value)

    def check(self, value: Any) -> None:
        if not isinstance(value, tuple):
            raise self.wrong(value)
        self.from_file(list(value))

    def show(self, value: Any) -> str:
        return ", ".join(value)


SECONDS: Kind = _Seconds()
#: A whole number, 0 or more.
COUNT: Kind = _Whole(0, "N")
#: A whole number, 1 or more.
POSITIVE: Kind = _Whole(1, "N")
#: A TCP port, or 0 for off.
PORT: Kind = _Whole(0, "PORT", 65535)
#: Bytes, 1 or more.
BYTES: Kind = _Bytes(1)
#: Bytes, 0 (off or no limit) or more.
BYTES_OR_ZERO: Kind = _Bytes(0)
FLAG: Kind = _Flag()
TEXT: Kind = Text("TEXT")
ENDPOINTS: Kind = _Endpoints()


@dataclass(frozen=True, slots=True)
class OptionSpec:
    """
    What L{option} records in a field's metadata.
    """

    kind: Kind
    help: str
    reload: Reload
    command_line: bool
    file: bool
    repeatable: bool


def option(
    default: Any,
    kind: Kind,
    help: str,
    *,
    reload: Reload = Reload.APPLIED,
    command_line: bool = True,
    file: bool = True,
    repeatable: bool = False,
) -> Any:
    """
    Declare a field of the configuration model as an option.

    @param default: its default, the anchors' (nginx's or HAProxy's) unless
        the help says why not.
    @param kind: how it is written and checked.
    @param help: one or more sentences for C{--help} and the README,
        naming the nginx or HAProxy twin and its default.
    @param reload: what a reload does with a change.
    @param command_line: whether C{twistd lbproxy} takes it.
    @param file: whether the configuration file takes it.
    @param repeatable: the command-line option may be given several times,
        adding to a list.
    @return: a dataclass field.
    """
    spec = OptionSpec(kind, help, reload, command_line, file, repeatable)
    return field(default=default, metadata={"option": spec})


@dataclass(frozen=True, slots=True)
class Option:
    """
    One declared option.

    @ivar name: C{read-timeout}: the command-line option without dashes and
        the file key.
    @ivar field: C{read_timeout}: the model's field.
    @ivar default: its default.
    @ivar scope: global, or per pool.
    """

    name: str
    field: str
    default: Any
    scope: Scope
    spec: OptionSpec

    @property
    def kind(self) -> Kind:
        """
        How it is written and checked.
        """
        return self.spec.kind

    @property
    def help(self) -> str:
        """
        Its help text.
        """
        return self.spec.help

    @property
    def reload(self) -> Reload:
        """
        What a reload does with a change.
        """
        return self.spec.reload

    def parse_text(self, text: str) -> Any:
        """
        The value of C{--NAME TEXT}.

        @raise ConfigError: naming the option and the bad value.
        """
        try:
            return self.kind.from_text(text)
        except ConfigError as e:
            raise ConfigError(f"--{self.name}: {e}") from None

    def parse_file(self, value: object, where: str) -> Any:
        """
        The value of C{NAME = value} in a file.

        @param where: the key path for the message (C{upstream.web.fall}).
        @raise ConfigError: naming C{where} and the bad value.
        """
        try:
            return self.kind.from_file(value)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None


def check_fields(record: Any, scope: Scope) -> None:
    """
    Check every option field of a model record by its kind: the model's
    validation, derived from the table (called from C{__post_init__}).

    @raise ConfigError: naming the option and the bad value.
    """
    for each in options_of(type(record), scope):
        try:
            each.kind.check(getattr(record, each.field))
        except ConfigError as e:
            raise ConfigError(f"{each.name}: {e}") from None


def needs_restart(old: Any, new: Any, scope: Scope) -> list[str]:
    """
    The options a reload from C{old} to C{new} (records of one model)
    changes but cannot apply: those declared C{reload=Reload.RESTART}.

    @return: their names, in declaration order.
    """
    return [
        each.name
        for each in options_of(type(new), scope)
        if each.reload is Reload.RESTART and getattr(old, each.field) != getattr(new, each.field)
    ]


def options_of(model: type, scope: Scope) -> Iterator[Option]:
    """
    The options declared on a model class, in declaration order.
    """
    for each in fields(model):
        spec = each.metadata.get("option")
        if spec is None:
            continue
        yield Option(each.name.replace("_", "-"), each.name, _default(each), scope, spec)


def _default(each: Field[Any]) -> Any:
    if each.default is not MISSING:
        return each.default
    raise TypeError(f"option {each.name} has no default")
