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

Questions over UDP go out of one socket per resolver and address family,
kept open (L{_OneSocketClient}), as HAProxy's resolvers and c-ares do:
Twisted's client binds a socket per question, which logs four lines per
question (bound, started, stopped, closed: twistd's log would get eight
lines per lookup, every second with a short TTL).  Answers are still
matched to questions by their random 16-bit ID.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.abstract import isIPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.names import client, dns, hosts
from twisted.names.resolve import ResolverChain

from lbproxy.config.dns import parse_resolver

__all__ = ["OwnedResolver", "make_resolver"]


class _OneSocketClient(client.Resolver):
    """
    Twisted's DNS client, asking every UDP question out of one socket per
    address family, bound at the first question and kept until L{close}
    (see the module docstring).  TCP, for truncated answers, is Twisted's.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sockets: dict[bool, dns.DNSDatagramProtocol] = {}

    def _query(self, *args: Any) -> Deferred[dns.Message]:
        # (address, port) of the server first, as Twisted's _query reads it.
        ipv6 = isIPv6Address(args[0][0])
        protocol = self._sockets.get(ipv6)
        if protocol is None or protocol.transport is None:
            protocol = dns.DNSDatagramProtocol(self, reactor=self._reactor)
            protocol.noisy = False
            # Port 0: the system picks a random port (Linux randomises it).
            self._reactor.listenUDP(0, protocol, interface="::" if ipv6 else "")
            self._sockets[ipv6] = protocol
        return protocol.query(*args)

    def close(self) -> None:
        """
        Close the sockets; questions under way fail as they time out.
        """
        sockets, self._sockets = self._sockets, {}
        for protocol in sockets.values():
            if protocol.transport is not None:
                protocol.transport.stopListening()


class OwnedResolver:
    """
    A resolver lbproxy made, and what it must close when done with it.

    @ivar resolver: the L{twisted.internet.interfaces.IResolver} to ask.
    @ivar description: who answers, for people: C{"127.0.0.1:8600"} or
        C{"system"}.
    """

    def __init__(self, resolver: Any, clients: list[_OneSocketClient], description: str) -> None:
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
        asked again over TCP, its UDP sockets, and its timer that reads
        resolv.conf again.
        """
        for dns_client in self._clients:
            dns_client.close()
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
        dns_client = _OneSocketClient(servers=[(host, port)], reactor=reactor)
        return OwnedResolver(dns_client, [dns_client], setting)
    dns_client = _OneSocketClient(resolv=resolv_conf, reactor=reactor)
    chain = ResolverChain([_HostsFile(hosts_file.encode()), dns_client])
    return OwnedResolver(chain, [dns_client], "system")
