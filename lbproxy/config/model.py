# -*- test-case-name: tests.config.test_model -*-
"""
The configuration model: frozen values built once, from the command line
(L{lbproxy.config.commandline}) or a file (L{lbproxy.config.file}).

Every option is declared here, once, with L{option}: its default, kind,
help and reload behaviour (see L{lbproxy.config.options}).  Everything
below the composition root takes a L{Config}; nothing else reads options.
Defaults are nginx's or HAProxy's unless the help says why not.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from lbproxy.config.dns import DnsSource, parse_resolver
from lbproxy.config.options import (
    BYTES,
    BYTES_OR_ZERO,
    COUNT,
    ENDPOINTS,
    FLAG,
    PORT,
    POSITIVE,
    SECONDS,
    Choice,
    Kind,
    Option,
    Reload,
    Scope,
    Text,
    check_fields,
    option,
    options_of,
)
from lbproxy.config.servers import ServerConfig
from lbproxy.errors import ConfigError

__all__ = [
    "Config",
    "DnsSource",
    "PoolConfig",
    "RouteConfig",
    "ServerConfig",
    "admin_token_problem",
    "all_options",
    "parse_status_ranges",
]

StatusRanges = tuple[tuple[int, int], ...]


def parse_status_ranges(text: str) -> StatusRanges:
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
            raise ConfigError(f"expected statuses such as 200-399, got {text!r}") from None
        if not 100 <= low <= high <= 599:
            raise ConfigError(f"status {part.strip()!r} is not in 100-599, got {text!r}")
        ranges.append((low, high))
    return tuple(ranges)


class _Statuses(Kind):
    metavar = "STATUSES"
    expected = "statuses such as 200-399 or 200,204"

    def check(self, value: object) -> None:
        if not isinstance(value, tuple) or not value:
            raise self.wrong(value)
        for pair in value:
            if not (
                isinstance(pair, tuple) and len(pair) == 2 and 100 <= pair[0] <= pair[1] <= 599
            ):
                raise self.wrong(value)

    def from_file(self, value: object) -> StatusRanges:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise self.wrong(value)
        return parse_status_ranges(value)

    def show(self, value: object) -> str:
        assert isinstance(value, tuple)
        return ",".join(f"{low}-{high}" if low != high else f"{low}" for low, high in value)


#: A request target in origin form: visible ASCII, no space, no C{#}.
_TARGET = re.compile(r"/[!-\"$-~]*")
#: A C{Host} value: a name, an IPv4 address or a bracketed IPv6 address,
#: and an optional port.
_HOST = re.compile(r"([A-Za-z0-9._\-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?")


def _origin_path(value: str) -> str | None:
    # It goes into each probe's request line as it is: refuse here what
    # would fail every check.
    if _TARGET.fullmatch(value) is None:
        return "expected a path starting with /, visible ASCII without spaces or #"
    return None


def _host(value: str) -> str | None:
    if value and _HOST.fullmatch(value) is None:
        return "expected HOST[:PORT]"
    return None


def _access_log(value: str) -> str | None:
    return None if value else "expected a file path, '-' or 'off'"


class _Workers(Kind):
    """
    A number of worker processes, or C{auto}: one per core
    (C{os.cpu_count()}), as nginx's C{worker_processes auto}.
    """

    metavar = "N|auto"
    expected = "a whole number, 1 or more, or 'auto'"

    def from_text(self, text: str) -> int:
        if text.strip() == "auto":
            return os.cpu_count() or 1
        try:
            return self.from_file(int(text, 10))
        except (ValueError, ConfigError):
            raise self.wrong(text) from None

    def from_file(self, value: object) -> int:
        if value == "auto":
            return os.cpu_count() or 1
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.wrong(value)
        return value


#: A bearer token as RFC 6750 section 2.1 writes one (C{b64token}), so that
#: a token with a space or a quote cannot be set and then never match.
_BEARER = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def admin_token_problem(value: str) -> str | None:
    """
    What is wrong with an admin token (set, or read from its file), or
    L{None}.
    """
    if value and _BEARER.fullmatch(value) is None:
        return "expected letters, digits and -._~+/ (a bearer token)"
    return None


class _Token(Text):
    """
    A secret: its errors do not repeat it (they reach logs and terminals).
    """

    def __init__(self) -> None:
        super().__init__("TOKEN", admin_token_problem, "a bearer token")

    def from_file(self, value: object) -> str:
        if not isinstance(value, str):
            raise ConfigError(f"expected {self.expected}")
        problem = admin_token_problem(value)
        if problem is not None:
            raise ConfigError(problem)
        return value


def _endpoint_or_off(value: str) -> str | None:
    return None if value == "" or value.strip() else "expected an endpoint string"


#: An HTTP token (RFC 9110 section 5.6.2): header and cookie names.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: A strategy's name; which names exist is the balancing layer's table
#: (L{lbproxy.balancing.registry.installed_strategies}, plugins), checked with the rest of
#: what start and reload need (L{lbproxy.service.validate}).
_NAME = re.compile(r"[a-z][a-z0-9_-]*")


def _strategy(value: str) -> str | None:
    if _NAME.fullmatch(value) is None:
        return "expected a strategy name such as roundrobin or leastconn (see lbproxy balancers)"
    return None


def _hash_key(value: str) -> str | None:
    kind, colon, name = value.partition(":")
    if (kind in ("ip", "path") and not colon) or (
        kind in ("header", "cookie") and _TOKEN.fullmatch(name)
    ):
        return None
    return "expected ip, path, header:NAME or cookie:NAME"


def _cookie_name(value: str) -> str | None:
    if value and _TOKEN.fullmatch(value) is None:
        return "expected a cookie name (letters, digits, - and _), or empty for off"
    return None


def _resolver(value: str) -> str | None:
    if not value:
        return None
    try:
        parse_resolver(value)
    except ConfigError:
        return "expected a DNS server IP[:PORT], or empty for the system's"
    return None


STATUSES: Kind = _Statuses()
WORKERS: Kind = _Workers()
PATH: Kind = Text("PATH", _origin_path, "a path starting with /")
FILE: Kind = Text("FILE")
HOST: Kind = Text("HOST", _host, "HOST[:PORT]")
ACCESS_LOG: Kind = Text("PATH|-|off", _access_log, "a file path, '-' or 'off'")
ENDPOINT: Kind = Text("ENDPOINT", _endpoint_or_off, "an endpoint string")
TOKEN: Kind = _Token()
STRATEGY: Kind = Text("NAME", _strategy, "a strategy name")
HASH_KEY: Kind = Text("ip|path|header:NAME|cookie:NAME", _hash_key, "a hash key")
COOKIE_NAME: Kind = Text("NAME", _cookie_name, "a cookie name")
RESOLVER: Kind = Text("IP:PORT", _resolver, "a DNS server IP[:PORT]")


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """
    A named group of servers that share one balancer (nginx's C{upstream}),
    and the options that apply per pool: active health checks (HAProxy's
    defaults), passive tracking and retries (nginx's).

    @ivar servers: the servers named in the configuration.
    @ivar sources: DNS names whose records are servers too
        (L{lbproxy.discovery}); a pool may have only these, and then
        starts empty until they resolve.
    """

    name: str
    servers: tuple[ServerConfig, ...]
    sources: tuple[DnsSource, ...] = ()

    # Active health checks (lbproxy.balancing.health).
    health_check: bool = option(
        True,
        FLAG,
        "Active health checks: GET --health-path on a new connection to each "
        "server every --health-interval (HAProxy's check; nginx Plus's "
        "health_check). --no-health-check turns them off.",
    )
    health_path: str = option("/", PATH, "The target of the health check's GET.")
    health_interval: float = option(
        2.0, SECONDS, "Seconds between two checks of a server (HAProxy: inter 2s)."
    )
    health_timeout: float = option(
        1.0,
        SECONDS,
        "Seconds a check may take to connect and answer whole (HAProxy's "
        "timeout check defaults to inter; 1 s sees a hung server sooner).",
    )
    health_status: StatusRanges = option(
        ((200, 399),),
        STATUSES,
        "Statuses that count as healthy, e.g. 200-399 or 200,204 (HAProxy: http-check expect).",
    )
    health_host: str = option(
        "", HOST, "The Host header of checks; empty for the server's own address."
    )
    fall: int = option(
        3, POSITIVE, "Consecutive failed checks that take a server out (HAProxy: fall 3)."
    )
    rise: int = option(
        2, POSITIVE, "Consecutive passed checks that bring it back (HAProxy: rise 2)."
    )

    # Passive tracking and retries (lbproxy.balancing.pool).
    max_fails: int = option(
        1,
        COUNT,
        "Failed requests (refused, timed out, not HTTP) within --fail-timeout that "
        "take a server out for --fail-timeout (nginx: max_fails=1); 0 turns this off.",
    )
    fail_timeout: float = option(
        10.0,
        SECONDS,
        "The window of --max-fails, and how long a server stays out (nginx: fail_timeout=10s).",
    )
    max_tries: int = option(
        0,
        COUNT,
        "Servers one request may be tried on when connecting fails; 0 is all of "
        "the pool's (nginx: proxy_next_upstream_tries 0).",
    )

    # Balancing (lbproxy.balancing.strategies), stickiness and the queue of
    # servers at their max-conns (lbproxy.balancing.pool).
    balance: str = option(
        "roundrobin",
        STRATEGY,
        "How each request's server is chosen: roundrobin (nginx's default, smooth "
        "weighted), leastconn (fewest requests in flight for its weight; nginx: "
        "least_conn, HAProxy: balance leastconn), random2 (the less busy of two "
        "random servers; nginx: random two least_conn), ewma (the lower of two "
        "random servers' peak-EWMA response time x requests in flight, Finagle's "
        "and Linkerd's), hash (consistent hashing of --hash-key; nginx: hash ... "
        "consistent, HAProxy: hash-type consistent).",
    )
    hash_key: str = option(
        "ip",
        HASH_KEY,
        "What --balance hash hashes: ip (the client's address; nginx: ip_hash, "
        "HAProxy: balance source), header:NAME (HAProxy: balance hdr(NAME)), "
        "cookie:NAME, or path (the target without its query; HAProxy: balance "
        "path). A request without it goes round robin, as in HAProxy.",
    )
    ewma_decay: float = option(
        10.0,
        SECONDS,
        "Seconds over which --balance ewma forgets a slow answer: a slow server "
        "is avoided at once, and once fast again gets its share back within a "
        "few times this (Finagle's decayTime; Linkerd: 10 s).",
    )
    sticky_cookie: str = option(
        "",
        COOKIE_NAME,
        "Keep each client on one server with a cookie of this name naming the "
        "server by an opaque id; empty is off (HAProxy: cookie NAME insert; nginx "
        "Plus: sticky cookie). Works with every --balance.",
    )
    queue_timeout: float = option(
        10.0,
        SECONDS,
        "Seconds a request may wait for a server below its max-conns when every "
        "server is at its limit; 503 after (HAProxy: timeout queue).",
    )
    max_queue: int = option(
        1000,
        COUNT,
        "Requests that may wait in that queue per pool; 503 at once beyond; 0 is "
        "no limit but --queue-timeout (nginx Plus: queue N).",
    )
    # Servers found by DNS (lbproxy.discovery).
    dns_refresh: float = option(
        30.0,
        SECONDS,
        "Most seconds between two lookups of a dns+a:// or dns+srv:// upstream: "
        "names are looked up again when their records' TTL runs out, at most "
        "this long and at least 1 s apart (HAProxy: hold valid 10s; nginx "
        "Plus: resolver valid=).",
    )

    def __post_init__(self) -> None:
        if not self.servers and not self.sources:
            raise ConfigError(f"upstream pool {self.name!r} has no servers")
        check_fields(self, Scope.POOL)

    def healthy(self, status: int) -> bool:
        """
        Whether a health check's answer status counts as healthy.
        """
        return any(low <= status <= high for low, high in self.health_status)

    @property
    def tries(self) -> int:
        """
        How many servers one request may be tried on (of the configured
        ones: a pool fed by DNS counts its servers as they change).
        """
        return self.max_tries or len(self.servers)


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

    @ivar pools: the upstream pools (C{--upstream} makes one, C{default}).
    @ivar routes: which requests go to which pool, in order.
    """

    pools: tuple[PoolConfig, ...]
    routes: tuple[RouteConfig, ...] = ()

    # Listening and the client side (lbproxy.http).
    listen: tuple[str, ...] = option(
        ("tcp:8080",),
        ENDPOINTS,
        "A Twisted server endpoint to listen on: tcp:8080, "
        "tcp:8080:interface=127.0.0.1, ssl:8443:privateKey=key.pem:certKey=cert.pem, "
        "unix:/run/lb.sock, haproxy:tcp:8080 ... (nginx: listen). tcp:, "
        "ssl: and unix: listeners get nginx's accept backlog, 511, unless they name one.",
        repeatable=True,
    )
    client_timeout: float = option(
        60.0,
        SECONDS,
        "Seconds an idle keep-alive client connection stays open (nginx: keepalive_timeout 75s).",
    )
    client_header_timeout: float = option(
        60.0,
        SECONDS,
        "Seconds a client has to send a whole request head, from its first byte; "
        "408 after (nginx: client_header_timeout 60s).",
    )
    client_body_timeout: float = option(
        60.0,
        SECONDS,
        "Seconds a request body may stall between two reads; 408 after "
        "(nginx: client_body_timeout 60s).",
    )
    max_body_size: int = option(
        0,
        BYTES_OR_ZERO,
        "Largest request body, 413 beyond; 0 is no limit (HAProxy; nginx's "
        "client_max_body_size is 1m).",
    )
    max_request_line: int = option(
        8192,
        BYTES,
        "Longest request line, 414 beyond (nginx: large_client_header_buffers 4 8k).",
    )
    max_header_line: int = option(
        8192,
        BYTES,
        "Longest request header line, 431 beyond (nginx: large_client_header_buffers 4 8k).",
    )
    max_headers_size: int = option(
        65536, BYTES, "Most bytes of request headers in all, 431 beyond."
    )
    max_headers: int = option(
        100,
        POSITIVE,
        "Most request header lines, 431 beyond (HAProxy: tune.http.maxhdr 101).",
    )

    send_timeout: float = option(
        60.0,
        SECONDS,
        "Seconds a client may take no byte of an answer while lbproxy has bytes "
        "for it; then the client connection and its upstream connection are "
        "closed (nginx: send_timeout 60s).",
    )

    # The upstream side (lbproxy.upstream).
    connect_timeout: float = option(
        5.0,
        SECONDS,
        "Seconds to wait for a connection to an app server (nginx: "
        "proxy_connect_timeout 60s; 5 s fails over to the next server sooner).",
    )
    read_timeout: float = option(
        60.0,
        SECONDS,
        "Seconds an app server may stay silent, counted once the request is "
        "sent: 504 if nothing was relayed yet, else the client connection is "
        "aborted (nginx: proxy_read_timeout 60s).",
    )
    max_upstream_headers_size: int = option(
        65536,
        BYTES,
        "Largest app server response head (status line and headers): 502 "
        "beyond, logged with the server's address (nginx: proxy_buffer_size, "
        '"upstream sent too big header").',
    )
    tunnel_timeout: float = option(
        3600.0,
        SECONDS,
        "Seconds a WebSocket or other Upgrade tunnel may carry no byte either "
        "way before both its connections are closed (HAProxy: timeout tunnel; "
        "nginx applies proxy_read_timeout 60s to WebSockets). A reload applies "
        "it to new tunnels.",
    )
    upstream_keepalive: int = option(
        32,
        COUNT,
        "Idle connections kept per app server (nginx: keepalive 32); 0 closes "
        "each connection after its request.",
    )
    upstream_idle_timeout: float = option(
        4.0,
        SECONDS,
        "Seconds an idle pooled connection may be reused; keep it below the app "
        "servers' own idle timeout (Node's is 5 s), so lbproxy closes first.",
    )

    # TLS (lbproxy.http.servertls, lbproxy.upstream.tls).
    tls_cert_dir: str = option(
        "",
        FILE,
        "A directory of PEM files (key, certificate, chain), one per host name "
        "(example.com.pem, *.example.com.pem): ssl: listeners pick one by SNI; "
        "their own certKey= answers other clients.",
    )
    redirect_https: int = option(
        0,
        PORT,
        "Answer requests on plain listeners with 308 to https on this port "
        "(nginx: return 308 https://$host$request_uri); 0 is off.",
    )
    hsts: int = option(
        0,
        COUNT,
        "Strict-Transport-Security max-age in seconds, added to TLS responses "
        "that lack one; 0 is off.",
    )
    upstream_ca: str = option(
        "",
        FILE,
        "PEM file of the CA certificates https upstreams must chain to; empty "
        "for the platform's trusted roots (nginx: proxy_ssl_trusted_certificate).",
    )
    upstream_client_cert: str = option(
        "",
        FILE,
        "PEM file with a private key and certificate (and chain) presented to "
        "https upstreams, mTLS (nginx: proxy_ssl_certificate).",
    )
    upstream_insecure: bool = option(
        False,
        FLAG,
        "Do not verify the certificates of https upstreams; a warning is "
        "logged at start (nginx: proxy_ssl_verify off, its default).",
    )

    # Servers found by DNS (lbproxy.discovery).
    resolver: str = option(
        "",
        RESOLVER,
        "The DNS server that looks up dns+a:// and dns+srv:// upstreams, "
        "IP[:PORT] (Consul's: 127.0.0.1:8600); empty for the system's, from "
        "/etc/resolv.conf and /etc/hosts (nginx: resolver; HAProxy: nameserver).",
    )

    # Operations (lbproxy.service).
    access_log: str = option(
        "-",
        ACCESS_LOG,
        "Where the access line of each request goes, in --access-log-format "
        "(nginx: access_log): '-' is where twistd logs (standard "
        "output under twistd -n, else twistd's log file, followed when twistd "
        "rotates it, and opened as root, before twistd drops privileges with "
        "--uid, as twistd opens it), 'off' is nowhere, anything else a file of "
        "its own, opened as the --uid user (who must be able to create or "
        "write it) and reopened on reload for logrotate. Lines are written in "
        "batches, at least once a second (nginx's buffer=64k flush=1s).",
    )
    access_log_format: str = option(
        "combined",
        Choice("combined", "json"),
        "combined is nginx's combined format, exactly; json is one JSON object "
        "a line with the request id and the upstream's address, status, "
        "connect and response times, the total time and the retries (nginx: "
        "log_format with $request_id, $upstream_addr, $upstream_response_time, "
        "$request_time).",
    )
    drain_timeout: float = option(
        10.0,
        SECONDS,
        "On stop (SIGTERM), seconds requests in flight may take to finish "
        "before they are aborted (nginx: worker_shutdown_timeout).",
    )
    # Worker processes (lbproxy.service.workers).
    workers: int = option(
        1,
        WORKERS,
        "Processes serving the listeners, each with its own connections, pools "
        "and health checks; 'auto' is one per core (nginx: worker_processes). "
        "Above 1 the twistd process supervises them and serves nothing itself.",
        reload=Reload.RESTART,
    )
    # The admin listener (lbproxy.admin, lbproxy.service.admin).
    admin: str = option(
        "",
        ENDPOINT,
        "A Twisted endpoint for the admin listener: status page, JSON API "
        "(drain, maintenance, enable), Prometheus /metrics and /healthz, e.g. "
        "tcp:9000:interface=127.0.0.1 or unix:/run/lbproxy-admin.sock "
        "(HAProxy: stats socket and stats uri; nginx Plus: api). Off when "
        "empty. One not on loopback or a unix socket needs --admin-token or "
        "--admin-token-file. A reload applies a change: the new endpoint is "
        "bound before the old one closes.",
    )
    admin_token: str = option(
        "",
        TOKEN,
        "The bearer token admin POSTs must carry (Authorization: Bearer "
        "TOKEN), else 401; empty for none. Visible in ps: prefer "
        "--admin-token-file. A reload applies a change.",
    )
    admin_token_file: str = option(
        "",
        FILE,
        "A file holding the admin token (surrounding whitespace ignored); read "
        "at start and again on every reload, so a reload applies a new token.",
    )

    demo: bool = option(
        False,
        FLAG,
        "Start two small demo app servers on loopback (answering 'PORT 3000' "
        "and 'PORT 3001', as the walkthrough's express apps) and proxy to them.",
        file=False,
        reload=Reload.RESTART,
    )

    def __post_init__(self) -> None:
        if not self.pools:
            raise ConfigError("no upstream servers: give --upstream HOST:PORT")
        check_fields(self, Scope.GLOBAL)
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
        if self.upstream_insecure and self.upstream_ca:
            raise ConfigError("upstream-insecure and upstream-ca contradict: give one of them")
        if self.admin_token and self.admin_token_file:
            raise ConfigError("admin-token and admin-token-file contradict: give one of them")


def all_options() -> list[Option]:
    """
    Every option, global ones first, in declaration order.
    """
    return [*options_of(Config, Scope.GLOBAL), *options_of(PoolConfig, Scope.POOL)]
