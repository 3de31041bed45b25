# -*- test-case-name: tests.config.test_dns -*-
"""
DNS sources of upstream servers: L{DnsSource} and the parser of
C{dns+a://} and C{dns+srv://} addresses.

A DNS source names servers rather than being one: C{dns+a://NAME:PORT} is
every address the name's A and AAAA records give, on C{PORT};
C{dns+srv://_SERVICE._tcp.NAME} is every target and port of the name's SRV
records.  L{lbproxy.discovery} looks them up and keeps the pool's servers
in step (HAProxy's C{server-template} with C{resolvers}, Caddy's
C{dynamic a} and C{dynamic srv}).  C{https+dns+a://} and
C{https+dns+srv://} speak TLS to the servers found.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from twisted.internet.abstract import isIPAddress, isIPv6Address

from lbproxy.config.servers import ServerConfig, parse_server_entry
from lbproxy.errors import ConfigError

__all__ = [
    "DNS_PREFIXES",
    "DnsSource",
    "is_dns_address",
    "parse_dns_source",
    "parse_resolver",
    "parse_upstream",
    "parse_upstream_list",
]

#: The URL schemes of DNS sources, and what each looks up and speaks.
_SCHEMES = {
    "dns+a": ("a", "http"),
    "dns+srv": ("srv", "http"),
    "https+dns+a": ("a", "https"),
    "https+dns+srv": ("srv", "https"),
}

#: How the addresses of DNS sources start (for messages and detection).
DNS_PREFIXES = tuple(f"{scheme}://" for scheme in _SCHEMES)

#: A DNS label: letters, digits, hyphens and underscores (SRV names start
#: with C{_service._proto}), 1 to 63 of them (RFC 1035 section 2.3.4).
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


def is_dns_address(text: str) -> bool:
    """
    Whether an upstream address names a DNS source rather than a server.
    """
    return text.strip().lower().startswith(DNS_PREFIXES)


@dataclass(frozen=True, slots=True)
class DnsSource:
    """
    A name whose DNS records are a pool's servers.

    @ivar kind: C{"a"} (A and AAAA records, one port for all) or C{"srv"}
        (SRV records: each target with its own port, priority and weight).
    @ivar name: the name looked up, lower case, without a trailing dot;
        it is asked as it is (no search domains): give the full name.
    @ivar port: the servers' port, for C{"a"}; 0 for C{"srv"}.
    @ivar scheme: C{"http"}, or C{"https"} for TLS to the servers found.
    @ivar weight: each server's weight, for C{"a"} (SRV records carry
        their own).
    @ivar backup: every server found is a backup (nginx's C{backup}).
    """

    kind: str
    name: str
    port: int = 0
    scheme: str = "http"
    weight: int = 1
    backup: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("a", "srv"):
            raise ConfigError(f"DNS source kind {self.kind!r} is not a or srv")
        labels = self.name.split(".")
        if len(self.name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
            raise ConfigError(f"{self.name!r} is not a DNS name")
        if self.kind == "a" and not 0 < self.port < 65536:
            raise ConfigError("give the servers' port: dns+a://NAME:PORT")
        if self.kind == "srv" and self.port:
            raise ConfigError("SRV records give the ports: write no port")
        if self.scheme not in ("http", "https"):
            raise ConfigError(f"DNS source scheme {self.scheme!r} is not http or https")
        if self.weight < 1:
            raise ConfigError(f"upstream weight {self.weight} must be at least 1")

    @property
    def url(self) -> str:
        """
        The source as an address: C{dns+a://app.internal:3000}; what
        identifies it across reloads.
        """
        prefix = "https+" if self.scheme == "https" else ""
        port = f":{self.port}" if self.port else ""
        return f"{prefix}dns+{self.kind}://{self.name}{port}"

    @property
    def label(self) -> str:
        """
        The source as log lines show it: C{dns+a app.internal}.
        """
        return f"dns+{self.kind} {self.name}"

    def server(
        self,
        host: str,
        port: int | None = None,
        weight: int | None = None,
        backup: bool = False,
        name: str | None = None,
    ) -> ServerConfig:
        """
        A server this source found.

        @param host: its address (an IP address).
        @param port: its port; the source's if L{None}.
        @param weight: its weight; the source's if L{None}.
        @param backup: it is a backup (besides the source being one).
        @param name: the name its address was found under (an SRV
            target); the source's name if L{None}.
        """
        # TLS is verified against a name, never the address found: the name
        # whose records gave the address, as a browser verifies the name it
        # resolved.
        tls_name = (name or self.name) if self.scheme == "https" else ""
        return ServerConfig(
            host,
            self.port if port is None else port,
            self.scheme,
            self.weight if weight is None else weight,
            self.backup or backup,
            tls_name=tls_name,
        )


def parse_dns_source(text: str, weight: int = 1, backup: bool = False) -> DnsSource:
    """
    Parse a C{dns+a://NAME:PORT} or C{dns+srv://NAME} address (or its
    C{https+} twin).

    @param text: the address as the user wrote it.
    @param weight: each server's weight (C{dns+a} only).
    @param backup: every server found is a backup.
    @raise ConfigError: if C{text} is not such an address.
    """
    raw = text.strip()
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as e:
        raise ConfigError(f"bad upstream address {text!r}: {e}") from None
    known = _SCHEMES.get(parts.scheme.lower())
    if known is None:
        expected = ", ".join(DNS_PREFIXES)
        raise ConfigError(f"bad upstream address {text!r}: expected one of {expected}")
    kind, scheme = known
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"bad upstream address {text!r}: no path allowed")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"bad upstream address {text!r}: no user info allowed")
    name = (parts.hostname or "").rstrip(".")
    if not name:
        raise ConfigError(f"bad upstream address {text!r}: no name to look up")
    if kind == "srv" and weight != 1:
        raise ConfigError(f"bad upstream address {text!r}: SRV records give the weights")
    try:
        return DnsSource(kind, name, port or 0, scheme, weight, backup)
    except ConfigError as e:
        raise ConfigError(f"bad upstream address {text!r}: {e}") from None


def parse_upstream(text: str) -> ServerConfig | DnsSource:
    """
    Parse one upstream entry: a server with its parameters
    (L{parse_server_entry}: C{"HOST:PORT weight=2 max-conns=10"}) or a DNS
    source, which takes C{weight=N} (C{dns+a} only) and C{backup} for every
    server it finds.

    @raise ConfigError: if C{text} is neither.
    """
    address, *parameters = text.split() or [""]
    if not is_dns_address(address):
        return parse_server_entry(text)
    weight, backup = 1, False
    for parameter in parameters:
        name, equals, value = parameter.partition("=")
        if name == "backup" and not equals:
            backup = True
        elif name == "weight" and value.isascii() and value.isdigit() and int(value) >= 1:
            weight = int(value)
        else:
            raise ConfigError(
                f"bad upstream entry {text.strip()!r}: unknown parameter {parameter!r} "
                "(a DNS name takes weight=N or backup)"
            )
    return parse_dns_source(address, weight, backup)


def parse_upstream_list(text: str) -> tuple[ServerConfig | DnsSource, ...]:
    """
    Parse a comma-separated list of upstream addresses, servers and DNS
    sources mixed (C{--upstream}).

    @raise ConfigError: if any address is bad or the list is empty.
    """
    items = [item for item in text.split(",") if item.strip()]
    if not items:
        raise ConfigError(f"bad upstream list {text!r}: no addresses")
    return tuple(parse_upstream(item) for item in items)


def parse_resolver(text: str) -> tuple[str, int]:
    """
    Parse the C{resolver} setting: a DNS server's C{IP[:PORT]} (C{[IPv6]:PORT}
    for IPv6; port 53 if none is given).

    An address, not a name: the name of the DNS server could only be looked
    up with another one.

    @return: the address and port.
    @raise ConfigError: if C{text} is not such an address.
    """
    raw = text.strip()
    try:
        parts = urlsplit("//" + raw)
        port = parts.port
    except ValueError:
        raise ConfigError(f"expected a DNS server IP[:PORT], got {text!r}") from None
    host = parts.hostname or ""
    if parts.path or parts.username is not None or not (isIPAddress(host) or isIPv6Address(host)):
        raise ConfigError(f"expected a DNS server IP[:PORT], got {text!r}")
    if port == 0:
        raise ConfigError(f"DNS server port 0 is not in 1-65535, got {text!r}")
    return host, port or 53
