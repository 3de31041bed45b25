"""
Fakes of the proxy's two sides, implementing the real interfaces, for
driving a L{lbproxy.proxy.exchange.ProxyExchange} on a L{Clock} without a
socket (as treq's C{_agentspy} fakes an agent).

  - L{FakeUpstreamClient}: an L{lbproxy.upstream.client.UpstreamClient} that
    records what is sent; the test answers through the recorded sink, as
    an L{lbproxy.upstream.connection.UpstreamConnection} would.
  - L{FakeClientRequest}: an L{lbproxy.http.request.ClientRequest} that
    records the answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from lbproxy.balancing.pool import Server
from lbproxy.config.model import Config, PoolConfig, ServerConfig
from lbproxy.http.request import ExchangeRecord, Header, RequestExchange
from lbproxy.proxy.resource import BalancingProxyResource
from lbproxy.service.service import build_router
from lbproxy.upstream.body import StreamingBody
from lbproxy.upstream.connection import IResponseSink, UpstreamRequest


@dataclass
class Sent:
    """
    One request sent upstream.

    @ivar fresh: sent with C{send_fresh} (a new connection).
    @ivar abandoned: the exchange gave it up.
    """

    server: Server
    request: UpstreamRequest
    sink: IResponseSink
    fresh: bool
    abandoned: bool = False


class FakeUpstreamClient:
    """
    Records every request sent; answers come from the test through
    C{sent[i].sink}.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.sent: list[Sent] = []
        self.idle: dict[Server, int] = {}

    def _send(self, server: Server, request: UpstreamRequest, sink: Any, fresh: bool) -> Any:
        sent = Sent(server, request, sink, fresh)
        self.sent.append(sent)

        def abandon() -> None:
            sent.abandoned = True

        return abandon

    def send(self, server: Server, request: UpstreamRequest, sink: Any) -> Any:
        """
        Send on a pooled connection (recorded).
        """
        return self._send(server, request, sink, False)

    def send_fresh(self, server: Server, request: UpstreamRequest, sink: Any) -> Any:
        """
        Send on a new connection (recorded).
        """
        return self._send(server, request, sink, True)

    def idle_count(self, server: Server) -> int:
        """
        Idle connections to C{server}: as many as the test set in C{idle}.
        """
        return self.idle.get(server, 0)


@implementer(IPushProducer)
class FakeProducer:
    """
    Stands for the upstream connection as the answer's producer.
    """

    paused = False
    stopped = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.stopped = True


@dataclass
class FakeClientRequest:
    """
    A client request that records its answer.

    @ivar answer: C{(status, reason, headers)} once answered.
    @ivar written: the body written.
    @ivar producer: the answer's producer (the exchange).
    @ivar finished: C{finish} was called.
    @ivar aborted: C{abort} was called.
    @ivar pending: what C{unsent} answers (the client's socket buffer).
    @ivar upgrade: what an upgrade request offers, else L{None}.
    @ivar end: what C{switch_protocols} gives the tunnel (a L{FakeEnd}).
    @ivar tunnel_log: C{(bytes_sent, bytes_received, seconds)} once the
        tunnel closed.
    """

    method: bytes = b"GET"
    target: bytes = b"/"
    version: bytes = b"HTTP/1.1"
    headers: list[Header] = field(default_factory=lambda: [(b"Host", b"example.com")])
    body: StreamingBody | None = None
    exchange: RequestExchange | None = None
    record: ExchangeRecord | None = None
    secure: bool = False
    client_address: bytes = b"10.0.0.9"
    answer: tuple[int, bytes, list[Header]] | None = None
    written: bytes = b""
    producer: IPushProducer | None = None
    finished: bool = False
    aborted: bool = False
    flushes: int = 0
    pending: int | None = None
    upgrade: bytes | None = None
    end: Any = None
    tunnel_log: tuple[int, int, float] | None = None

    @property
    def answer_started(self) -> bool:
        return self.answer is not None

    def header(self, name: bytes) -> bytes | None:
        found = None
        for each, value in self.headers:
            if each.lower() == name:
                found = value
        return found

    def default_host(self) -> bytes:
        return b"proxy.example:8080"

    def respond(
        self,
        status: int,
        reason: bytes,
        headers: list[Header],
        producer: IPushProducer | None = None,
    ) -> None:
        self.answer = (status, reason, headers)
        self.producer = producer

    def write(self, data: bytes) -> None:
        self.written += data

    def flush(self) -> None:
        self.flushes += 1

    def finish(self) -> None:
        self.finished = True

    def abort(self) -> None:
        self.aborted = True

    def unsent(self) -> int | None:
        return self.pending

    def switch_protocols(self, reason: bytes, headers: list[Header]) -> Any:
        self.answer = (101, reason, headers)
        if self.end is None:
            self.end = FakeEnd()
        return self.end

    def tunnel_closed(self, bytes_sent: int, bytes_received: int, seconds: float) -> None:
        self.tunnel_log = (bytes_sent, bytes_received, seconds)

    @property
    def status(self) -> int:
        """
        The answer's status (0 before one).
        """
        return self.answer[0] if self.answer is not None else 0


class HalfCloseTransport(StringTransport):
    """
    A plain TCP transport as a tunnel sees it: its write side closes alone
    (a FIN), and unregistering its producer twice is harmless.

    @ivar write_closed: a FIN was sent.
    @ivar aborted: it was aborted.
    """

    write_closed = False
    aborted = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def unregisterProducer(self) -> None:
        self.producer = None
        self.streaming = None

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


class FakeEnd:
    """
    A connection switched to a tunnel (L{lbproxy.interfaces.TunnelEnd}):
    it records its receiver and gives it what C{pending} holds on attach.

    @ivar receiver: the tunnel's side for this end, once attached.
    """

    def __init__(self, half_close: bool = True, pending: bytes = b"") -> None:
        self.transport = HalfCloseTransport()
        self.half_close = half_close
        self.pending = pending
        self.receiver: Any = None

    def attach(self, receiver: Any) -> None:
        self.receiver = receiver
        if self.pending:
            receiver.tunnel_data(self.pending)


def resource(
    clock: Clock, servers: int = 2, send_timeout: float = 60.0, **pool: Any
) -> tuple[BalancingProxyResource, FakeUpstreamClient]:
    """
    A proxy resource over one pool of C{servers} servers (10.0.0.1:80 ...),
    sending through a L{FakeUpstreamClient}.

    @param pool: options of the pool (L{PoolConfig} fields).
    """
    configs = tuple(ServerConfig(f"10.0.0.{i}", 80) for i in range(1, servers + 1))
    config = Config(pools=(PoolConfig("web", configs, health_check=False, **pool),))
    client = FakeUpstreamClient(clock)
    proxy = BalancingProxyResource(
        build_router(config, clock),
        client,
        send_timeout=send_timeout,  # type: ignore[arg-type]
    )
    return proxy, client
