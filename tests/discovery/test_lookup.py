"""
Tests for L{lbproxy.discovery.lookup}: records into servers, asked of a
zone that answers at once (a L{twisted.names.common.ResolverBase}, as
Twisted's own resolvers are).
"""

from __future__ import annotations

from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.names import dns
from twisted.names.error import DNSNameError, DNSQueryRefusedError, DNSServerError
from twisted.trial.unittest import SynchronousTestCase

from lbproxy.config.dns import DnsSource
from lbproxy.config.servers import ServerConfig
from lbproxy.discovery.lookup import Answer, LookupFailed, lookup
from tests.discovery.dnsserver import Zone

_A = DnsSource("a", "app.lbtest", 3000)
_SRV = DnsSource("srv", "_web._tcp.lbtest")


class AddressTests(SynchronousTestCase):
    """
    C{dns+a://}: A and AAAA records, every address a server on the port.
    """

    def setUp(self) -> None:
        self.zone = Zone()

    def _found(self, source: DnsSource = _A) -> Answer:
        return self.successResultOf(lookup(self.zone, source))

    def _failed(self, source: DnsSource = _A) -> LookupFailed:
        error = self.failureResultOf(lookup(self.zone, source), LookupFailed).value
        assert isinstance(error, LookupFailed)
        return error

    def test_a_and_aaaa(self) -> None:
        """
        IPv4 and IPv6 addresses are servers on the source's port, IPv4
        first, each by address; the TTL is the smallest.
        """
        self.zone.set_addresses("app.lbtest", ["10.0.0.2", "fd00::1", "10.0.0.1"], ttl=30)
        self.zone.set_addresses("other.lbtest", ["10.9.9.9"], ttl=5)
        answer = self._found()
        self.assertEqual(
            [s.address for s in answer.servers],
            ["10.0.0.1:3000", "10.0.0.2:3000", "[fd00::1]:3000"],
        )
        self.assertEqual((answer.records, answer.ttl), (3, 30.0))
        self.assertEqual(
            sorted(self.zone.queries), [("app.lbtest", dns.A), ("app.lbtest", dns.AAAA)]
        )

    def test_server_settings(self) -> None:
        """
        The servers have the source's scheme, weight and backup flag, and
        over TLS the name looked up to verify.
        """
        self.zone.set_addresses("app.lbtest", ["10.0.0.1"])
        source = DnsSource("a", "app.lbtest", 443, "https", weight=3, backup=True)
        self.assertEqual(
            self._found(source).servers,
            (ServerConfig("10.0.0.1", 443, "https", 3, True, tls_name="app.lbtest"),),
        )

    def test_cname_ttl(self) -> None:
        """
        Through a CNAME, the addresses are the target's and the TTL the
        smallest of the chain.
        """
        self.zone.set_cname("app.lbtest", "pods.lbtest", ttl=7)
        self.zone.set_addresses("pods.lbtest", ["10.0.0.1"], ttl=60)
        answer = self._found()
        self.assertEqual(([s.host for s in answer.servers], answer.ttl), (["10.0.0.1"], 7.0))

    def test_not_found(self) -> None:
        """
        A name that does not exist is an empty lookup.
        """
        error = self._failed()
        self.assertEqual((error.reason, error.empty), ("name not found", True))

    def test_no_records(self) -> None:
        """
        A name without A or AAAA records is an empty lookup.
        """
        self.zone.set_services("app.lbtest", [(1, 1, 80, "x.lbtest")])
        error = self._failed()
        self.assertEqual((error.reason, error.empty), ("no A or AAAA records", True))

    def test_one_unanswered(self) -> None:
        """
        One of the A and AAAA questions answered is enough (glibc's rule):
        the other's family is reported unanswered, for the caller to keep
        what it had of it.
        """
        self.zone.set_addresses("app.lbtest", ["10.0.0.1"])
        self.zone.fail("app.lbtest", dns.AAAA, DNSQueryRefusedError())
        answer = self._found()
        self.assertEqual([s.host for s in answer.servers], ["10.0.0.1"])
        self.assertEqual(
            (answer.unanswered, answer.note), (frozenset({6}), "AAAA: refused (REFUSED)")
        )

    def test_unanswered_and_no_records(self) -> None:
        """
        One question unanswered and the other without records fails the
        lookup (what the unanswered one would give is not known).
        """
        self.zone.set_addresses("app.lbtest", ["fd00::1"])
        self.zone.fail("app.lbtest", dns.AAAA, DeferredTimeoutError())
        error = self._failed()
        self.assertEqual((error.reason, error.empty), ("AAAA: timed out", False))

    def test_timeout(self) -> None:
        """
        Neither question answered fails the lookup.
        """
        self.zone.fail("app.lbtest", dns.A, DeferredTimeoutError())
        self.zone.fail("app.lbtest", dns.AAAA, DeferredTimeoutError())
        error = self._failed()
        self.assertEqual((error.reason, error.empty), ("timed out", False))

    def test_other_family_not_found(self) -> None:
        """
        "No such name" for one family beside an answer for the other (a
        hosts file) is no records of that family, not a failure.
        """
        self.zone.set_addresses("app.lbtest", ["10.0.0.1"])
        self.zone.fail("app.lbtest", dns.AAAA, DNSNameError())
        answer = self._found()
        self.assertEqual((answer.unanswered, answer.note), (frozenset(), ""))

    def test_server_failure(self) -> None:
        """
        SERVFAIL and REFUSED fail the lookup, saying which.
        """
        self.zone.fail("app.lbtest", dns.A, DNSServerError())
        self.zone.fail("app.lbtest", dns.AAAA, DNSServerError())
        self.assertEqual(self._failed().reason, "server failure (SERVFAIL)")
        self.zone.fail("app.lbtest", dns.A, DNSQueryRefusedError())
        self.zone.fail("app.lbtest", dns.AAAA, DNSQueryRefusedError())
        self.assertEqual(self._failed().reason, "refused (REFUSED)")

    def test_other_error(self) -> None:
        """
        Anything else fails the lookup with its type and message.
        """
        self.zone.fail("app.lbtest", dns.A, OSError("No domain name servers available"))
        self.zone.fail("app.lbtest", dns.AAAA, OSError("No domain name servers available"))
        self.assertEqual(self._failed().reason, "OSError: No domain name servers available")


