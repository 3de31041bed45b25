"""
A DNS server for tests: Twisted's own (L{twisted.names.server}) on
127.0.0.1, over UDP and TCP on one port the system chooses, answering from
a L{Zone} whose records a test changes as it runs.
"""

from __future__ import annotations

import socket

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.names import dns
from twisted.names.common import ResolverBase
from twisted.names.error import AuthoritativeDomainError
from twisted.names.server import DNSServerFactory
from twisted.trial.unittest import TestCase

Records = tuple[list[dns.RRHeader], list[dns.RRHeader], list[dns.RRHeader]]


class Zone(ResolverBase):
    """
    An authority whose records are what the test last set: A, AAAA and SRV
    records by name, with glue (the targets' addresses in the additional
    section) for SRV answers.  Names it was never told of do not exist
    (NXDOMAIN).

    @ivar queries: every question asked, as C{(name, type)}.
    """

    def __init__(self) -> None:
        super().__init__()
        self._records: dict[str, dict[int, list[dns.RRHeader]]] = {}
        self.queries: list[tuple[str, int]] = []
        self.errors: dict[tuple[str, int], Exception] = {}
        self.glue = True

    def set_addresses(self, name: str, addresses: list[str], ttl: int = 60) -> None:
        """
        Make C{addresses} (IPv4 or IPv6) the A and AAAA records of C{name}.
        """
        records = self._records.setdefault(name, {})
        records[dns.A] = [
            dns.RRHeader(name, dns.A, dns.IN, ttl, dns.Record_A(a, ttl))
            for a in addresses
            if ":" not in a
        ]
        records[dns.AAAA] = [
            dns.RRHeader(name, dns.AAAA, dns.IN, ttl, dns.Record_AAAA(a, ttl))
            for a in addresses
            if ":" in a
        ]

    def set_services(
        self, name: str, services: list[tuple[int, int, int, str]], ttl: int = 60
    ) -> None:
        """
        Make C{services}, C{(priority, weight, port, target)} each, the SRV
        records of C{name}.
        """
        self._records.setdefault(name, {})[dns.SRV] = [
            dns.RRHeader(name, dns.SRV, dns.IN, ttl, dns.Record_SRV(p, w, port, target, ttl))
            for p, w, port, target in services
        ]

    def set_cname(self, name: str, target: str, ttl: int = 60) -> None:
        """
        Make C{name} a CNAME of C{target}: its A and AAAA answers are
        C{target}'s, after the CNAME record.
        """
        self._records[name] = {
            dns.CNAME: [dns.RRHeader(name, dns.CNAME, dns.IN, ttl, dns.Record_CNAME(target, ttl))]
        }

    def fail(self, name: str, type: int, error: Exception) -> None:
        """
        Questions for C{type} records of C{name} fail with C{error} (as
        Twisted's client reports a timeout, SERVFAIL ...).
        """
        self.errors[(name, type)] = error

    def remove(self, name: str) -> None:
        """
        C{name} no longer exists.
        """
        self._records.pop(name, None)

    def _lookup(self, name: bytes, cls: int, type: int, timeout: object) -> Deferred[Records]:
        text = name.decode("ascii").lower()
        self.queries.append((text, type))
        error = self.errors.get((text, type))
        if error is not None:
            return fail(error)
        records = self._records.get(text)
        if records is None:
            return fail(AuthoritativeDomainError(text))
        answers = list(records.get(type, []))
        cname = records.get(dns.CNAME)
        if cname and type in (dns.A, dns.AAAA):
            target = self._records.get(cname[0].payload.name.name.decode("ascii"), {})
            answers = cname + target.get(type, [])
        additional: list[dns.RRHeader] = []
        if type == dns.SRV and self.glue:
            for rr in answers:
                target = self._records.get(rr.payload.target.name.decode("ascii"), {})
                additional += target.get(dns.A, []) + target.get(dns.AAAA, [])
        return succeed((answers, [], additional))


class _TruncatingFactory(DNSServerFactory):
    """
    Twisted's DNS server, but an answer over UDP larger than 512 bytes
    (RFC 1035 section 4.2.1, without EDNS) is sent empty with the TC bit
    set, so that the client asks again over TCP.  (Twisted's server sends
    it whole; real servers do not.)
    """

    def sendReply(self, protocol: object, message: dns.Message, address: object) -> None:
        if address is not None and len(message.toStr()) > 512:
            message.trunc = True
            message.answers, message.authority, message.additional = [], [], []
        super().sendReply(protocol, message, address)


def start_dns_server(testcase: TestCase, zone: Zone) -> int:
    """
    Serve C{zone} on 127.0.0.1, UDP and TCP on the same port, until the
    test ends; UDP answers over 512 bytes are truncated.

    @return: the port.
    """
    factory = _TruncatingFactory(authorities=[zone])
    factory.noisy = False
    for _ in range(20):
        tcp = reactor.listenTCP(0, factory, interface="127.0.0.1")
        port = tcp.getHost().port
        try:
            udp = reactor.listenUDP(port, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
        except CannotListenError:
            # Taken for UDP by someone else: try another.
            tcp.stopListening()
            continue
        testcase.addCleanup(tcp.stopListening)
        testcase.addCleanup(udp.stopListening)
        return port
    raise RuntimeError("no port free for both TCP and UDP")


def free_dns_port() -> int:
    """
    A loopback port free now for both UDP and TCP (each bound to port 0 by
    the system's choice, then released), for a DNS server run apart
    (dnsmasq) that listens on it a moment later.
    """
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            with socket.socket() as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port
    raise RuntimeError("no port free for both TCP and UDP")


def has_loopback(address: str) -> bool:
    """
    Whether this machine can listen on C{address} (127.0.0.2 works on
    Linux, not on every system).
    """
    probe = socket.socket()
    try:
        probe.bind((address, 0))
    except OSError:
        return False
    finally:
        probe.close()
    return True
