"""
Tests for L{lbproxy.discovery.resolver}: the resolver of the C{resolver}
setting, and what closing it lets go of.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.names import dns
from twisted.names.client import Resolver
from twisted.trial.unittest import SynchronousTestCase, TestCase

from lbproxy.config.dns import DnsSource
from lbproxy.discovery.lookup import lookup
from lbproxy.discovery.resolver import make_resolver
from tests.discovery.dnsserver import Zone, start_dns_server


class MakeResolverTests(SynchronousTestCase):
    """
    L{make_resolver} builds Twisted's resolvers from the setting.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()

    def test_server(self) -> None:
        """
        C{IP:PORT}: Twisted's DNS client asking that server only.
        """
        owned = make_resolver("127.0.0.1:8600", self.reactor)
        self.assertIsInstance(owned.resolver, Resolver)
        self.assertEqual(owned.resolver.servers, [("127.0.0.1", 8600)])
        self.assertEqual(owned.description, "127.0.0.1:8600")

    def test_system_hosts_first(self) -> None:
        """
        Empty: the hosts file answers first, then the DNS servers of
        resolv.conf (with no cache between, so a change is seen at the
        next lookup).  A name the hosts file knows is not asked of DNS at
        all, not even for AAAA records (this reactor cannot send a
        datagram: the lookup would fail).
        """
        resolv = self.mktemp()
        with open(resolv, "w") as f:
            f.write("nameserver 10.9.9.9\n")
        hosts = self.mktemp()
        with open(hosts, "w") as f:
            f.write("10.1.2.3 app.lbtest\n")
        owned = make_resolver("", self.reactor, resolv, hosts)
        self.addCleanup(owned.close)
        self.assertEqual(owned.description, "system")
        answer = self.successResultOf(lookup(owned.resolver, DnsSource("a", "app.lbtest", 80)))
        self.assertEqual([s.host for s in answer.servers], ["10.1.2.3"])
        with open(hosts, "w") as f:
            f.write("10.1.2.4 app.lbtest\n")
        answer = self.successResultOf(lookup(owned.resolver, DnsSource("a", "app.lbtest", 80)))
        self.assertEqual([s.host for s in answer.servers], ["10.1.2.4"])
        dns_client = owned.resolver.resolvers[-1]
        self.assertEqual(dns_client.dynServers, [("10.9.9.9", dns.PORT)])

    def test_close_timer(self) -> None:
        """
        Closing the system's resolver stops its timer that reads
        resolv.conf again.
        """
        resolv = self.mktemp()
        with open(resolv, "w") as f:
            f.write("nameserver 10.9.9.9\n")
        owned = make_resolver("", self.reactor, resolv, self.mktemp())
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        owned.close()
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_close_tcp(self) -> None:
        """
        Closing closes the TCP connections Twisted's client keeps after
        asking over TCP.
        """
        owned = make_resolver("127.0.0.1:53", self.reactor)
        connection = dns.DNSProtocol(owned.resolver)
        transport = StringTransport()
        connection.makeConnection(transport)
        self.assertEqual(owned.resolver.connections, [connection])
        owned.close()
        self.assertTrue(transport.disconnecting)


class OneSocketTests(TestCase):
    """
    A resolver asks its UDP questions out of one socket, kept open between
    lookups, so that a lookup logs nothing (Twisted's own client binds a
    socket per question and logs four lines for each).
    """

    def setUp(self) -> None:
        self.zone = Zone()
        self.zone.set_addresses("app.lbtest", ["10.0.0.7"])
        self.port = start_dns_server(self, self.zone)
        self.lines: list[str] = []
        globalLogPublisher.addObserver(self._observe)
        self.addCleanup(globalLogPublisher.removeObserver, self._observe)

    def _observe(self, event: dict[str, Any]) -> None:
        self.lines.append(formatEvent(event))

    @inlineCallbacks
    def test_lookups_share_a_socket(self) -> Any:
        """
        Three lookups (six questions) bind one socket, logged once; closing
        the resolver closes it.
        """
        owned = make_resolver(f"127.0.0.1:{self.port}", reactor)
        source = DnsSource("a", "app.lbtest", 80)
        for _ in range(3):
            answer = yield lookup(owned.resolver, source)
            self.assertEqual([s.host for s in answer.servers], ["10.0.0.7"])
        self.assertEqual(len(self.zone.queries), 6)
        [udp] = owned.resolver._sockets.values()
        bound = [line for line in self.lines if "DNSDatagramProtocol" in line]
        self.assertEqual(bound, [f"DNSDatagramProtocol starting on {udp.transport.getHost().port}"])
        owned.close()
        yield deferLater(reactor, 0, lambda: None)
        self.assertIsNone(udp.transport)
