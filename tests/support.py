"""
Helpers for integration tests: app servers, a proxy and a raw HTTP client,
all on 127.0.0.1 with ports the system chooses.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from lbproxy.config.model import Config, PoolConfig, ServerConfig
from lbproxy.http.site import ProxySite
from lbproxy.tap import build_site
from lbproxy.upstream.client import UpstreamClient


class RecordedRequest:
    """
    What an app server saw of one request.
    """

    def __init__(self, request: Request) -> None:
        self.method = request.method
        self.uri = request.uri
        self.headers = {
            name.lower(): list(values) for name, values in request.requestHeaders.getAllRawHeaders()
        }
        self.body = request.content.read()


class StreamingBody:
    """
    A push producer writing C{total} bytes of a repeating pattern to a
    request, recording how far it got and whether it is paused.
    """

    def __init__(self, request: Request, total: int) -> None:
        self.request = request
        self.total = total
        self.sent = 0
        self.paused = False
        self.finished = False
        self.pauses = 0
        request.registerProducer(self, True)
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        chunk = b"0123456789abcdef" * 4096
        while not self.paused and self.sent < self.total:
            piece = chunk[: self.total - self.sent]
            self.sent += len(piece)
            self.request.write(piece)
        if self.sent >= self.total and not self.finished:
            self.finished = True
            self.request.unregisterProducer()
            self.request.finish()

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def stopProducing(self) -> None:
        self.paused = True


def pattern_digest(total: int) -> str:
    """
    The sha256 of what L{StreamingBody} sends for C{total} bytes.
    """
    chunk = b"0123456789abcdef" * 4096
    digest = hashlib.sha256()
    remaining = total
    while remaining:
        piece = chunk[:remaining]
        digest.update(piece)
        remaining -= len(piece)
    return digest.hexdigest()


class AppServer(Resource):
    """
    A small app server for tests, named like the walkthrough's.

    Routes: C{/} answers C{PORT <name>}; C{/echo} answers the request body;
    C{/cookies} sets two cookies; C{/status/N} answers status N;
    C{/big/N} streams N bytes with backpressure; C{/chunked} answers in
    pieces without a length; anything else is 404.
    """

    isLeaf = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.requests: list[RecordedRequest] = []
        self.streams: list[StreamingBody] = []
        self.held: list[Request] = []
        self.held_arrived: list[Deferred[None]] = []

    def render(self, request: Request) -> bytes | int:  # type: ignore[override]
        self.requests.append(RecordedRequest(request))
        request.content.seek(0)
        path = request.path
        if path == b"/":
            return b"PORT " + self.name.encode()
        if path == b"/echo":
            request.setHeader(b"Content-Type", b"application/octet-stream")
            return request.content.read()
        if path == b"/cookies":
            request.responseHeaders.addRawHeader(b"Set-Cookie", b"a=1")
            request.responseHeaders.addRawHeader(b"Set-Cookie", b"b=2")
            return b"cookies"
        if path.startswith(b"/status/"):
            request.setResponseCode(int(path.rsplit(b"/", 1)[1]))
            return b""
        if path.startswith(b"/big/"):
            total = int(path.rsplit(b"/", 1)[1])
            request.setHeader(b"Content-Length", b"%d" % total)
            self.streams.append(StreamingBody(request, total))
            return NOT_DONE_YET
        if path == b"/hold":
            # Answered by the test: release_held() finishes it.
            self.held.append(request)
            waiters, self.held_arrived = self.held_arrived, []
            for waiter in waiters:
                waiter.callback(None)
            return NOT_DONE_YET
        if path == b"/chunked":
            request.write(b"first,")
            request.write(b"second,")
            request.write(b"third")
            request.finish()
            return NOT_DONE_YET
        request.setResponseCode(404)
        return b"Cannot GET " + path


def held_request(app: AppServer) -> Deferred[None]:
    """
    Fires once C{app} holds a C{/hold} request.
    """
    if app.held:
        return Deferred.fromCoroutine(_nothing())
    waiter: Deferred[None] = Deferred()
    app.held_arrived.append(waiter)
    return waiter


async def _nothing() -> None:
    return None


def release_held(app: AppServer) -> None:
    """
    Answer every request C{app} holds with C{held by <name>}.
    """
    for request in app.held:
        request.write(b"held by " + app.name.encode())
        request.finish()
    app.held = []


class CountingSite(Site):
    """
    A Site that counts the connections it accepted.
    """

    noisy = False
    connections = 0

    def buildProtocol(self, addr: Any) -> Any:
        self.connections += 1
        return super().buildProtocol(addr)

    def log(self, request: Any) -> None:
        pass


def listen(testcase: TestCase, factory: Factory) -> int:
    """
    Listen with C{factory} on 127.0.0.1, port 0; stop on cleanup.

    @return: the port number.
    """
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    testcase.addCleanup(port.stopListening)
    return port.getHost().port


def start_app(testcase: TestCase, name: str) -> tuple[AppServer, CountingSite, int]:
    """
    Start an L{AppServer}.

    @return: the app, its site, and its port.
    """
    app = AppServer(name)
    site = CountingSite(app)
    site.timeOut = None
    return app, site, listen(testcase, site)


def refused_port(testcase: TestCase) -> int:
    """
    A loopback port that refuses connections for the whole test: bound but
    not listening, so that nothing else (the proxy under test included,
    listening on port 0) can be given it.  A released port could be, and
    then the proxy would proxy to itself.
    """
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    testcase.addCleanup(holder.close)
    return holder.getsockname()[1]


def free_port() -> int:
    """
    A loopback port nothing uses now (bound, then released at once), for a
    test that listens on it later.
    """
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    number = probe.getsockname()[1]
    probe.close()
    return number


def start_proxy(
    testcase: TestCase,
    ports: list[int],
    clock: Any = None,
    **settings: Any,
) -> tuple[int, ProxySite, UpstreamClient]:
    """
    Start lbproxy over app servers on the given loopback ports.

    @param clock: what times the upstream timeouts (a C{Clock} to drive
        them by hand); the reactor if L{None}.
    @param settings: L{Config} fields to override.
    @return: the proxy's port, its site and its upstream client.
    """
    servers = tuple(ServerConfig("127.0.0.1", port) for port in ports)
    settings.setdefault("access_log", "off")
    config = Config(pools=(PoolConfig("default", servers),), **settings)
    site, client = build_site(config, reactor, clock)
    proxy_port = listen(testcase, site)
    testcase.addCleanup(client.close_idle)
    return proxy_port, site, client


class RawResponse:
    """
    A parsed HTTP/1.x response from raw bytes (for assertions only).
    """

    def __init__(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], body: bytes):
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body

    def header(self, name: bytes) -> list[bytes]:
        """
        Every value of header C{name}.
        """
        return [v for n, v in self.headers if n.lower() == name.lower()]


def parse_responses(data: bytes, head_only: bool = False) -> list[RawResponse]:
    """
    Split raw bytes into responses (Content-Length, chunked or until EOF).
    Interim 1xx responses are included.
    """
    responses = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        _, status, reason = (lines[0].split(b" ", 2) + [b""])[:3]
        headers = [tuple(line.split(b": ", 1)) for line in lines[1:]]
        response = RawResponse(int(status), reason, headers, b"")  # type: ignore[arg-type]
        code = int(status)
        if head_only or code < 200 or code in (204, 304):
            body, data = b"", rest
        elif response.header(b"content-length"):
            length = int(response.header(b"content-length")[0])
            body, data = rest[:length], rest[length:]
        elif response.header(b"transfer-encoding"):
            body = b""
            while True:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    _, _, data = rest.partition(b"\r\n")
                    break
                body += rest[:size]
                rest = rest[size + 2 :]
        else:
            body, data = rest, b""
        response.body = body
        responses.append(response)
    return responses


class RawClient(Protocol):
    """
    Sends raw bytes and collects everything the server sends until it
    closes; C{done} fires with the bytes, or with a failure if the
    connection was aborted rather than closed cleanly (when C{raw_failure}).
    """

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.received = b""
        self.done: Deferred[bytes] = Deferred()
        self.made: Deferred[None] = Deferred()
        self.on_data: Callable[[RawClient], None] | None = None

    def connectionMade(self) -> None:
        self.transport.write(self.payload)
        self.made.callback(None)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.on_data is not None:
            self.on_data(self)

    def connectionLost(self, reason: Failure) -> None:
        self.reason = reason
        self.done.callback(self.received)


class _RawClientFactory(ClientFactory):
    """
    Makes one L{RawClient}; a refused connection fails its C{done}.
    """

    def __init__(self, client: RawClient) -> None:
        self.client = client

    def buildProtocol(self, addr: Any) -> RawClient:
        return self.client

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.client.done.errback(reason)


def raw_request(port: int, payload: bytes) -> tuple[RawClient, Deferred[bytes]]:
    """
    Connect to C{port} on loopback, send C{payload}, collect the answer.

    @return: the client protocol and a Deferred firing with all bytes
        received once the server closes.
    """
    client = RawClient(payload)
    factory = _RawClientFactory(client)
    reactor.connectTCP("127.0.0.1", port, factory)
    return client, client.done


def get(port: int, path: bytes = b"/", headers: bytes = b"") -> Deferred[RawResponse]:
    """
    One C{GET} with C{Connection: close}; fires with the parsed response.
    """
    payload = (
        b"GET "
        + path
        + b" HTTP/1.1\r\nHost: test.example\r\n"
        + headers
        + b"Connection: close\r\n\r\n"
    )
    _, done = raw_request(port, payload)
    return done.addCallback(lambda data: parse_responses(data)[-1])
