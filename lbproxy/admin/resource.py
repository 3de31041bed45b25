# -*- test-case-name: tests.admin.test_resource -*-
"""
The admin's HTTP side: a twisted.web resource, thin over
L{lbproxy.admin.core.AdminCore} (the admin is not a hot path, so Twisted's
own web server serves it).

  - C{GET /}: the status page (L{lbproxy.admin.page});
  - C{GET /api/status}: the whole snapshot; C{GET /api/upstreams}: its
    pools, C{{POOL: {"balance": ..., "servers": [...]}}};
  - C{POST /api/upstreams/POOL/servers/ADDRESS/drain} (or C{maint},
    C{enable}): L{AdminCore.act};
  - C{GET /metrics}: Prometheus's text format (L{lbproxy.admin.metrics});
  - C{GET /healthz}: 200 while lbproxy serves with a server in rotation,
    503 while it drains on stop or has none (a readiness probe).

Reading is open to whoever reaches the listener (as HAProxy's stats page
and Prometheus exporters are).  A C{POST} needs C{Authorization: Bearer
TOKEN} when a token is set (401 otherwise; compared with
L{hmac.compare_digest}, in constant time).  Against a web page driving an
operator's browser (cross-site request forgery), a C{POST} whose
C{Origin} is not the admin's own is refused (403), and without a token a
C{POST} must name a loopback host (C{Host: localhost}, C{127.0.0.1},
C{[::1]}), which a DNS rebinding attack cannot.

Under C{--workers}, the supervisor serves L{WorkersAdminResource}: the same
URLs over L{lbproxy.admin.gather.WorkersCore}, which gathers its workers'
snapshots before each read and sends each action to all of them.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import Resource

from lbproxy.admin.core import AdminError, Snapshot
from lbproxy.admin.gather import WorkersCore
from lbproxy.admin.metrics import CONTENT_TYPE, exposition, metrics_registry
from lbproxy.admin.page import PAGE_HEADERS, render_page

__all__ = ["AdminResource", "AdminSite", "Core", "WorkersAdminResource"]

_READ = (b"GET", b"HEAD")
_LOOPBACK_NAMES = (b"localhost",)


class Core(Protocol):
    """
    What L{AdminResource} reads and acts on: an
    L{lbproxy.admin.core.AdminCore}, or the supervisor's
    L{lbproxy.admin.gather.WorkersCore}.
    """

    def snapshot(self) -> Snapshot:
        """
        The whole state.
        """

    def upstreams(self) -> dict[str, Any]:
        """
        The pools and their servers, by pool name.
        """

    def readiness(self) -> tuple[bool, str]:
        """
        Whether lbproxy is ready for traffic, and why.
        """

    def act(self, pool: str, address: str, action: str) -> Any:
        """
        Do an operator's action: the answer's data (status 200), or a
        L{Deferred} firing with the answer's status and data.

        @raise AdminError: for an action that cannot be done.
        """


class AdminResource(Resource):
    """
    Every admin URL; see the module docstring.

    @ivar token: the bearer token C{POST}s must carry; empty for none.
        Replaced on reload.
    """

    isLeaf = True

    def __init__(self, core: Core, token: str = "") -> None:
        """
        @param core: the state and actions.
        @param token: see L{token}.
        """
        super().__init__()
        self.core = core
        self.token = token
        self._metrics = metrics_registry(core.snapshot)

    def render(self, request: server.Request) -> bytes | int:
        """
        Answer one request (or return L{server.NOT_DONE_YET} and answer
        later).
        """
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Cache-Control", b"no-store")
        path = request.path.split(b"?", 1)[0]
        segments = path.split(b"/")[1:]
        method = request.method
        if segments == [b""]:
            return self._read(request, method) or self._page(request)
        if segments == [b"healthz"]:
            return self._read(request, method) or self._healthz(request)
        if segments == [b"metrics"]:
            return self._read(request, method) or self._metrics_text(request)
        if segments == [b"api", b"status"]:
            return self._read(request, method) or _json(request, 200, self.core.snapshot())
        if segments == [b"api", b"upstreams"]:
            return self._read(request, method) or _json(request, 200, self.core.upstreams())
        if len(segments) == 6 and segments[:2] == [b"api", b"upstreams"]:
            if segments[3] == b"servers":
                return self._action(request, *(_text(s) for s in segments[2:]))
        return _json(request, 404, {"error": f"no such admin URL: {_text(path)}"})

    def _read(self, request: server.Request, method: bytes) -> bytes:
        """
        C{b""} for a C{GET} or C{HEAD}, else a 405 answer.
        """
        if method in _READ:
            return b""
        request.setHeader(b"Allow", b"GET, HEAD")
        return _json(request, 405, {"error": "only GET and HEAD here"})

    def _page(self, request: server.Request) -> bytes:
        for name, value in PAGE_HEADERS.items():
            request.setHeader(name, value)
        snapshot = self.core.snapshot()
        return render_page(snapshot["upstreams"], snapshot["lbproxy"]["time"])

    def _healthz(self, request: server.Request) -> bytes:
        ready, line = self.core.readiness()
        request.setResponseCode(200 if ready else 503)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return line.encode("utf-8") + b"\n"

    def _metrics_text(self, request: server.Request) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE.encode("ascii"))
        return exposition(self._metrics)

    def _action(
        self, request: server.Request, pool: str, _servers: str, address: str, action: str
    ) -> bytes | int:
        """
        C{POST /api/upstreams/POOL/servers/ADDRESS/ACTION}, once allowed.
        """
        if request.method != b"POST":
            request.setHeader(b"Allow", b"POST")
            return _json(request, 405, {"error": "actions are POSTs"})
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        try:
            done = self.core.act(pool, address, action)
        except AdminError as e:
            return _json(request, e.status, {"error": e.message})
        if isinstance(done, Deferred):
            return _later(request, done.addCallback(lambda answer: _json(request, *answer)))
        return _json(request, 200, done)

    def _refusal(self, request: server.Request) -> bytes | None:
        """
        The answer refusing a C{POST} (401, 403), or L{None} to allow it.
        """
        host = request.getHeader(b"host")
        origin = request.getHeader(b"origin")
        if origin is not None and not _same_origin(origin, host):
            return _json(request, 403, {"error": "cross-origin POST refused"})
        if not self.token:
            if host is not None and not _loopback_host(host):
                return _json(
                    request, 403, {"error": "without an admin token, POST to a loopback host"}
                )
            return None
        if _bearer(request.getHeader(b"authorization"), self.token):
            return None
        request.setHeader(b"WWW-Authenticate", b'Bearer realm="lbproxy admin"')
        return _json(request, 401, {"error": "needs Authorization: Bearer <admin token>"})


def _bearer(authorization: bytes | None, token: str) -> bool:
    """
    Whether an C{Authorization} value carries C{token} (RFC 6750 section
    2.1), compared in constant time: how long the comparison takes says
    nothing of how much of a guess was right.
    """
    if authorization is None:
        return False
    scheme, _, given = authorization.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return False
    return hmac.compare_digest(given.strip(), token.encode("ascii"))


def _same_origin(origin: bytes, host: bytes | None) -> bool:
    """
    Whether a request's C{Origin} is the admin itself (the page's own
    scripts), by host and port, as the browser reached it.
    """
    if host is None:
        return False
    parts = urlsplit(origin.decode("latin-1"))
    return parts.netloc.lower() == host.decode("latin-1").lower()


def _loopback_host(host: bytes) -> bool:
    """
    Whether a C{Host} value names this machine: C{localhost} or a loopback
    address, with or without a port.
    """
    name = host.lower()
    if name.startswith(b"["):
        name = name[1 : name.find(b"]")]
    elif name.count(b":") == 1:
        name = name.split(b":", 1)[0]
    if name in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name.decode("ascii")).is_loopback
    except (ValueError, UnicodeDecodeError):
        return False


def _text(segment: bytes) -> str:
    return unquote(segment.decode("latin-1"))


def _json(request: server.Request, status: int, data: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(data, indent=1).encode("utf-8") + b"\n"


def _later(request: server.Request, body: Deferred[bytes]) -> int:
    """
    Answer C{request} with C{body} once it fires (a 500 if it fails).

    @return: L{server.NOT_DONE_YET}, for C{render} to return.
    """
    gone: list[Failure] = []
    request.notifyFinish().addErrback(gone.append)

    def write(data: bytes) -> None:
        if gone:
            return
        request.setHeader(b"Content-Length", b"%d" % (len(data),))
        request.write(data)
        request.finish()

    def failed(reason: Failure) -> bytes:
        _log.failure("admin request failed", reason)
        return _json(request, 500, {"error": "internal error (logged)"})

    body.addErrback(failed).addCallback(write)
    return server.NOT_DONE_YET


_log = Logger()


class WorkersAdminResource(AdminResource):
    """
    The supervisor's admin under C{--workers}: every URL of
    L{AdminResource}, its reads answered once C{core} has gathered its
    workers' snapshots (its actions go to every worker).
    """

    def __init__(self, core: WorkersCore, token: str = "") -> None:
        """
        @param core: the workers' combined state and actions.
        @param token: see L{AdminResource.token}.
        """
        super().__init__(core, token)
        self._workers = core

    def render(self, request: server.Request) -> bytes | int:
        """
        Answer one request; a read once the workers have answered.
        """
        if request.method == b"POST":
            return super().render(request)
        return _later(request, self._workers.gather().addCallback(self._read_now, request))

    def _read_now(self, _: None, request: server.Request) -> bytes:
        body = super().render(request)
        # (Only actions answer later, and this is not one.)
        assert isinstance(body, bytes)
        return body


class AdminSite(server.Site):
    """
    The admin listener's factory: twisted.web's C{Site}, without an access
    log line per request (the status page polls every 2 seconds, and
    Prometheus every scrape).
    """

    noisy = False
    displayTracebacks = False
    #: Seconds an idle admin connection stays open (nginx's 75 s).
    timeOut = 75

    def log(self, request: object) -> None:
        """
        Nothing: admin requests are not logged.
        """
