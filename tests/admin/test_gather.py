"""
Tests for L{lbproxy.admin.gather} and L{WorkersAdminResource}: a
supervisor's admin over "workers" that are admins of L{FakeProxy}s on unix
sockets, as a worker's private admin is.
"""

from __future__ import annotations

import json
import os

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from lbproxy.admin.gather import WorkerAdmin, WorkersCore
from lbproxy.admin.resource import AdminResource, AdminSite, WorkersAdminResource
from tests.admin.support import FakeProxy
from tests.admin.test_resource import admin_request
from tests.support import listen

_TOKEN = b"Authorization: Bearer s3cret\r\n"


class WorkersAdminTests(TestCase):
    """
    A L{WorkersCore} over two workers (each a L{FakeProxy}'s admin on a
    unix socket) and a third slot the test fills, served by a
    L{WorkersAdminResource} on loopback with a token.
    """

    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.mkdir(self.dir)
        self.proxies = {1: FakeProxy(), 2: FakeProxy()}
        self.status = {1: "ready", 2: "ready", 3: "starting"}
        for index, proxy in self.proxies.items():
            self._serve(index, proxy)
        self.core = WorkersCore(reactor, self._admins)
        self.resource = WorkersAdminResource(self.core, "s3cret")
        self.port = listen(self, AdminSite(self.resource))

    def _path(self, index: int) -> str:
        return f"{self.dir}/worker-{index}.sock"

    def _serve(self, index: int, proxy: FakeProxy) -> None:
        port = reactor.listenUNIX(self._path(index), AdminSite(AdminResource(proxy.core)))
        self.addCleanup(port.stopListening)

    def _admins(self) -> dict[int, WorkerAdmin]:
        return {i: WorkerAdmin(self._path(i), status) for i, status in self.status.items()}

    def _requests(self, index: int, count: int) -> None:
        proxy = self.proxies[index]
        for _ in range(count):
            _, sent = proxy.request()
            proxy.answer(sent, 200, 0.003)

    @inlineCallbacks
    def _json(self, path: bytes):
        response = yield admin_request(self.port, b"GET", path)
        self.assertEqual(response.status, 200, response.body)
        return json.loads(response.body)

    @inlineCallbacks
    def test_upstreams_summed(self) -> None:
        """
        C{/api/upstreams} sums the workers' counts: 3 requests in one and 5
        in the other (round robin in each: 2 and 1, 3 and 2) are 5 and 3;
        C{/api/status} lists the
        workers, the one starting as not answered.
        """
        self._requests(1, 3)
        self._requests(2, 5)
        upstreams = yield self._json(b"/api/upstreams")
        servers = upstreams["web"]["servers"]
        self.assertEqual([s["responses"]["2xx"] for s in servers], [5, 3])
        self.assertEqual([len(s["workers"]) for s in servers], [2, 2])
        status = yield self._json(b"/api/status")
        self.assertEqual(
            [(w["worker"], w["answered"], w["error"]) for w in status["lbproxy"]["workers"]],
            [(1, True, None), (2, True, None), (3, False, "starting")],
        )

    @inlineCallbacks
    def test_metrics_summed(self) -> None:
        """
        C{/metrics} is made of the combined snapshot.
        """
        self._requests(1, 3)
        self._requests(2, 5)
        response = yield admin_request(self.port, b"GET", b"/metrics")
        total = sum(
            sample.value
            for family in text_string_to_metric_families(response.body.decode())
            for sample in family.samples
            if sample.name == "lbproxy_requests_total" and sample.labels["code"] == "2xx"
        )
        self.assertEqual(total, 8)

    @inlineCallbacks
    def test_page_and_healthz(self) -> None:
        """
        The page names the servers; C{/healthz} is 200 while a worker
        serves, 503 once the supervisor stops; C{HEAD} answers no body.
        """
        page = yield admin_request(self.port, b"GET", b"/")
        self.assertIn(b"10.0.0.2:80 up", page.body)
        health = yield admin_request(self.port, b"GET", b"/healthz")
        self.assertEqual(
            (health.status, health.body),
            (200, b"ok: 2 of 3 workers serving, 2 of 2 servers in rotation\n"),
        )
        head = yield admin_request(self.port, b"HEAD", b"/healthz")
        self.assertEqual((head.status, head.body), (200, b""))
        self.core.stopping = True
        health = yield admin_request(self.port, b"GET", b"/healthz")
        self.assertEqual(health.status, 503)

    @inlineCallbacks
    def test_worker_missing(self) -> None:
        """
        A worker whose admin does not answer is listed as such; the numbers
        are the other's.
        """
        self._requests(1, 2)
        self.status[2] = "ready"
        self.status[3] = "ready"  # nothing listens there
        status = yield self._json(b"/api/status")
        missing = status["lbproxy"]["workers"][2]
        self.assertFalse(missing["answered"])
        self.assertTrue(missing["error"].startswith("did not answer: "), missing)
        servers = status["upstreams"]["web"]["servers"]
        self.assertEqual([s["responses"]["2xx"] for s in servers], [1, 1])

    @inlineCallbacks
    def test_drain_reaches_all(self) -> None:
        """
        A drain POST needs the token, then reaches every ready worker and
        answers once all did; a worker ready later is sent it then.
        """
        path = b"/api/upstreams/web/servers/10.0.0.1:80/drain"
        refused = yield admin_request(self.port, b"POST", path)
        self.assertEqual(refused.status, 401)
        self.assertEqual([p.pool.servers[0].state for p in self.proxies.values()], ["up", "up"])
        done = yield admin_request(self.port, b"POST", path, _TOKEN)
        self.assertEqual(done.status, 200, done.body)
        answer = json.loads(done.body)
        self.assertEqual(answer["state"], "draining")
        self.assertEqual([w["done"] for w in answer["workers"]], [True, True, False])
        self.assertEqual(
            [p.pool.servers[0].state for p in self.proxies.values()], ["draining", "draining"]
        )
        late = self.proxies[3] = FakeProxy()
        self._serve(3, late)
        self.status[3] = "ready"
        yield self.core.worker_ready(3, self._path(3))
        self.assertEqual(late.pool.servers[0].state, "draining")

    @inlineCallbacks
    def test_action_errors(self) -> None:
        """
        An unknown server is the workers' 404, said once; a server one
        worker lacks names that worker.
        """
        path = b"/api/upstreams/web/servers/10.9.9.9:80/drain"
        response = yield admin_request(self.port, b"POST", path, _TOKEN)
        self.assertEqual(response.status, 404)
        self.assertEqual(
            json.loads(response.body)["error"],
            "pool 'web' has no server '10.9.9.9:80' (10.0.0.1:80, 10.0.0.2:80)",
        )
        other = FakeProxy(backup=True)
        self.proxies[3] = other
        self._serve(3, other)
        self.status[3] = "ready"
        path = b"/api/upstreams/web/servers/10.0.0.3:80/maint"
        response = yield admin_request(self.port, b"POST", path, _TOKEN)
        self.assertEqual(response.status, 404)
        error = json.loads(response.body)["error"]
        self.assertTrue(error.startswith("worker 1: pool 'web' has no server"), error)
        self.assertIn("(done in 1 of 3 workers)", error)
        self.assertEqual(other.pool.servers[2].state, "maintenance")
