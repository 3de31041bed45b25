# -*- test-case-name: tests.config.test_model -*-
"""
The configuration model: frozen values built once from the command line.

Everything below L{lbproxy.tap} takes a L{Config}; nothing else reads
command-line options.  Parsing helpers are pure functions that raise
L{ConfigError} with one readable line naming the bad value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from lbproxy.errors import ConfigError

__all__ = [
    "Config",
    "HealthConfig",
    "PoolConfig",
    "RouteConfig",
    "ServerConfig",
    "parse_duration",
    "parse_server",
    "parse_server_list",
    "parse_status_ranges",
]


#: A request target in origin form: visible ASCII, no space, no C{#}.
_TARGET = re.compile(r"/[!-\"$-~]*")
#: A C{Host} value: a name, an IPv4 address or a bracketed IPv6 address,
#: and an optional port.
_HOST = re.compile(r"([A-Za-z0-9._\-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """
    One upstream (app) server.

    @ivar host: a host name or IP address (IPv6 without brackets).
    @ivar port: the TCP port.
    @ivar scheme: C{"http"}, or C{"https"} for TLS to the server.
    @ivar weight: relative share of requests, as nginx's C{weight=}.
    @ivar backup: only used while every primary server is down.
    """

    host: str
    port: int
    scheme: str = "http"
    weight: int = 1
    backup: bool = False

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

    @property
    def address(self) -> str:
        """
        C{host:port}, with brackets around an IPv6 literal, as logs show it.
        """
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """
    Active health checks of a pool's servers, with HAProxy's defaults.

    @ivar enabled: whether checks run at all.
    @ivar path: the target of the probe's C{GET}.
    @ivar interval: seconds between two checks of one server (HAProxy
        C{inter 2s}).
    @ivar timeout: seconds a check may take (HAProxy C{timeout check},
        defaulting to C{inter}; 1 s here so a hung server is seen sooner).
    @ivar statuses: C{(low, high)} status ranges that count as healthy.
    @ivar host: the probe's C{Host} header; the server's address if L{None}.
    @ivar fall: consecutive failed checks that take a server out (HAProxy
        C{fall 3}).
    @ivar rise: consecutive passed checks that bring it back (HAProxy
        C{rise 2}).
    """

    enabled: bool = True
    path: str = "/"
    interval: float = 2.0
    timeout: float = 1.0
    statuses: tuple[tuple[int, int], ...] = ((200, 399),)
    host: str | None = None
    fall: int = 3
    rise: int = 2

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise ConfigError(f"health check path {self.path!r} must start with /")
        # Both go into each probe's request as ASCII: refuse here what
        # would fail every check.
        if not _TARGET.fullmatch(self.path):
            raise ConfigError(
                f"health check path {self.path!r} must be visible ASCII without spaces or #"
            )
        if self.host is not None and not _HOST.fullmatch(self.host):
            raise ConfigError(f"health check host {self.host!r} is not a HOST[:PORT]")
        if self.fall < 1 or self.rise < 1:
            raise ConfigError(f"fall {self.fall} and rise {self.rise} must be at least 1")

    def healthy(self, status: int) -> bool:
        """
        Whether a probe's answer status counts as healthy.
        """
        return any(low <= status <= high for low, high in self.statuses)


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """
    A named group of servers that share one balancer (nginx's C{upstream}).

    @ivar health: its active health checks.
    @ivar max_fails: failed attempts within C{fail_timeout} that take a
        server out of rotation for C{fail_timeout} (nginx's C{max_fails=1},
        C{fail_timeout=10s}); 0 turns passive tracking off.
    @ivar max_tries: servers one request may be tried on; L{None} for all
        of the pool's (nginx's C{proxy_next_upstream_tries 0}).
    """

    name: str
    servers: tuple[ServerConfig, ...]
    health: HealthConfig = field(default_factory=HealthConfig)
    max_fails: int = 1
    fail_timeout: float = 10.0
    max_tries: int | None = None

    def __post_init__(self) -> None:
        if not self.servers:
            raise ConfigError(f"upstream pool {self.name!r} has no servers")
        if self.max_fails < 0:
            raise ConfigError(f"max fails {self.max_fails} must be 0 or more")
        if self.max_tries is not None and self.max_tries < 1:
            raise ConfigError(f"max tries {self.max_tries} must be at least 1")


@dataclass(frozen=True, slots=True)
class RouteConfig:
    """
    Which requests go to which pool (nginx's C{location} and
    C{server_name}); the first route that matches wins.

    @ivar upstream: the pool's name.
    @ivar host: the C{Host} to match, exactly (case-insensitive, port
        ignored) or C{*.example.com} for any subdomain; L{None} for any.
    @ivar path: a prefix of the request path; L{None} for any.
    """

    upstream: str
    host: str | None = None
    path: str | None = None

    def __post_init__(self) -> None:
        if self.path is not None and not self.path.startswith("/"):
            raise ConfigError(f"route path {self.path!r} must start with /")
        if self.host is not None and (not self.host or "/" in self.host):
            raise ConfigError(f"route host {self.host!r} is not a host name")


@dataclass(frozen=True, slots=True)
class Config:
    """
    The whole configuration of one lbproxy process.

    Defaults follow nginx where nginx has the setting; each is documented
    beside its command-line option in L{lbproxy.tap.Options}.
    """

    pools: tuple[PoolConfig, ...]
    listen: tuple[str, ...] = ("tcp:8080",)
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    client_timeout: float = 60.0
    upstream_keepalive: int = 32
    upstream_idle_timeout: float = 4.0
    access_log: str = "-"
    demo: bool = field(default=False)
    routes: tuple[RouteConfig, ...] = ()
    drain_timeout: float = 10.0
    # Client framing limits and timeouts (lbproxy.http.framing); 0 is no limit
    # on the body size.
    client_header_timeout: float = 60.0
    client_body_timeout: float = 60.0
    max_body_size: int = 0
    max_request_line: int = 8192
    max_header_line: int = 8192
    max_headers_size: int = 65536
    max_headers: int = 100
    # TLS (lbproxy.tls): listener certificates by SNI, upstream trust, and
    # the HTTPS policies of the client side; "" and 0 are off.
    tls_cert_dir: str = ""
    upstream_ca: str = ""
    upstream_client_cert: str = ""
    upstream_insecure: bool = False
    redirect_https: int = 0
    hsts: int = 0
    # Upstream answers (lbproxy.upstream.connection): the largest response head, 502
    # beyond (nginx's "upstream sent too big header"); and how long a client
    # may take no byte of its answer (lbproxy.proxy.resource; nginx's
    # send_timeout).
    max_upstream_headers_size: int = 65536
    send_timeout: float = 60.0

    def __post_init__(self) -> None:
        if not self.pools:
            raise ConfigError("no upstream servers: give --upstream HOST:PORT")
        names = [pool.name for pool in self.pools]
        for name in names:
            if names.count(name) > 1:
                raise ConfigError(f"upstream pool {name!r} is defined twice")
        for route in self.routes:
            if route.upstream not in names:
                raise ConfigError(
                    f"route to {route.upstream!r}: no such upstream pool "
                    f"(pools: {', '.join(names)})"
                )
        if len(self.pools) > 1 and not self.routes:
            raise ConfigError(
                f"{len(self.pools)} upstream pools but no route: add [[route]] tables "
                "saying which requests go where"
            )
        if not self.listen:
            raise ConfigError("nothing to listen on: give --listen ENDPOINT")
        if not self.access_log:
            raise ConfigError("access log: give a file path, '-' or 'off'")
        if self.upstream_keepalive < 0:
            raise ConfigError(f"upstream keepalive {self.upstream_keepalive} must be 0 or more")
        if self.upstream_insecure and self.upstream_ca:
            raise ConfigError("upstream insecure and upstream CA contradict: give one of them")
        if not 0 <= self.redirect_https < 65536:
            raise ConfigError(f"redirect https port {self.redirect_https} is not in 1-65535")
        if self.hsts < 0:
            raise ConfigError(f"hsts {self.hsts} must be 0 or more seconds")
        for name in (
            "max_request_line",
            "max_header_line",
            "max_headers_size",
            "max_headers",
            "max_upstream_headers_size",
        ):
            value = getattr(self, name)
            if value < 1:
                raise ConfigError(f"{name.replace('_', '-')} {value} must be 1 or more")
        if self.max_body_size < 0:
            raise ConfigError(f"max-body-size {self.max_body_size} must be 0 (no limit) or more")


def parse_server(text: str) -> ServerConfig:
    """
    Parse one upstream address.

    Accepts C{host:port}, C{http://host:port}, C{https://host:port},
    C{[::1]:3000} and C{http://[::1]:3000}.  A trailing C{/} is allowed; any other path is not
    (lbproxy forwards the client's path unchanged, as nginx's C{proxy_pass}
    without a URI does).

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


def parse_server_list(text: str) -> tuple[ServerConfig, ...]:
    """
    Parse a comma-separated list of upstream addresses.

    @param text: e.g. C{"localhost:3000,localhost:3001"}.
    @return: the servers in the order given.
    @raise ConfigError: if any address is bad or the list is empty.
    """
    items = [item for item in text.split(",") if item.strip()]
    if not items:
        raise ConfigError(f"bad upstream list {text!r}: no addresses")
    return tuple(parse_server(item) for item in items)


def parse_status_ranges(text: str) -> tuple[tuple[int, int], ...]:
    """
    Parse healthy status codes: C{"200-399"}, C{"200,204"}, C{"200-299,404"}.

    @return: C{(low, high)} ranges, inclusive.
    @raise ConfigError: if a part is not a status or a range of statuses.
    """
    ranges = []
    for part in text.split(","):
        low_text, _, high_text = part.strip().partition("-")
        try:
            low = int(low_text)
            high = int(high_text) if high_text else low
        except ValueError:
            raise ConfigError(f"bad health status {text!r}: expected e.g. 200-399") from None
        if not 100 <= low <= high <= 599:
            raise ConfigError(f"bad health status {text!r}: {part.strip()!r} is not in 100-599")
        ranges.append((low, high))
    return tuple(ranges)


def parse_duration(text: str, name: str) -> float:
    """
    Parse a positive number of seconds (fractions allowed).

    @param text: e.g. C{"5"} or C{"0.5"}.
    @param name: the option's name, for the error message.
    @return: the seconds.
    @raise ConfigError: if C{text} is not a positive finite number.
    """
    try:
        seconds = float(text)
    except ValueError:
        raise ConfigError(f"{name} {text!r} is not a number of seconds") from None
    if not 0 < seconds < float("inf"):
        raise ConfigError(f"{name} {text!r} must be a positive number of seconds")
    return seconds
