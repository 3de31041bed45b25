"""
Tests for L{lbproxy.admin.resource}: every admin URL over a real loopback
connection, the token, and the refusals of cross-site POSTs, with the
proxy behind it on fakes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from lbproxy.admin import resource as admin_resource
from lbproxy.admin.page import PAGE, render_page
from lbproxy.admin.resource import AdminResource, AdminSite
from lbproxy.balancing.server import AdminState
from tests.admin.support import FakeProxy
from tests.support import RawResponse, listen, parse_responses, raw_request


def admin_request(
    port: int, method: bytes, path: bytes, headers: bytes = b"", host: bytes = b"127.0.0.1"
) -> Deferred[RawResponse]:
    """
    One request to the admin on C{port}, C{Connection: close}; fires with
    the parsed answer.
    """
    payload = (
        method
        + b" "
        + path
        + b" HTTP/1.1\r\nHost: "
        + host
        + b"\r\n"
        + headers
        + b"Connection: close\r\nContent-Length: 0\r\n\r\n"
    )
    _, done = raw_request(port, payload)
    return done.addCallback(lambda data: parse_responses(data, head_only=method == b"HEAD")[-1])


class _AdminTestCase(TestCase):
    """
    An admin over a L{FakeProxy}, listening on loopback.
    """

    token = ""

    def setUp(self) -> None:
        self.proxy = FakeProxy()
        self.resource = AdminResource(self.proxy.core, self.token)
        self.port = listen(self, AdminSite(self.resource))

    def request(self, method: bytes, path: bytes, headers: bytes = b"", **kw: bytes) -> Deferred:
        return admin_request(self.port, method, path, headers, **kw)


class ReadTests(_AdminTestCase):
    """
    The C{GET} URLs: the page, the JSON, the metrics, the readiness probe.
    """

    @inlineCallbacks
    def test_page(self):
        """
        C{/} is the status page, naming the servers of the moment: HTML, a
        script allowed by its hash alone (nothing from elsewhere), not
        framed, not cached.
        """
        answer = yield self.request(b"GET", b"/")
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.header(b"content-type"), [b"text/html; charset=utf-8"])
        self.assertEqual(
            answer.body, render_page(self.proxy.core.upstreams(), self.proxy.clock.seconds())
        )
        self.assertIn(b"<li>10.0.0.1:80 up</li><li>10.0.0.2:80 up</li>", answer.body)
        [policy] = answer.header(b"content-security-policy")
        [script] = re.findall(rb"<script>(.*?)</script>", PAGE, re.DOTALL)
        digest = base64.b64encode(hashlib.sha256(script).digest())
        self.assertIn(b"script-src 'sha256-" + digest + b"';", policy)
        self.assertIn(b"default-src 'none'", policy)
        self.assertIn(b"connect-src 'self'", policy)
        self.assertEqual(answer.header(b"cache-control"), [b"no-store"])
        self.assertNotIn(b"http://", PAGE.replace(b"http://www.w3.org", b""))
        self.assertNotIn(b"https://", PAGE)

    @inlineCallbacks
    def test_upstreams(self):
        """
        C{/api/upstreams}: the pools by name, each with its strategy and
        servers; C{/api/status} adds the process.
        """
        answer = yield self.request(b"GET", b"/api/upstreams")
        self.assertEqual(answer.header(b"content-type"), [b"application/json"])
        upstreams = json.loads(answer.body)
        self.assertEqual(list(upstreams), ["web"])
        self.assertEqual(upstreams["web"]["balance"], "roundrobin")
        self.assertEqual(
            [(s["address"], s["state"]) for s in upstreams["web"]["servers"]],
            [("10.0.0.1:80", "up"), ("10.0.0.2:80", "up")],
        )
        self.assertEqual(upstreams["web"]["discovery"], [])
        [source, *_] = self.proxy.add_sources()
        answer = yield self.request(b"GET", b"/api/upstreams")
        upstreams = json.loads(answer.body)
        [ok, _, _] = upstreams["web"]["discovery"]
        self.assertEqual(
            (ok["url"], ok["last_outcome"], ok["last_lookup"], ok["servers"]),
            (source.url, "ok", 999_997.0, ["10.0.0.5:3000", "10.0.0.6:3000"]),
        )
        answer = yield self.request(b"GET", b"/api/status")
        status = json.loads(answer.body)
        self.assertEqual(status["upstreams"], upstreams)
        self.assertTrue(status["lbproxy"]["serving"])

    @inlineCallbacks
    def test_metrics(self):
        """
        C{/metrics}: Prometheus's text format, every series lbproxy's,
        labelled with each server.
        """
        answer = yield self.request(b"GET", b"/metrics")
        self.assertEqual(
            answer.header(b"content-type"), [b"text/plain; version=0.0.4; charset=utf-8"]
        )
        for line in answer.body.decode().splitlines():
            if not line.startswith("#"):
                self.assertTrue(line.startswith("lbproxy_"), line)
        for address in (b"10.0.0.1:80", b"10.0.0.2:80"):
            self.assertIn(
                b'lbproxy_upstream_up{pool="web",server="' + address + b'"} 1.0', answer.body
            )
        self.proxy.add_sources()
        answer = yield self.request(b"GET", b"/metrics")
        self.assertIn(
            b'lbproxy_dns_servers{pool="web",source="dns+a://app.internal:3000"} 2.0', answer.body
        )

    @inlineCallbacks
    def test_healthz(self):
        """
        C{/healthz}: 200 while a server is in rotation; 503 with none, and
        while stopping; C{HEAD} too.
        """
        answer = yield self.request(b"GET", b"/healthz")
        self.assertEqual((answer.status, answer.body), (200, b"ok: 2 of 2 servers in rotation\n"))
        for server in self.proxy.pool.servers:
            self.proxy.pool.set_admin(server, AdminState.MAINT)
        answer = yield self.request(b"GET", b"/healthz")
        self.assertEqual((answer.status, answer.body), (503, b"no server in rotation (of 2)\n"))
        self.proxy.core.act("web", "10.0.0.1:80", "enable")
        self.proxy.core.stopping = True
        answer = yield self.request(b"HEAD", b"/healthz")
        self.assertEqual((answer.status, answer.body), (503, b""))

    @inlineCallbacks
    def test_unknown(self):
        """
        Another URL: 404, in JSON.
        """
        answer = yield self.request(b"GET", b"/api/nothing")
        self.assertEqual(answer.status, 404)
        self.assertEqual(json.loads(answer.body), {"error": "no such admin URL: /api/nothing"})

    @inlineCallbacks
    def test_wrong_methods(self):
        """
        A POST to a read URL, a GET of an action: 405 with C{Allow}; the
        server is left alone.
        """
        answer = yield self.request(b"POST", b"/api/upstreams")
        self.assertEqual((answer.status, answer.header(b"allow")), (405, [b"GET, HEAD"]))
        answer = yield self.request(b"GET", b"/api/upstreams/web/servers/10.0.0.1:80/drain")
        self.assertEqual((answer.status, answer.header(b"allow")), (405, [b"POST"]))
        self.assertIs(self.proxy.pool.servers[0].admin, AdminState.NORMAL)


class TokenTests(_AdminTestCase):
    """
    With a token, a C{POST} needs C{Authorization: Bearer TOKEN}.
    """

    token = "s3cret"
    drain = b"/api/upstreams/web/servers/10.0.0.1:80/drain"

    @inlineCallbacks
    def test_without(self):
        """
        No C{Authorization}: 401 with C{WWW-Authenticate}; nothing done.
        """
        answer = yield self.request(b"POST", self.drain)
        self.assertEqual(answer.status, 401)
        self.assertEqual(answer.header(b"www-authenticate"), [b'Bearer realm="lbproxy admin"'])
        self.assertIs(self.proxy.pool.servers[0].admin, AdminState.NORMAL)

    @inlineCallbacks
    def test_wrong(self):
        """
        A wrong token, another scheme, a prefix of the token: 401.
        """
        for authorization in (b"Bearer s3cres", b"Basic czNjcmV0", b"Bearer s3c", b"s3cret"):
            answer = yield self.request(
                b"POST", self.drain, b"Authorization: " + authorization + b"\r\n"
            )
            self.assertEqual(answer.status, 401, authorization)
        self.assertIs(self.proxy.pool.servers[0].admin, AdminState.NORMAL)

    @inlineCallbacks
    def test_with(self):
        """
        The token: 200, the server drained, the answer saying so; the token
        is compared with L{hmac.compare_digest} (constant time).
        """
        compared = []

        def compare_digest(given: bytes, expected: bytes) -> bool:
            compared.append((given, expected))
            return given == expected

        self.patch(admin_resource.hmac, "compare_digest", compare_digest)
        answer = yield self.request(b"POST", self.drain, b"Authorization: bearer s3cret\r\n")
        self.assertEqual(answer.status, 200)
        self.assertEqual(json.loads(answer.body)["state"], "draining")
        self.assertIs(self.proxy.pool.servers[0].admin, AdminState.DRAINING)
        self.assertEqual(compared, [(b"s3cret", b"s3cret")])

    @inlineCallbacks
    def test_token_replaced(self):
        """
        A new token (a reload) is the one asked from then on.
        """
        self.resource.token = "other"
        answer = yield self.request(b"POST", self.drain, b"Authorization: Bearer s3cret\r\n")
        self.assertEqual(answer.status, 401)
        answer = yield self.request(b"POST", self.drain, b"Authorization: Bearer other\r\n")
        self.assertEqual(answer.status, 200)

    @inlineCallbacks
    def test_unknown_server(self):
        """
        An action on a server the pool does not have: 404 naming those it
        has.
        """
        answer = yield self.request(
            b"POST",
            b"/api/upstreams/web/servers/10.0.0.9%3A80/maint",
            b"Authorization: Bearer s3cret\r\n",
        )
        self.assertEqual(answer.status, 404)
        self.assertEqual(
            json.loads(answer.body)["error"],
            "pool 'web' has no server '10.0.0.9:80' (10.0.0.1:80, 10.0.0.2:80)",
        )


class CrossSiteTests(_AdminTestCase):
    """
    Without a token (a loopback or unix admin), a web page cannot make the
    operator's browser act: cross-origin POSTs and foreign host names are
    refused.
    """

    maint = b"/api/upstreams/web/servers/10.0.0.2:80/maint"

    @inlineCallbacks
    def test_loopback_allowed(self):
        """
        A POST naming a loopback host, with no C{Origin} (curl) or the
        admin's own: done.
        """
        answer = yield self.request(b"POST", self.maint, host=b"localhost:9000")
        self.assertEqual(answer.status, 200)
        answer = yield self.request(
            b"POST",
            b"/api/upstreams/web/servers/10.0.0.2:80/enable",
            b"Origin: http://[::1]:9000\r\n",
            host=b"[::1]:9000",
        )
        self.assertEqual(answer.status, 200)
        self.assertIs(self.proxy.pool.servers[1].admin, AdminState.NORMAL)

    @inlineCallbacks
    def test_other_origin(self):
        """
        A POST from another origin (a form on another site): 403.
        """
        answer = yield self.request(
            b"POST", self.maint, b"Origin: https://evil.example\r\n", host=b"127.0.0.1:9000"
        )
        self.assertEqual(answer.status, 403)
        self.assertIs(self.proxy.pool.servers[1].admin, AdminState.NORMAL)

    @inlineCallbacks
    def test_rebound_name(self):
        """
        A POST naming another host (DNS rebinding: the page's origin and
        the host agree, but are not this machine's): 403.
        """
        answer = yield self.request(
            b"POST",
            self.maint,
            b"Origin: http://evil.example:9000\r\n",
            host=b"evil.example:9000",
        )
        self.assertEqual(answer.status, 403)
        self.assertIs(self.proxy.pool.servers[1].admin, AdminState.NORMAL)
