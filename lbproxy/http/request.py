# -*- test-case-name: tests.proxy.test_exchange -*-
"""
The contract between the client side and the proxy: what a client request
offers the exchange that proxies it (L{ClientRequest}), and what the
exchange offers back (L{RequestExchange}).

Two classes implement L{ClientRequest}: L{lbproxy.http.h1.HTTP11Request}
(the lean HTTP/1.1 path) and L{lbproxy.http.h2.H2Request} (an HTTP/2
stream, a twisted.web C{Request}).  The proxy (L{lbproxy.proxy.exchange})
sees only this protocol, so its tests drive it with a fake of it.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.interfaces import IPushProducer

from lbproxy.interfaces import TunnelEnd
from lbproxy.upstream.body import StreamingBody

__all__ = ["ClientRequest", "ExchangeRecord", "Header", "RequestExchange"]

Header = tuple[bytes, bytes]


class ExchangeRecord:
    """
    What the proxy did with one request, for its access log line: filled
    in by the exchange (L{lbproxy.proxy.exchange.ProxyExchange}) as the
    request goes, read once when the line is written.  The names are
    nginx's variables.

    @ivar request_id: the C{X-Request-Id} sent upstream and back
        (C{$request_id}).
    @ivar started: when the exchange began (the clock's seconds), for the
        total time (C{$request_time}).
    @ivar pool: the pool the request was routed to, or L{None}.
    @ivar upstream_addr: the address of the last server tried, or L{None}
        if none was (C{$upstream_addr}).
    @ivar upstream_status: that server's answer's status; 0 if it gave
        none (C{$upstream_status}).
    @ivar connect_time: seconds to a connection to it, 0 for a pooled one
        (C{$upstream_connect_time}); L{None} if there was none.
    @ivar header_time: seconds from the attempt's start to the answer's
        head (C{$upstream_header_time}), or L{None}.
    @ivar response_time: seconds from the attempt's start to the answer's
        end (C{$upstream_response_time}), or L{None}.
    @ivar retries: attempts after the first (another server, or a fresh
        connection).
    """

    __slots__ = (
        "request_id",
        "started",
        "pool",
        "upstream_addr",
        "upstream_status",
        "connect_time",
        "header_time",
        "response_time",
        "retries",
    )

    def __init__(self, request_id: bytes, started: float) -> None:
        self.request_id = request_id
        self.started = started
        self.pool: str | None = None
        self.upstream_addr: str | None = None
        self.upstream_status = 0
        self.connect_time: float | None = None
        self.header_time: float | None = None
        self.response_time: float | None = None
        self.retries = 0


class RequestExchange(Protocol):
    """
    What the client side tells the exchange proxying one of its requests.
    """

    def client_gone(self) -> None:
        """
        The client went away, or its request was refused: abandon the
        upstream side, nothing more of the request will come and no answer
        can be delivered.
        """


class ClientRequest(Protocol):
    """
    One client request as the proxy sees it.

    @ivar method: the method token.
    @ivar target: the request target, origin-form (or C{*}), as the gate
        normalised it.
    @ivar version: C{b"HTTP/1.1"}, C{b"HTTP/1.0"} or C{b"HTTP/2"}.
    @ivar headers: the header fields the gate passed, in order, with the
        framing headers normalised (C{Content-Length} or
        C{Transfer-Encoding: chunked} when there is a body).
    @ivar body: the body on its way (streamed as it arrives), or L{None}.
    @ivar exchange: told when the client goes away; set by the exchange.
    @ivar secure: whether the client connected over TLS.
    @ivar client_address: the client's IP address (C{b"unix:"} on a UNIX
        socket), for C{X-Forwarded-For} and the logs.
    @ivar answer_started: whether the answer's head has been written.
    @ivar upgrade: what an HTTP/1.1 upgrade request offers to switch to
        (its C{Upgrade} value, forwarded), else L{None}; always L{None} on
        HTTP/2, whose extended CONNECT (RFC 8441) lbproxy does not proxy.
    @ivar record: what the proxy did with it, for the access log; set by
        the exchange (L{None} for a request it never saw: a redirect).
    """

    method: bytes
    target: bytes
    version: bytes
    headers: list[Header]
    body: StreamingBody | None
    exchange: RequestExchange | None
    upgrade: bytes | None
    record: ExchangeRecord | None

    @property
    def secure(self) -> bool:
        """
        Whether the client connected over TLS.
        """

    @property
    def client_address(self) -> bytes:
        """
        The client's IP address.
        """

    @property
    def answer_started(self) -> bool:
        """
        Whether the answer's head has been written.
        """

    def header(self, name: bytes) -> bytes | None:
        """
        The last value of request header C{name} (lower-case), or L{None}.
        """

    def default_host(self) -> bytes:
        """
        The C{Host} to send for a request that has none (HTTP/1.0): the
        listener's own address.
        """

    def respond(
        self,
        status: int,
        reason: bytes,
        headers: list[Header],
        producer: IPushProducer | None = None,
    ) -> None:
        """
        Write the answer's status line and end-to-end headers (the client
        side adds its own framing and connection headers).

        @param producer: where the body comes from; paused while the
            client does not keep up.
        """

    def write(self, data: bytes) -> None:
        """
        Write a piece of the answer's body.
        """

    def flush(self) -> None:
        """
        Send what C{respond} and C{write} collected: they may hold it back
        so that a head and a small body go out in one write.
        """

    def finish(self) -> None:
        """
        The answer is complete (and what was collected is sent).
        """

    def abort(self) -> None:
        """
        The answer cannot be completed: reset the client (its connection,
        or on HTTP/2 its stream), so that a truncated answer never looks
        whole.
        """

    def unsent(self) -> int | None:
        """
        How many bytes of the answer wait in lbproxy for the client's
        socket, or L{None} if that cannot be known (an HTTP/2 stream).
        """

    def switch_protocols(self, reason: bytes, headers: list[Header]) -> TunnelEnd:
        """
        Answer C{101 Switching Protocols} with these headers as they are
        (C{Connection} and C{Upgrade} included): the client connection
        becomes a tunnel's end.  Only for a request with C{upgrade}.
        """

    def tunnel_closed(self, bytes_sent: int, bytes_received: int, seconds: float) -> None:
        """
        The tunnel opened by L{switch_protocols} closed after C{seconds},
        having sent C{bytes_sent} to the client and C{bytes_received} from
        it: log the request.
        """