class ServiceTests(SynchronousTestCase):
    """
    C{dns+srv://}: SRV records, every target's addresses with the record's
    port; priorities are tiers, weights weights.
    """

    def setUp(self) -> None:
        self.zone = Zone()
        self.zone.set_addresses("n1.lbtest", ["10.0.0.1"], ttl=40)
        self.zone.set_addresses("n2.lbtest", ["10.0.0.2", "fd00::2"], ttl=50)

    def _found(self, source: DnsSource = _SRV) -> Answer:
        return self.successResultOf(lookup(self.zone, source))

    def _failed(self) -> LookupFailed:
        error = self.failureResultOf(lookup(self.zone, _SRV), LookupFailed).value
        assert isinstance(error, LookupFailed)
        return error

    def test_targets_ports_weights(self) -> None:
        """
        Each target's addresses are servers on the record's port, with its
        weight; the TTL is the smallest of the SRV and address records.
        """
        self.zone.set_services(
            "_web._tcp.lbtest", [(10, 5, 3001, "n2.lbtest"), (10, 1, 3000, "n1.lbtest")], ttl=45
        )
        answer = self._found()
        self.assertEqual(
            [(s.address, s.weight, s.backup) for s in answer.servers],
            [
                ("10.0.0.1:3000", 1, False),
                ("10.0.0.2:3001", 5, False),
                ("[fd00::2]:3001", 5, False),
            ],
        )
        self.assertEqual((answer.records, answer.ttl), (2, 40.0))

    def test_priorities_are_tiers(self) -> None:
        """
        The lowest priority's servers are primaries; every other priority's
        are backups.
        """
        self.zone.set_services(
            "_web._tcp.lbtest",
            [(20, 1, 3000, "n1.lbtest"), (10, 1, 3000, "n2.lbtest"), (30, 1, 3001, "n1.lbtest")],
        )
        self.assertEqual(
            [(s.address, s.backup) for s in self._found().servers],
            [
                ("10.0.0.2:3000", False),
                ("[fd00::2]:3000", False),
                ("10.0.0.1:3000", True),
                ("10.0.0.1:3001", True),
            ],
        )

    def test_weight_zero(self) -> None:
        """
        A weight of 0 ("rarely", RFC 2782) counts as 1.
        """
        self.zone.set_services("_web._tcp.lbtest", [(1, 0, 3000, "n1.lbtest")])
        self.assertEqual(self._found().servers[0].weight, 1)

    def test_glue_used(self) -> None:
        """
        Targets' addresses in the additional section are used: no more
        questions are asked.
        """
        self.zone.set_services("_web._tcp.lbtest", [(1, 1, 3000, "n1.lbtest")])
        self.assertEqual([s.host for s in self._found().servers], ["10.0.0.1"])
        self.assertEqual(self.zone.queries, [("_web._tcp.lbtest", dns.SRV)])

    def test_targets_looked_up(self) -> None:
        """
        Without glue, each target's A and AAAA records are asked.
        """
        self.zone.glue = False
        self.zone.set_services("_web._tcp.lbtest", [(1, 1, 3000, "n1.lbtest")])
        self.assertEqual([s.host for s in self._found().servers], ["10.0.0.1"])
        self.assertEqual(
            sorted(self.zone.queries),
            [("_web._tcp.lbtest", dns.SRV), ("n1.lbtest", dns.A), ("n1.lbtest", dns.AAAA)],
        )

    def test_target_without_address_skipped(self) -> None:
        """
        A target that does not exist gives no server; the others do.
        """
        self.zone.set_services(
            "_web._tcp.lbtest", [(1, 1, 3000, "gone.lbtest"), (1, 1, 3000, "n1.lbtest")]
        )
        self.assertEqual([s.host for s in self._found().servers], ["10.0.0.1"])

    def test_target_timeout_fails(self) -> None:
        """
        A target whose addresses could not be asked fails the lookup (the
        servers it had are kept rather than dropped).  (Its AAAA question
        is answered, without records.)
        """
        self.zone.glue = False
        self.zone.set_services("_web._tcp.lbtest", [(1, 1, 3000, "n1.lbtest")])
        self.zone.fail("n1.lbtest", dns.A, DeferredTimeoutError())
        self.assertEqual(self._failed().reason, "SRV target n1.lbtest: A: timed out")

    def test_dot_target(self) -> None:
        """
        A target of C{.} (not available, RFC 2782) gives nothing: alone, an
        empty lookup.
        """
        self.zone.set_services("_web._tcp.lbtest", [(1, 1, 3000, "")])
        error = self._failed()
        self.assertEqual((error.reason, error.empty), ("every SRV target is '.'", True))

    def test_no_target_resolves(self) -> None:
        """
        SRV records whose targets have no address are an empty lookup.
        """
        self.zone.set_services("_web._tcp.lbtest", [(1, 1, 3000, "gone.lbtest")])
        error = self._failed()
        self.assertEqual((error.reason, error.empty), ("no SRV target has an address", True))

    def test_not_found(self) -> None:
        """
        A service name that does not exist is an empty lookup.
        """
        error = self._failed()
        self.assertEqual((error.reason, error.empty), ("name not found", True))

    def test_no_srv_records(self) -> None:
        """
        A name without SRV records is an empty lookup.
        """
        self.zone.set_addresses("_web._tcp.lbtest", ["10.0.0.1"])
        self.assertEqual(self._failed().reason, "no SRV records")

    def test_srv_failure(self) -> None:
        """
        An SRV question that fails fails the lookup.
        """
        self.zone.fail("_web._tcp.lbtest", dns.SRV, DNSServerError())
        error = self._failed()
        self.assertEqual((error.reason, error.empty), ("server failure (SERVFAIL)", False))

    def test_tls_name_is_target(self) -> None:
        """
        Over TLS a server is verified against its record's target.
        """
        self.zone.set_services("_web._tcp.lbtest", [(1, 1, 8443, "n1.lbtest")])
        source = DnsSource("srv", "_web._tcp.lbtest", scheme="https")
        self.assertEqual(self._found(source).servers[0].tls_name, "n1.lbtest")
