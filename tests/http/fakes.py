"""
Fakes for testing the client side without a network, as Twisted's own
tests do: transports as TCP and TLS present them (over L{StringTransport}),
handlers that record or answer the requests they are given, an exchange
that records being abandoned, an access log sink in memory, and a
L{ProxySite} on a L{Clock}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from lbproxy.config.model import Config, PoolConfig, ServerConfig
from lbproxy.http.accesslog import AccessLog
from lbproxy.http.h1 import HTTP11Connection
from lbproxy.http.request import ClientRequest
from lbproxy.http.site import ProxySite
from tests.support import parse_responses


class RecordingHandler:
    """
    A handler (L{lbproxy.http.h1.RequestHandler}) that keeps every request
    it is given, unanswered.  HTTP/2 streams, twisted.web requests, reach
    it through C{render}, as they reach the proxy resource.
    """

    def __init__(self) -> None:
        self.requests: list[Any] = []

    def handle(self, request: ClientRequest) -> None:
        self.requests.append(request)

    def render(self, request: Any) -> int:
        self.requests.append(request)
        return NOT_DONE_YET

    @property
    def targets(self) -> list[bytes]:
        """
        The targets of the requests given so far, in order.
        """
        return [request.target for request in self.requests]


class AnsweringHandler(RecordingHandler):
    """
    A handler that takes each request's body whole, as an app server
    would, and then answers C{200} with the request's target as body.

    @ivar bodies: where each request's body was written, by target.
    @ivar uploads: each request with a body, and where it was written, in
        the order handled.
    """

    def __init__(self) -> None:
        super().__init__()
        self.bodies: dict[bytes, StringTransport] = {}
        self.uploads: list[tuple[Any, StringTransport]] = []

    def handle(self, request: ClientRequest) -> None:
        self.requests.append(request)
        if request.body is None:
            answer(request, request.target)
            return
        upstream = self.bodies[request.target] = StringTransport()
        self.uploads.append((request, upstream))
        request.body.attach(upstream, lambda: answer(request, request.target))


def answer(request: ClientRequest, body: bytes = b"ok", status: int = 200) -> None:
    """
    Answer C{request} whole, with a C{Content-Length}.
    """
    request.respond(status, b"OK", [(b"Content-Length", b"%d" % len(body))])
    request.write(body)
    request.finish()


class RecordingExchange:
    """
    Stands for the exchange proxying a request
    (L{lbproxy.http.request.RequestExchange}): records being abandoned.
    """

    gone = False

    def client_gone(self) -> None:
        self.gone = True


class MemorySink:
    """
    An access log sink (L{lbproxy.http.accesslog.LineSink}) in memory: one
    entry per batch written.
    """

    def __init__(self) -> None:
        self.batches: list[bytes] = []
        self.reopened = 0
        self.closed = False

    def write_lines(self, data: bytes) -> None:
        self.batches.append(data)

    def reopen(self) -> None:
        self.reopened += 1

    def close(self) -> None:
        self.closed = True

    @property
    def lines(self) -> list[str]:
        """
        Every line written so far, without newlines.
        """
        return b"".join(self.batches).decode("utf-8").splitlines()


class TCPTransport(StringTransport):
    """
    A client's TCP connection as a connection sees it: its write side can
    be closed alone (a FIN, for the lingering close), and unregistering its
    producer twice is harmless, as on Twisted's TCP transports.

    @ivar write_closed: the write side was closed.
    """

    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def unregisterProducer(self) -> None:
        self.producer = None
        self.streaming = None


@implementer(ISSLTransport)
class TLSTransport(StringTransport):
    """
    A client's TLS connection (C{TLSMemoryBIOProtocol}): no half-close, a
    harmless second C{unregisterProducer}, and the protocol ALPN picked.
    """

    def __init__(self, negotiated: bytes | None = None) -> None:
        super().__init__()
        self.negotiatedProtocol = negotiated

    def unregisterProducer(self) -> None:
        self.producer = None
        self.streaming = None

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def getPeerCertificate(self) -> None:
        return None


def config(**settings: Any) -> Config:
    """
    A configuration with one pool (never connected to here) and the
    access log off, with C{settings} overridden.
    """
    settings.setdefault("access_log", "off")
    return Config(pools=(PoolConfig("p", (ServerConfig("127.0.0.1", 1),)),), **settings)


def connect(site: ProxySite, transport: StringTransport | None = None) -> tuple[Any, Any]:
    """
    A new connection of C{site} on C{transport} (a L{TCPTransport} by
    default).

    @return: the connection and its transport.
    """
    protocol = site.buildProtocol(None)
    transport = transport if transport is not None else TCPTransport()
    protocol.makeConnection(transport)
    return protocol, transport


class ClientSideTestCase(SynchronousTestCase):
    """
    A L{ProxySite} on a L{Clock}, whose requests go to a
    L{RecordingHandler} and whose access lines to a L{MemorySink}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.handler = RecordingHandler()
        self.sink = MemorySink()
        self.access_log = AccessLog(self.clock, self.sink)

    def site(self, **settings: Any) -> ProxySite:
        """
        A site with these L{Config} settings (C{client_timeout=60} unless
        given).
        """
        settings.setdefault("client_timeout", 60.0)
        return ProxySite(self.handler, config(**settings), self.access_log, self.clock)

    def connection(
        self, transport: StringTransport | None = None, **settings: Any
    ) -> tuple[HTTP11Connection, Any]:
        """
        A connection of a new site with these settings.
        """
        return connect(self.site(**settings), transport)

    def logged(self) -> list[str]:
        """
        The access lines written once the log is flushed.
        """
        self.access_log.flush()
        return self.sink.lines

    def assertRefused(self, transport: StringTransport, status: int) -> None:
        """
        C{transport} got one answer, C{status} with C{Connection: close},
        and is being closed (its write side, or whole).
        """
        responses = parse_responses(transport.value())
        self.assertEqual([r.status for r in responses], [status], transport.value())
        self.assertEqual(responses[0].header(b"connection"), [b"close"])
        self.assertTrue(transport.disconnecting or getattr(transport, "write_closed", False))
