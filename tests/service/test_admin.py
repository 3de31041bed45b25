"""
Tests for the admin listener of L{lbproxy.service.service.ProxyService}
with real app servers on loopback: drain, maintenance and enable end to end,
C{/healthz} while stopping, reloads (the operator's states kept, a new
endpoint, a new token), request ids and the JSON access log.
"""

from __future__ import annotations

import json
import re

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory
from twisted.trial.unittest import TestCase

from lbproxy.config.file import load_config
from lbproxy.tap import make_proxy_service
from tests.admin.test_resource import admin_request
from tests.service.test_service import _toml
from tests.support import free_port, get, held_request, release_held, start_app

_TOKEN = b"Authorization: Bearer s3cret\r\n"


class AdminServiceTests(TestCase):
    """
    The admin listener of a running proxy over two app servers, A and B.
    """

    @inlineCallbacks
    def _start(self, extra: str = 'admin-token = "s3cret"\n', servers: int = 2):
        self.apps = []
        ports = []
        for name in "AB"[:servers]:
            app, _, port = start_app(self, name)
            self.apps.append(app)
            ports.append(port)
        self.path = self.mktemp()
        self.app_ports = ports
        self.extra = 'admin = "tcp:0:interface=127.0.0.1"\n' + extra
        self._write(_toml(ports, extra=self.extra))
        config = load_config(self.path)
        self.service, _ = make_proxy_service(config, reactor, self.path)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.proxy_port = (yield self.service.listening_ports())[0].getHost().port
        self.admin_port = (yield self.service.admin_port()).getHost().port

    def _write(self, text: str) -> None:
        with open(self.path, "w") as f:
            f.write(text)

    def admin(self, method: bytes, path: bytes, headers: bytes = b""):
        return admin_request(self.admin_port, method, path, headers)

    def action(self, address: str, action: str, headers: bytes = _TOKEN):
        path = f"/api/upstreams/web/servers/{address}/{action}".encode()
        return self.admin(b"POST", path, headers)

    @inlineCallbacks
    def bodies(self, count: int):
        """
        The bodies of C{count} requests to the proxy, one after the other.
        """
        bodies = []
        for _ in range(count):
            bodies.append((yield get(self.proxy_port)).body)
        return bodies

    @inlineCallbacks
    def test_every_endpoint_after_ten_requests(self):
        """
        After 10 requests, C{/metrics} has lbproxy_ series labelled with
        each server (5 answers each), C{/api/upstreams} lists both, C{/}
        is the page naming both, C{/healthz} is 200.
        """
        yield self._start()
        yield self.bodies(10)
        metrics = (yield self.admin(b"GET", b"/metrics")).body.decode()
        for port in self.app_ports:
            self.assertIn(
                f'lbproxy_requests_total{{code="2xx",pool="web",server="127.0.0.1:{port}"}} 5.0',
                metrics,
            )
        upstreams = json.loads((yield self.admin(b"GET", b"/api/upstreams")).body)
        self.assertEqual(
            [s["address"] for s in upstreams["web"]["servers"]],
            [f"127.0.0.1:{port}" for port in self.app_ports],
        )
        page = yield self.admin(b"GET", b"/")
        self.assertEqual(page.status, 200)
        self.assertIn(b"<title>lbproxy status</title>", page.body)
        for port in self.app_ports:
            self.assertIn(f"<li>127.0.0.1:{port} up</li>".encode(), page.body)
        self.assertEqual((yield self.admin(b"GET", b"/healthz")).status, 200)

    @inlineCallbacks
    def test_drain(self):
        """
        A drained server finishes the request in flight on it (200) and
        gets no new one; enabled, it is back in rotation.  Without the
        token the drain is refused (401).
        """
        yield self._start()
        a, _ = self.app_ports
        slow = get(self.proxy_port, b"/hold")
        yield held_request(self.apps[0])
        refused = yield self.action(f"127.0.0.1:{a}", "drain", headers=b"")
        self.assertEqual(refused.status, 401)
        drained = yield self.action(f"127.0.0.1:{a}", "drain")
        self.assertEqual((drained.status, json.loads(drained.body)["state"]), (200, "draining"))
        self.assertEqual((yield self.bodies(4)), [b"PORT B"] * 4)
        upstreams = json.loads((yield self.admin(b"GET", b"/api/upstreams")).body)
        self.assertEqual(
            [(s["state"], s["active"]) for s in upstreams["web"]["servers"]],
            [("draining", 1), ("up", 0)],
        )
        release_held(self.apps[0])
        response = yield slow
        self.assertEqual((response.status, response.body), (200, b"held by A"))
        enabled = yield self.action(f"127.0.0.1:{a}", "enable")
        self.assertEqual(json.loads(enabled.body)["state"], "up")
        self.assertEqual(sorted((yield self.bodies(2))), [b"PORT A", b"PORT B"])

    @inlineCallbacks
    def test_maint(self):
        """
        A server in maintenance gets no request and shows as such.
        """
        yield self._start()
        _, b = self.app_ports
        answer = yield self.action(f"127.0.0.1:{b}", "maint")
        self.assertEqual(answer.status, 200)
        self.assertEqual((yield self.bodies(3)), [b"PORT A"] * 3)
        upstreams = json.loads((yield self.admin(b"GET", b"/api/upstreams")).body)
        self.assertEqual(upstreams["web"]["servers"][1]["state"], "maintenance")

    @inlineCallbacks
    def test_healthz_while_stopping(self):
        """
        While lbproxy drains a request on stop, the admin still answers,
        C{/healthz} with 503 (and C{/metrics} says it is not serving); the
        admin closes once the drain is over.
        """
        yield self._start()
        self.assertEqual((yield self.admin(b"GET", b"/healthz")).status, 200)
        slow = get(self.proxy_port, b"/hold")
        yield held_request(self.apps[0])
        stopped = self.service.stopService()
        probe = yield self.admin(b"GET", b"/healthz")
        self.assertEqual(
            (probe.status, probe.body), (503, b"stopping: requests in flight are draining\n")
        )
        self.assertIn(b"lbproxy_serving 0.0", (yield self.admin(b"GET", b"/metrics")).body)
        self.assertNoResult(stopped)
        release_held(self.apps[0])
        yield stopped
        self.assertEqual((yield slow).status, 200)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.admin_port)
        yield self.assertFailure(endpoint.connect(Factory()), ConnectionRefusedError)

    @inlineCallbacks
    def test_state_survives_reload(self):
        """
        A drained server kept by a reload is still draining after it.
        """
        yield self._start(servers=1)
        (a,) = self.app_ports
        app_b, _, b = start_app(self, "B")
        yield self.action(f"127.0.0.1:{a}", "drain")
        self._write(_toml([a, b], extra=self.extra))
        self.assertTrue((yield self.service.reload()))
        upstreams = json.loads((yield self.admin(b"GET", b"/api/upstreams")).body)
        self.assertEqual([s["state"] for s in upstreams["web"]["servers"]], ["draining", "up"])
        self.assertEqual((yield self.bodies(2)), [b"PORT B"] * 2)

    @inlineCallbacks
    def test_reload_new_endpoint_and_token_file(self):
        """
        A reload moves the admin to its new endpoint (the old one closes)
        and reads the token file again.
        """
        token_file = self.mktemp()
        with open(token_file, "w") as f:
            f.write("first\n")
        yield self._start(extra=f'admin-token-file = "{token_file}"\n')
        a, _ = self.app_ports
        old_port = self.admin_port
        answer = yield self.action(f"127.0.0.1:{a}", "maint", b"Authorization: Bearer first\r\n")
        self.assertEqual(answer.status, 200)
        with open(token_file, "w") as f:
            f.write("second\n")
        new_port = free_port()
        self.extra = (
            f'admin = "tcp:{new_port}:interface=127.0.0.1"\nadmin-token-file = "{token_file}"\n'
        )
        self._write(_toml(self.app_ports, extra=self.extra))
        self.assertTrue((yield self.service.reload()))
        self.admin_port = new_port
        answer = yield self.action(f"127.0.0.1:{a}", "enable", b"Authorization: Bearer first\r\n")
        self.assertEqual(answer.status, 401)
        answer = yield self.action(f"127.0.0.1:{a}", "enable", b"Authorization: Bearer second\r\n")
        self.assertEqual(answer.status, 200)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", old_port)
        yield self.assertFailure(endpoint.connect(Factory()), ConnectionRefusedError)

    @inlineCallbacks
    def test_reload_admin_port_in_use_changes_nothing(self):
        """
        A reload whose new admin endpoint cannot listen changes nothing: the
        old admin still answers, and the problem names the endpoint.
        """
        yield self._start()
        busy = self.proxy_port
        self._write(_toml(self.app_ports, extra=f'admin = "tcp:{busy}:interface=127.0.0.1"\n'))
        self.assertFalse((yield self.service.reload()))
        self.assertEqual((yield self.admin(b"GET", b"/healthz")).status, 200)
        self.assertEqual(self.service.config.admin, "tcp:0:interface=127.0.0.1")


