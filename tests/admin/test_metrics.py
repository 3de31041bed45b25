"""
Tests for L{lbproxy.admin.metrics}: exact values after a known sequence
of requests, answers, failures, checks and refusals, as Prometheus parses
them.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from lbproxy import __version__
from lbproxy.admin.metrics import exposition, families, metrics_registry
from lbproxy.balancing.server import BOUNDS, AdminState
from lbproxy.errors import ConnectFailed
from tests.admin.support import FakeProxy
from tests.http.fakes import connect

_A = {"pool": "web", "server": "10.0.0.1:80"}
_B = {"pool": "web", "server": "10.0.0.2:80"}


def _samples(text: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """
    Every sample of an exposition, by name and labels.
    """
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text.decode("utf-8"))
        for sample in family.samples
    }


class KnownSequenceTests(SynchronousTestCase):
    """
    After a known sequence, C{/metrics} holds exactly its counts.
    """

    def setUp(self) -> None:
        proxy = self.proxy = FakeProxy()
        a, b = proxy.pool.servers
        # 1: A answers 200 in 3 ms.
        _, sent = proxy.request()
        proxy.answer(sent, 200, 0.003)
        # 2: B answers 503 in 100 ms.
        _, sent = proxy.request()
        proxy.answer(sent, 503, 0.1)
        # 3: A refuses the connection (ejected: max-fails 1); B answers the
        # retry 200 in 20 ms.
        _, sent = proxy.request()
        sent.sink.response_failed(ConnectFailed("connection refused"))
        proxy.answer(proxy.upstream.sent[-1], 200, 0.02)
        # 4: in flight on B.
        proxy.request()
        # Checks, idle connections, an operator's drain.
        proxy.pool.check_failed(a, "timed out")
        proxy.pool.check_passed(b)
        proxy.pool.check_passed(b)
        proxy.upstream.idle[a] = 3
        proxy.pool.set_admin(a, AdminState.DRAINING)
        # Two requests refused by the framing gate: 400 and 414.
        first, _ = connect(proxy.site)
        first.dataReceived(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
        second, _ = connect(proxy.site)
        second.dataReceived(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n")
        self.samples = _samples(exposition(metrics_registry(proxy.core.snapshot)))

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]

    def test_process(self) -> None:
        """
        Version, serving, connections, requests in flight, refusals by
        status.
        """
        self.assertEqual(
            [
                self.value("lbproxy_info", version=__version__),
                self.value("lbproxy_serving"),
                self.value("lbproxy_client_connections"),
                self.value("lbproxy_requests_in_flight"),
                self.value("lbproxy_refused_requests_total", status="400"),
                self.value("lbproxy_refused_requests_total", status="414"),
            ],
            [1, 1, 2, 1, 1, 1],
        )

    def test_requests_by_class(self) -> None:
        """
        Answers by pool, server and status class, zeros included.
        """
        got = {
            (labels["server"], labels["code"]): value
            for (name, labels_set), value in self.samples.items()
            if name == "lbproxy_requests_total"
            for labels in [dict(labels_set)]
        }
        expected = {(s, c): 0.0 for s in ("10.0.0.1:80", "10.0.0.2:80") for c in "12345"}
        expected = {(s, f"{c}xx"): 0.0 for s, c in expected}
        expected[("10.0.0.1:80", "2xx")] = 1
        expected[("10.0.0.2:80", "2xx")] = 1
        expected[("10.0.0.2:80", "5xx")] = 1
        self.assertEqual(got, expected)

    def test_per_server(self) -> None:
        """
        Attempts, failures, retries, active requests, idle connections, in
        rotation, state, checks: per server.
        """
        names = [
            "lbproxy_upstream_attempts_total",
            "lbproxy_upstream_failures_total",
            "lbproxy_upstream_retries_total",
            "lbproxy_upstream_active_requests",
            "lbproxy_upstream_idle_connections",
            "lbproxy_upstream_up",
        ]
        self.assertEqual([self.value(n, **_A) for n in names], [2, 1, 0, 0, 3, 0])
        self.assertEqual([self.value(n, **_B) for n in names], [3, 0, 1, 1, 0, 1])
        states = ("up", "down", "draining", "maintenance")
        self.assertEqual(
            [self.value("lbproxy_upstream_state", state=s, **_A) for s in states], [0, 0, 1, 0]
        )
        self.assertEqual(
            [self.value("lbproxy_upstream_state", state=s, **_B) for s in states], [1, 0, 0, 0]
        )
        self.assertEqual(self.value("lbproxy_upstream_queue_waiting", pool="web"), 0)
        checks = "lbproxy_upstream_health_checks_total"
        self.assertEqual(
            [
                self.value(checks, result="passed", **_A),
                self.value(checks, result="failed", **_A),
                self.value(checks, result="passed", **_B),
                self.value(checks, result="failed", **_B),
            ],
            [0, 1, 2, 0],
        )

    def test_response_time_histogram(self) -> None:
        """
        The response-time histogram: cumulative buckets from 0.25 ms
        doubling to 65.536 s and +Inf, its count and sum, per server.
        """
        name = "lbproxy_upstream_response_seconds"
        les = [repr(bound) for bound in BOUNDS] + ["+Inf"]
        a = [self.value(name + "_bucket", le=le, **_A) for le in les]
        b = [self.value(name + "_bucket", le=le, **_B) for le in les]
        self.assertEqual(a, [0, 0, 0, 0] + [1] * 16)  # 3 ms: le 0.004
        self.assertEqual(b, [0] * 7 + [1, 1] + [2] * 11)  # 20 ms: 0.032; 100 ms: 0.128
        self.assertEqual(
            [self.value(name + "_count", **_A), self.value(name + "_count", **_B)], [1, 2]
        )
        self.assertAlmostEqual(self.value(name + "_sum", **_A), 0.003)
        self.assertAlmostEqual(self.value(name + "_sum", **_B), 0.12)

    def test_only_lbproxy(self) -> None:
        """
        Every series is lbproxy's (none of C{prometheus_client}'s default
        process or Python collectors).
        """
        for name, _ in self.samples:
            self.assertTrue(name.startswith("lbproxy_"), name)


class DnsTests(SynchronousTestCase):
    """
    Each DNS source of a pool: whether its last lookup answered, when it
    ended, how many servers it gives.
    """

    def test_sources(self) -> None:
        """
        The three series per source, labelled with the pool and the
        source's URL; no timestamp before the first lookup.
        """
        proxy = FakeProxy()
        proxy.add_sources()
        samples = _samples(exposition(metrics_registry(proxy.core.snapshot)))
        got = {
            (name, dict(labels)["source"]): value
            for (name, labels), value in samples.items()
            if name.startswith("lbproxy_dns_") and dict(labels)["pool"] == "web"
        }
        ok, failing, fresh = (
            "dns+a://app.internal:3000",
            "dns+srv://_web._tcp.service.consul",
            "dns+a://new.internal:80",
        )
        self.assertEqual(
            got,
            {
                ("lbproxy_dns_lookup_ok", ok): 1,
                ("lbproxy_dns_lookup_ok", failing): 0,
                ("lbproxy_dns_lookup_ok", fresh): 0,
                ("lbproxy_dns_last_lookup_timestamp_seconds", ok): 999_997,
                ("lbproxy_dns_last_lookup_timestamp_seconds", failing): 999_996,
                ("lbproxy_dns_servers", ok): 2,
                ("lbproxy_dns_servers", failing): 1,
                ("lbproxy_dns_servers", fresh): 0,
            },
        )

    def test_none(self) -> None:
        """
        A pool without DNS sources has no DNS series.
        """
        samples = _samples(exposition(metrics_registry(FakeProxy().core.snapshot)))
        self.assertEqual([name for name, _ in samples if name.startswith("lbproxy_dns_")], [])


class FamiliesTests(SynchronousTestCase):
    """
    L{families} reads nothing but a snapshot, so a snapshot from elsewhere
    (another worker, summed) makes the same metrics.
    """

    def test_from_plain_data(self) -> None:
        """
        A snapshot through JSON and back makes the same exposition.
        """
        import json

        proxy = FakeProxy()
        proxy.add_sources()
        _, sent = proxy.request()
        proxy.answer(sent, 200, 0.01)
        snapshot = proxy.core.snapshot()
        copied = json.loads(json.dumps(snapshot))
        self.assertEqual(
            [(f.name, f.samples) for f in families(snapshot)],
            [(f.name, f.samples) for f in families(copied)],
        )
