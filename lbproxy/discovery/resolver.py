# -*- test-case-name: tests.discovery.test_resolver -*-
"""
Who answers DNS questions for DNS sources: L{make_resolver}, from the
C{resolver} setting.

Empty (the default): the system's resolver as
L{twisted.names.client.createResolver} builds it, C{/etc/hosts} first, then
the DNS servers of C{/etc/resolv.conf} (read again when it changes), but
without its cache: a cached answer would hide a change until its TTL ran
out, and lbproxy already asks again no sooner than the TTL says (and no
later than C{dns-refresh}).  A name the hosts file knows is answered by it
alone, as glibc's C{files} before C{dns} does: its IPv4 entries do not send
the AAAA question on to DNS.  C{IP[:PORT]}: that DNS server only (Consul's
DNS interface, C{127.0.0.1:8600}).

Names are asked as they are written: Twisted's resolver does not try the
C{search} domains of resolv.conf, so give the full name
(C{app.NAMESPACE.svc.cluster.local}, not C{app}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.names import client, dns, hosts
from twisted.names.resolve import ResolverChain

from lbproxy.config.dns import parse_resolver

__all__ = ["OwnedResolver", "make_resolver"]


class OwnedResolver:
    """
    A resolver lbproxy made, and what it must close when done with it.

    @ivar resolver: the L{twisted.internet.interfaces.IResolver} to ask.
    @ivar description: who answers, for people: C{"127.0.0.1:8600"} or
        C{"system"}.
    """

    def __init__(self, resolver: Any, clients: list[client.Resolver], description: str) -> None:
        """
        @param resolver: the resolver to ask.
        @param clients: its DNS clients, closed by L{close}.
        @param description: see L{description}.
        """
        self.resolver = resolver
        self.description = description
        self._clients = clients

    def close(self) -> None:
        """
        Let go of what the resolver holds between questions: the TCP
        connections Twisted's client keeps after a truncated answer was
        asked again over TCP, and its timer that reads resolv.conf again.
        (Each UDP question has a socket of its own, closed with its answer.)
        """
        for dns_client in self._clients:
            reading = getattr(dns_client, "_parseCall", None)
            if reading is not None and reading.active():
                reading.cancel()
            for connection in list(dns_client.connections):
                connection.transport.loseConnection()


class _HostsFile(hosts.Resolver):
    """
    Twisted's hosts file resolver, answering "no such records" rather
    than "not here" for a name it knows by the other address family, so
    that a resolver chain does not go on to DNS for it.
    """

    def _respond(self, name: bytes, records: tuple[dns.RRHeader, ...]) -> Deferred[Any]:
        if not records and (self._aRecords(name) or self._aaaaRecords(name)):
            return succeed(((), (), ()))
        return super()._respond(name, records)  # type: ignore[no-any-return]


def make_resolver(
    setting: str,
    reactor: Any,
    resolv_conf: str = "/etc/resolv.conf",
    hosts_file: str = "/etc/hosts",
) -> OwnedResolver:
    """
    The resolver of a C{resolver} setting (see the module docstring).

    @param setting: C{""} for the system's, or C{IP[:PORT]} (already
        checked by the configuration).
    @param reactor: what sends the questions and times them.
    @param resolv_conf: the system's list of DNS servers.
    @param hosts_file: the system's hosts file.
    """
    if setting:
        host, port = parse_resolver(setting)
        dns_client = client.Resolver(servers=[(host, port)], reactor=reactor)
        return OwnedResolver(dns_client, [dns_client], setting)
    dns_client = client.Resolver(resolv=resolv_conf, reactor=reactor)
    chain = ResolverChain([_HostsFile(hosts_file.encode()), dns_client])
    return OwnedResolver(chain, [dns_client], "system")
