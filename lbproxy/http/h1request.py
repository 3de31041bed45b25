# -*- test-case-name: tests.http.test_h1 -*-
"""
One request of the lean HTTP/1.1 path: L{HTTP11Request}, a
L{lbproxy.http.request.ClientRequest}, and how its answer is framed and
written.  Its connection is L{lbproxy.http.h1.HTTP11Connection}.
"""

from __future__ import annotations

import re
from typing import Protocol as TypingProtocol

from twisted.internet.interfaces import IPushProducer

from lbproxy.http.framing import RequestHead
from lbproxy.http.request import ExchangeRecord, Header, RequestExchange
from lbproxy.http.settings import ConnectionSettings
from lbproxy.interfaces import TunnelEnd
from lbproxy.upstream.body import StreamingBody

__all__ = ["AnswerChannel", "HTTP11Request"]


class AnswerChannel(TypingProtocol):
    """
    What a request asks of its connection.
    """

    settings: ConnectionSettings
    secure: bool
    client_address: bytes
    local_host: bytes
    closing_after_answer: bool

    def write(self, data: bytes) -> None:
        """
        Write to the client.
        """

    def answer_producer(self, producer: IPushProducer) -> None:
        """
        The answer's body comes from C{producer}.
        """

    def answer_done(self, request: HTTP11Request) -> None:
        """
        C{request}'s answer is complete.
        """

    def abort(self) -> None:
        """
        Reset the connection.
        """

    def unsent(self) -> int | None:
        """
        Bytes waiting for the client's socket.
        """

    def switch_protocols(self, head: bytes) -> TunnelEnd:
        """
        Write C{head}, a C{101}, and become a tunnel's client end.
        """


_NO_BODY_STATUSES = frozenset({204, 304})


#: Bytes of an answer collected before they are written even without a
#: flush (each read from the app server is flushed anyway).
_FLUSH_SIZE = 64 * 1024


#: A C{Host} value lbproxy puts in a redirect: a name, IPv4 address or
#: bracketed IPv6 address, with an optional port.
_REDIRECT_HOST = re.compile(rb"([A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]+)?")