class RequestIdTests(TestCase):
    """
    Request ids end to end: to the app server, back to the client, in the
    JSON access log with the upstream's address, status and times.
    """

    @inlineCallbacks
    def _start(self):
        self.app, _, port = start_app(self, "A")
        self.port = port
        self.log = self.mktemp()
        path = self.mktemp()
        text = _toml([port], extra='access-log-format = "json"\n')
        with open(path, "w") as f:
            f.write(text.replace('access-log = "off"', f'access-log = "{self.log}"'))
        service, self.site = make_proxy_service(load_config(path), reactor, path)
        service.startService()
        self.addCleanup(service.stopService)
        self.proxy_port = (yield service.listening_ports())[0].getHost().port

    def logged(self) -> list[dict]:
        self.site.access_log.flush()
        with open(self.log) as f:
            return [json.loads(line) for line in f]

    @inlineCallbacks
    def test_kept(self):
        """
        A valid id from the client reaches the app server, comes back, and
        is logged with the upstream's fields.
        """
        yield self._start()
        response = yield get(self.proxy_port, headers=b"X-Request-Id: trace-42\r\n")
        self.assertEqual(response.header(b"x-request-id"), [b"trace-42"])
        self.assertEqual(self.app.requests[0].headers[b"x-request-id"], [b"trace-42"])
        [line] = self.logged()
        self.assertEqual(
            (
                line["request_id"],
                line["status"],
                line["upstream_addr"],
                line["upstream_status"],
                line["retries"],
                line["pool"],
            ),
            ("trace-42", 200, f"127.0.0.1:{self.port}", 200, 0, "web"),
        )
        for key in ("upstream_connect_time", "upstream_header_time", "upstream_response_time"):
            self.assertIsInstance(line[key], float, key)
        self.assertLessEqual(line["upstream_connect_time"], line["upstream_header_time"])
        self.assertLessEqual(line["upstream_header_time"], line["upstream_response_time"])
        self.assertLessEqual(line["upstream_response_time"], line["request_time"])

    @inlineCallbacks
    def test_generated_and_replaced(self):
        """
        Without an id, or with an invalid one, the request gets a new one:
        the same to the app server, to the client and in the log.
        """
        yield self._start()
        first = yield get(self.proxy_port)
        second = yield get(self.proxy_port, headers=b"X-Request-Id: not valid!\r\n")
        ids = [first.header(b"x-request-id")[0], second.header(b"x-request-id")[0]]
        for each in ids:
            self.assertTrue(re.fullmatch(rb"[0-9a-f]{24}", each), each)
        self.assertNotEqual(ids[0], ids[1])
        self.assertEqual([r.headers[b"x-request-id"][0] for r in self.app.requests], ids)
        self.assertEqual([line["request_id"].encode() for line in self.logged()], ids)
