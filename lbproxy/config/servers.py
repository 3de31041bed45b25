# -*- test-case-name: tests.config.test_servers -*-
"""
Upstream server addresses: L{ServerConfig} and the parsers of
C{--upstream} and C{servers = [...]} entries.

An entry is an address, then, as on an nginx C{server} line, parameters
separated by spaces: C{"10.0.0.5:3000 weight=3 max-conns=100"},
C{"10.0.0.6:3000 backup"}, C{"10.0.0.7:3000 down"}.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from lbproxy.errors import ConfigError

__all__ = ["ServerConfig", "parse_server", "parse_server_entry", "parse_server_list"]


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """
    One upstream (app) server.

    @ivar host: a host name or IP address (IPv6 without brackets).
    @ivar port: the TCP port.
    @ivar scheme: C{"http"}, or C{"https"} for TLS to the server.
    @ivar weight: relative share of requests, as nginx's C{weight=}.
    @ivar backup: only used while every primary server is down.
    @ivar max_conns: most requests in flight to it at once, 0 for no limit
        (nginx's C{max_conns=}, HAProxy's C{maxconn}).
    @ivar down: listed but never used (nginx's C{down}), so that taking a
        server out keeps the places of the others (consistent hashing).
    @ivar tls_name: the name an C{https} server's certificate must match
        (and the SNI sent); empty for C{host}.  Servers found by DNS have
        an address as their host and the name looked up here.
    """

    host: str
    port: int
    scheme: str = "http"
    weight: int = 1
    backup: bool = False
    max_conns: int = 0
    down: bool = False
    tls_name: str = ""

    def __post_init__(self) -> None:
        if not self.host:
            raise ConfigError("upstream server has an empty host name")
        if not 0 < self.port < 65536:
            raise ConfigError(f"upstream port {self.port} is not in 1-65535")
        if self.scheme not in ("http", "https"):
            raise ConfigError(
                f"upstream scheme {self.scheme!r} is not supported (use http or https)"
            )
        if self.weight < 1:
            raise ConfigError(f"upstream weight {self.weight} must be at least 1")
        if self.max_conns < 0:
            raise ConfigError(f"upstream max-conns {self.max_conns} must be 0 or more")

    @property
    def address(self) -> str:
        """
        C{host:port}, with brackets around an IPv6 literal, as logs show it.
        """
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    @property
    def key(self) -> tuple[str, str, int]:
        """
        What makes two configurations' servers the same server (scheme,
        host, port): a reload keeps its state.
        """
        return (self.scheme, self.host, self.port)


def parse_server(text: str) -> ServerConfig:
    """
    Parse one upstream address.

    Accepts C{host:port}, C{http://host:port}, C{https://host:port},
    C{[::1]:3000} and C{http://[::1]:3000}.  A trailing C{/} is allowed; any
    other path is not (lbproxy forwards the client's path unchanged, as
    nginx's C{proxy_pass} without a URI does).

    @param text: the address as the user wrote it.
    @return: the server.
    @raise ConfigError: if C{text} is not such an address.
    """
    raw = text.strip()
    if not raw:
        raise ConfigError("empty upstream address")
    candidate = raw if "://" in raw else "http://" + raw
    try:
        parts = urlsplit(candidate)
        port = parts.port
    except ValueError as e:
        raise ConfigError(f"bad upstream address {text!r}: {e}") from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError(
            f"bad upstream address {text!r}: scheme {parts.scheme!r} is not supported"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"bad upstream address {text!r}: give HOST:PORT without a path")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"bad upstream address {text!r}: no user info allowed")
    host = parts.hostname
    if not host:
        raise ConfigError(f"bad upstream address {text!r}: no host name")
    if port is None:
        raise ConfigError(f"bad upstream address {text!r}: expected HOST:PORT")
    try:
        return ServerConfig(host=host, port=port, scheme=parts.scheme)
    except ConfigError as e:
        # urlsplit accepts port 0; say which address of a list is wrong.
        raise ConfigError(f"bad upstream address {text!r}: {e}") from None


def parse_server_entry(text: str) -> ServerConfig:
    """
    Parse one upstream entry: an address (as L{parse_server}), then
    parameters separated by spaces, as on an nginx C{server} line:
    C{weight=N}, C{max-conns=N}, C{backup}, C{down}.

    @param text: e.g. C{"localhost:3000 weight=2 max-conns=10"}.
    @return: the server.
    @raise ConfigError: naming the entry and the parameter that is wrong.
    """
    address, *parameters = text.split() or [""]
    server = parse_server(address)
    numbers = {"weight": server.weight, "max-conns": server.max_conns}
    flags = {"backup": server.backup, "down": server.down}
    for parameter in parameters:
        name, equals, value = parameter.partition("=")
        if name in flags and not equals:
            flags[name] = True
        elif name in numbers and equals:
            least = 1 if name == "weight" else 0
            if not (value.isascii() and value.isdigit()) or int(value) < least:
                raise ConfigError(
                    f"bad upstream entry {text.strip()!r}: {name} takes a whole "
                    f"number, {least} or more, got {value!r}"
                )
            numbers[name] = int(value)
        else:
            raise ConfigError(
                f"bad upstream entry {text.strip()!r}: unknown parameter {parameter!r} "
                "(expected weight=N, max-conns=N, backup or down)"
            )
    return replace(
        server,
        weight=numbers["weight"],
        max_conns=numbers["max-conns"],
        backup=flags["backup"],
        down=flags["down"],
    )


def parse_server_list(text: str) -> tuple[ServerConfig, ...]:
    """
    Parse a comma-separated list of upstream entries (L{parse_server_entry}).

    @param text: e.g. C{"localhost:3000,localhost:3001 weight=2 backup"}.
    @return: the servers in the order given.
    @raise ConfigError: if any entry is bad or the list is empty.
    """
    items = [item for item in text.split(",") if item.strip()]
    if not items:
        raise ConfigError(f"bad upstream list {text!r}: no addresses")
    return tuple(parse_server_entry(item) for item in items)