class HTTP11Request:
    """
    One request of an L{HTTP11Connection}: a
    L{lbproxy.http.request.ClientRequest}.

    @ivar started: when its head was complete (the clock's seconds).
    @ivar status: the answer's status once it started (0 before; 499 if
        the client went away first, as nginx logs it).
    @ivar bytes_sent: body bytes of the answer written so far.
    @ivar finished: the answer is complete, or was given up on.
    @ivar keep_alive: the connection stays open after this answer.
    @ivar upgrade: the protocols an upgrade request offers (its C{Upgrade}
        value, L{lbproxy.upstream.upgrade.upgrade_offer}), else L{None}.
    @ivar record: what the proxy did with it (set by the exchange).
    """

    __slots__ = (
        "_connection",
        "method",
        "target",
        "version",
        "headers",
        "body",
        "exchange",
        "record",
        "started",
        "status",
        "bytes_sent",
        "finished",
        "keep_alive",
        "upgrade",
        "_chunked",
        "_out",
        "_out_size",
    )

    def __init__(self, connection: AnswerChannel, head: RequestHead, started: float) -> None:
        self._connection = connection
        self.method = head.method
        self.target = head.target
        self.version = head.version
        self.headers = head.headers
        self.body: StreamingBody | None = None
        self.exchange: RequestExchange | None = None
        self.record: ExchangeRecord | None = None
        self.started = started
        self.status = 0
        self.bytes_sent = 0
        self.finished = False
        self.keep_alive = head.version == b"HTTP/1.1"
        self.upgrade: bytes | None = None
        self._chunked = False
        self._out: list[bytes] = []
        self._out_size = 0

    @property
    def secure(self) -> bool:
        """
        Whether the client connected over TLS.
        """
        return self._connection.secure

    @property
    def client_address(self) -> bytes:
        """
        The client's IP address, C{b"unix:"} on a UNIX socket.
        """
        return self._connection.client_address

    @property
    def answer_started(self) -> bool:
        """
        Whether the answer's head has been written.
        """
        return self.status != 0

    def header(self, name: bytes) -> bytes | None:
        """
        The last value of header C{name} (lower-case), or L{None}.
        """
        found = None
        size = len(name)
        for each, value in self.headers:
            if len(each) == size and each.lower() == name:
                found = value
        return found

    def default_host(self) -> bytes:
        """
        The listener's address, for an HTTP/1.0 request without C{Host}.
        """
        return self._connection.local_host

    def unsent(self) -> int | None:
        """
        Bytes of the answer waiting in lbproxy for the client's socket.
        """
        return self._connection.unsent()

    def respond(
        self,
        status: int,
        reason: bytes,
        headers: list[Header],
        producer: IPushProducer | None = None,
    ) -> None:
        """
        Write the answer's status line and headers.

        The body's framing follows the headers (RFC 9112 section 6.3): a
        C{Content-Length} is kept as it is; a status or method without a
        body has none; otherwise the body is chunked to an HTTP/1.1 client
        and ends with the connection for an HTTP/1.0 one.
        """
        connection = self._connection
        self.status = status
        has_length = False
        parts = [b"HTTP/1.1 %d " % status, reason, b"\r\n"]
        for name, value in headers:
            if len(name) == 14 and name.lower() == b"content-length":
                has_length = True
            parts += (name, b": ", value, b"\r\n")
        if not has_length and not (
            status in _NO_BODY_STATUSES or status < 200 or self.method == b"HEAD"
        ):
            if self.version == b"HTTP/1.1":
                self._chunked = True
                parts.append(b"Transfer-Encoding: chunked\r\n")
            else:
                self.keep_alive = False
        hsts = connection.settings.hsts
        if (
            hsts is not None
            and connection.secure
            and not _has(headers, b"strict-transport-security")
        ):
            parts += (b"Strict-Transport-Security: ", hsts, b"\r\n")
        if not self.keep_alive or connection.closing_after_answer:
            self.keep_alive = False
            parts.append(b"Connection: close\r\n")
        parts.append(b"\r\n")
        if producer is not None:
            connection.answer_producer(producer)
        self._out = [b"".join(parts)]
        self._out_size = 0

    def write(self, data: bytes) -> None:
        """
        Write a piece of the answer's body: collected until L{flush} (or
        64 KiB), so that the head and the body of a small answer go out in
        one system call.
        """
        if not data or self.finished:
            return
        self.bytes_sent += len(data)
        out = self._out
        if self._chunked:
            out.append(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            out.append(data)
        self._out_size += len(data)
        if self._out_size >= _FLUSH_SIZE:
            self.flush()

    def flush(self) -> None:
        """
        Send what was collected.
        """
        out = self._out
        if out:
            self._out = []
            self._out_size = 0
            self._connection.write(out[0] if len(out) == 1 else b"".join(out))

    def finish(self) -> None:
        """
        The answer is complete: send it all.
        """
        if self.finished:
            return
        self.finished = True
        if self._chunked:
            self._out.append(b"0\r\n\r\n")
        self.flush()
        self._connection.answer_done(self)

    def abort(self) -> None:
        """
        The answer cannot be completed: reset the connection, so that a
        truncated answer never looks whole.
        """
        if not self.finished:
            self.finished = True
            self._connection.abort()

    def switch_protocols(self, reason: bytes, headers: list[Header]) -> TunnelEnd:
        """
        Answer C{101 Switching Protocols} with C{headers} (the tunnel's
        C{Connection} and C{Upgrade} among them, nothing added): HTTP ends
        on the connection, which becomes the tunnel's client end.  Only for
        a request with C{upgrade}.  The answer is over when the tunnel
        closes (L{tunnel_closed}).
        """
        self.status = 101
        parts = [b"HTTP/1.1 101 ", reason, b"\r\n"]
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        parts.append(b"\r\n")
        return self._connection.switch_protocols(b"".join(parts))

    def tunnel_closed(self, bytes_sent: int, bytes_received: int, seconds: float) -> None:
        """
        The tunnel this request opened closed: log it now, with status 101.

        @param bytes_sent: bytes the tunnel sent to the client.
        @param bytes_received: bytes the client sent through it.
        @param seconds: how long it was open.
        """
        self.finished = True
        self.bytes_sent = bytes_sent
        self._connection.settings.access_log.tunnel_done(self, seconds, bytes_received)
        # As for an answered request: the exchange refers to this request.
        self.exchange = None

    def respond_text(self, status: int, reason: bytes, text: bytes) -> None:
        """
        Answer with a short text of lbproxy's own (an error, a redirect),
        with a C{Date}.
        """
        self.respond(
            status,
            reason,
            [
                (b"Content-Type", b"text/plain; charset=utf-8"),
                (b"Content-Length", b"%d" % len(text)),
                (b"Date", self._connection.settings.date()),
            ],
        )
        self.write(text)
        self.finish()

    def redirect_to_https(self, port: int) -> None:
        """
        Answer with 308 to the same target on https on C{port} (nginx:
        C{return 308 https://$host$request_uri}); the connection reads and
        drops the body.
        """
        match = _REDIRECT_HOST.fullmatch(self.header(b"host") or b"")
        if match is None:
            self.respond_text(
                400, b"Bad Request", b"Bad Request: no usable Host header to redirect to\n"
            )
            return
        suffix = b"" if port == 443 else b":%d" % port
        location = b"https://" + match.group(1) + suffix + self.target
        body = b"Redirecting to " + location + b"\n"
        self.respond(
            308,
            b"Permanent Redirect",
            [
                (b"Location", location),
                (b"Content-Type", b"text/plain; charset=utf-8"),
                (b"Content-Length", b"%d" % len(body)),
            ],
        )
        self.write(body)
        self.finish()


def _has(headers: list[Header], name: bytes) -> bool:
    return any(each.lower() == name for each, _ in headers)
