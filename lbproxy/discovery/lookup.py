# -*- test-case-name: tests.discovery.test_lookup -*-
"""
One lookup of a DNS source: its records, turned into servers.

L{lookup} asks an L{IResolver} (L{lbproxy.discovery.resolver}) and
answers with an L{Answer}: the servers, how many records gave them, and the
smallest TTL among the records used, which says when to ask again.

  - C{dns+a://NAME:PORT}: the name's A and AAAA records, asked together;
    every address is a server on C{PORT}.
  - C{dns+srv://NAME}: the name's SRV records (RFC 2782); every target's
    addresses, with the record's port, are servers.  The lowest priority's
    records are primaries, all others backups (lbproxy has two tiers, as
    nginx's C{backup}); each record's weight is its servers' (a weight of
    0, "rarely", counts as 1).  Targets' addresses come from the answer's
    additional section when the DNS server sends them (Consul and
    Kubernetes do), else from A and AAAA lookups of the targets.  A target
    of C{.} ("not available here") gives nothing.

A lookup fails (L{LookupFailed}) when the DNS server does not answer, or
answers with an error; it is I{empty} when the name has no such records,
or does not exist.  Either way the caller keeps the servers it had.  Of
the A and AAAA questions, one answered is enough, as glibc's resolver
does (dnsmasq without upstream servers refuses the AAAA question for a
name it has only IPv4 addresses for): the servers of the other family are
kept from before (L{Answer.unanswered}).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.names import dns
from twisted.names.error import (
    AuthoritativeDomainError,
    DNSNameError,
    DNSQueryRefusedError,
    DNSServerError,
    DomainError,
)
from twisted.python.failure import Failure

from lbproxy.config.dns import DnsSource
from lbproxy.config.servers import ServerConfig

__all__ = ["QUERY_TIMEOUTS", "Answer", "LookupFailed", "lookup", "sorted_servers"]

#: Seconds to wait for an answer before asking again (the next DNS server
#: in resolv.conf, if there are several), then before giving up: at most 4 s
#: a lookup.  Twisted's default (1, 3, 11, 45) waits a minute, longer than
#: a refresh interval.
QUERY_TIMEOUTS = (1.0, 3.0)


@dataclass(frozen=True, slots=True)
class Answer:
    """
    What a good lookup found.

    @ivar servers: the servers, primaries first, then by address.
    @ivar records: how many records gave them (SRV records, or addresses).
    @ivar ttl: the smallest TTL of the records used, in seconds.
    @ivar unanswered: the address families (4, 6) whose question (A or
        AAAA) went unanswered while the other was answered: the caller
        keeps the servers of those families it had (C{dns+a} only).
    @ivar note: why, for people (C{"AAAA: refused (REFUSED)"}); C{""}.
    """

    servers: tuple[ServerConfig, ...]
    records: int
    ttl: float
    unanswered: frozenset[int] = frozenset()
    note: str = ""


class LookupFailed(Exception):
    """
    A lookup gave no servers.

    @ivar reason: why, for people (C{"timed out"}, C{"name not found"}).
    @ivar empty: the DNS server answered, but there were no records that
        give a server (no such name, or no such records); otherwise it did
        not answer, or answered with an error.
    """

    def __init__(self, reason: str, empty: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.empty = empty


def lookup(resolver: Any, source: DnsSource) -> Deferred[Answer]:
    """
    Look C{source} up.

    @param resolver: an L{twisted.internet.interfaces.IResolver}.
    @return: fires with the L{Answer}, or fails with L{LookupFailed}
        (never anything else).
    """
    if source.kind == "srv":
        return Deferred.fromCoroutine(_srv(resolver, source))
    return Deferred.fromCoroutine(_a(resolver, source))


async def _a(resolver: Any, source: DnsSource) -> Answer:
    found = await _addresses(resolver, source.name)
    if not found.addresses and found.unanswered:
        raise LookupFailed(found.note)
    if not found.addresses:
        raise LookupFailed("no A or AAAA records", empty=True)
    servers = sorted_servers([source.server(address) for address in found.addresses])
    return Answer(servers, len(found.addresses), found.ttl, found.unanswered, found.note)


async def _srv(resolver: Any, source: DnsSource) -> Answer:
    try:
        answers, _, additional = await resolver.lookupService(source.name, QUERY_TIMEOUTS)
    except Exception:
        raise _failed(Failure()) from None
    records = [rr for rr in answers if rr.type == dns.SRV]
    ttls = [float(rr.ttl) for rr in answers]
    # (priority, weight, port, target) of the records that name a target.
    wanted = [
        (rr.payload.priority, rr.payload.weight, rr.payload.port, _name(rr.payload.target))
        for rr in records
        if _name(rr.payload.target) not in ("", ".")
    ]
    if not wanted:
        reason = "no SRV records" if not records else "every SRV target is '.'"
        raise LookupFailed(reason, empty=True)
    found = _glue(additional)
    ttls += [ttl for _, ttl in found.values()]
    targets = sorted({target for _, _, _, target in wanted if target not in found})
    for target in [t for t in targets if isIPAddress(t) or isIPv6Address(t)]:
        # Not what RFC 2782 allows, but some registries write addresses.
        found[target] = ([target], min(ttls))
        targets.remove(target)
    looked = await DeferredList(
        [Deferred.fromCoroutine(_addresses(resolver, target)) for target in targets],
        consumeErrors=True,
    )
    for target, (ok, result) in zip(targets, looked, strict=True):
        if ok and not result.addresses and result.unanswered:
            raise LookupFailed(f"SRV target {target}: {result.note}")
        if ok:
            found[target] = (result.addresses, result.ttl)
            ttls.append(result.ttl)
            continue
        failure = cast(Failure, result)
        error = failure.value
        if isinstance(error, LookupFailed) and error.empty:
            continue  # a target without addresses gives no server
        raise LookupFailed(f"SRV target {target}: {error}")
    lowest = min(priority for priority, _, _, _ in wanted)
    servers = []
    for priority, weight, port, target in wanted:
        for address in found.get(target, ([], 0.0))[0]:
            servers.append(
                source.server(address, port, max(weight, 1), backup=priority != lowest, name=target)
            )
    if not servers:
        raise LookupFailed("no SRV target has an address", empty=True)
    return Answer(sorted_servers(servers), len(records), min(ttls))


@dataclass(frozen=True, slots=True)
class _Found:
    """
    The addresses of one name: L{_addresses}.
    """

    addresses: list[str]
    ttl: float
    unanswered: frozenset[int]
    note: str


async def _addresses(resolver: Any, name: str) -> _Found:
    """
    The A and AAAA addresses of C{name}, asked together, and their
    smallest TTL (CNAMEs on the way included).

    @raise LookupFailed: if neither question was answered, or the name
        does not exist (C{empty}).
    """
    asked = [
        resolver.lookupAddress(name, QUERY_TIMEOUTS),
        resolver.lookupIPV6Address(name, QUERY_TIMEOUTS),
    ]
    results = await DeferredList(asked, consumeErrors=True)
    addresses: list[str] = []
    ttls: list[float] = []
    failures: list[tuple[int, str, Failure]] = []
    for (ok, result), family, question in zip(results, (4, 6), ("A", "AAAA"), strict=True):
        if not ok:
            failures.append((family, question, result))
            continue
        for rr in result[0]:
            ttls.append(float(rr.ttl))
            address = _address(rr)
            if address is not None and address not in addresses:
                addresses.append(address)
    if len(failures) == len(results):
        errors = [failure for _, _, failure in failures if not _not_found(failure)]
        if errors:
            raise _failed(errors[0])
        raise LookupFailed("name not found", empty=True)
    # A "no such name" beside an answer (a hosts file knowing only one
    # family) is no records of that family, not a failure.
    unanswered = [(f, q, failure) for f, q, failure in failures if not _not_found(failure)]
    note = "; ".join(f"{q}: {_failed(failure).reason}" for _, q, failure in unanswered)
    return _Found(addresses, min(ttls, default=0.0), frozenset(f for f, _, _ in unanswered), note)


def _address(rr: dns.RRHeader) -> str | None:
    payload: Any = rr.payload
    if rr.type == dns.A:
        return str(payload.dottedQuad())
    if rr.type == dns.AAAA:
        return socket.inet_ntop(socket.AF_INET6, payload.address)
    return None


def _glue(additional: Sequence[dns.RRHeader]) -> dict[str, tuple[list[str], float]]:
    """
    The addresses the additional section gives for SRV targets, by name,
    with their smallest TTL.
    """
    glue: dict[str, tuple[list[str], float]] = {}
    for rr in additional:
        address = _address(rr)
        if address is None:
            continue
        addresses, ttl = glue.setdefault(_name(rr.name), ([], float(rr.ttl)))
        if address not in addresses:
            addresses.append(address)
        glue[_name(rr.name)] = (addresses, min(ttl, float(rr.ttl)))
    return glue


def _name(name: dns.Name) -> str:
    return name.name.decode("ascii", "replace").lower().rstrip(".") or "."


def _not_found(failure: Failure) -> bool:
    """
    Whether C{failure} says the name does not exist: NXDOMAIN, or no
    resolver of a chain (C{/etc/hosts}, then DNS) knowing it.
    """
    error = failure.value
    return type(error) is DomainError or isinstance(error, (DNSNameError, AuthoritativeDomainError))


def _failed(failure: Failure) -> LookupFailed:
    """
    The L{LookupFailed} for a question that went wrong, in words.
    """
    if _not_found(failure):
        return LookupFailed("name not found", empty=True)
    if failure.check(DeferredTimeoutError, TimeoutError):
        return LookupFailed("timed out")
    if failure.check(DNSServerError):
        return LookupFailed("server failure (SERVFAIL)")
    if failure.check(DNSQueryRefusedError):
        return LookupFailed("refused (REFUSED)")
    if failure.check(LookupFailed):
        assert isinstance(failure.value, LookupFailed)
        return failure.value
    error = failure.value
    return LookupFailed(f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)


def sorted_servers(servers: list[ServerConfig]) -> tuple[ServerConfig, ...]:
    """
    Servers in a stable order whatever order the records came in (DNS
    servers rotate them): primaries first, then by address and port.
    """
    unique = {server.key: server for server in reversed(servers)}
    return tuple(
        sorted(
            unique.values(),
            key=lambda s: (
                s.backup,
                ipaddress.ip_address(s.host).version,
                ipaddress.ip_address(s.host),
                s.port,
            ),
        )
    )
