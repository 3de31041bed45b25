# -*- test-case-name: tests.upstream.test_body -*-
"""
Request bodies that go to the app server as they arrive from the client.

twisted.web collects a whole request body (in memory or a temporary file)
before a resource sees the request.  lbproxy instead starts proxying when
the headers are complete: the client side (L{lbproxy.http.h1},
L{lbproxy.http.h2request}) feeds each piece of
the body into a L{StreamingBody}, which writes it to the upstream connection
as soon as there is one.  Backpressure runs both ways:

  - while no upstream connection is attached yet (connecting), at most
    L{PENDING_LIMIT} bytes are held; beyond that the client is paused;
  - once attached, the body is the upstream transport's producer: when the
    app server reads slowly, the transport pauses it and it pauses reading
    from the client.

Until the first byte has been written upstream the body can still go to
another server (the pending pieces are kept), which is what lets a refused
connection fail over without losing the upload.  Over TLS the body is
attached only once the handshake has completed
(L{lbproxy.upstream.connection.UpstreamConnection.handshakeCompleted}): bytes written
during the handshake are lost with it if it fails.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

__all__ = ["PENDING_LIMIT", "StreamingBody"]

#: Bytes held while waiting for an upstream connection before the client is
#: paused.
PENDING_LIMIT = 64 * 1024


@implementer(IPushProducer)
class StreamingBody:
    """
    One request's body on its way from the client to an app server.

    @ivar length: the body's length from C{Content-Length}, or L{None} for a
        chunked body (then it is sent upstream chunked as well).
    @ivar complete: the client has sent the whole body.
    @ivar sent_any: some of it has been written upstream, so the request
        can no longer go to another server.
    """

    def __init__(self, client: Any, length: int | None) -> None:
        """
        @param client: the client's transport (an C{IPushProducer}), paused
            and resumed to hold the client back.
        @param length: see L{length}.
        """
        self._client = client
        self.length = length
        self.complete = False
        self.sent_any = False
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._upstream: Any = None
        self._sent: Callable[[], None] | None = None
        self._client_paused = False
        self._discarding = False

    @property
    def framing_header(self) -> tuple[bytes, bytes]:
        """
        The header that frames this body for the app server.
        """
        if self.length is None:
            return (b"Transfer-Encoding", b"chunked")
        return (b"Content-Length", b"%d" % self.length)

    # The client side

    def feed(self, data: bytes) -> None:
        """
        A piece of the body arrived from the client.
        """
        if self._discarding or not data:
            return
        if self._upstream is not None:
            self._write(data)
            return
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size > PENDING_LIMIT:
            self._pause_client()

    def end(self) -> None:
        """
        The client has sent the whole body.
        """
        self.complete = True
        if self._upstream is not None and not self._discarding:
            self._finish_upstream()

    # The upstream side

    def attach(self, transport: Any, sent: Callable[[], None] | None = None) -> None:
        """
        Start sending to C{transport} (the request head is already written):
        what arrived so far, then the rest as it comes.

        @param sent: called once the whole body has been written to
            C{transport} (the upstream read timeout starts then).
        """
        self._upstream = transport
        self._sent = sent
        transport.registerProducer(self, True)
        pending, self._pending, self._pending_size = self._pending, [], 0
        for data in pending:
            self._write(data)
        if self.complete:
            self._finish_upstream()
        else:
            self._resume_client()

    def detach(self) -> None:
        """
        The exchange is over (answered early, failed, or abandoned): stop
        sending, drop the rest of the body, and let the client finish
        sending it.
        """
        self._discarding = True
        self._pending, self._pending_size = [], 0
        self._release_upstream()
        self._resume_client()

    def release(self) -> None:
        """
        Forget the upstream transport without discarding anything: the
        attempt failed before any byte was written and the body is kept for
        the next server.
        """
        self._release_upstream()

    # IPushProducer, registered with the upstream transport

    def pauseProducing(self) -> None:
        """
        The app server reads slowly: stop reading from the client.
        """
        self._pause_client()

    def resumeProducing(self) -> None:
        """
        The app server caught up: read from the client again.
        """
        self._resume_client()

    def stopProducing(self) -> None:
        """
        The upstream connection is going away.
        """
        self.detach()

    # Internals

    def _write(self, data: bytes) -> None:
        self.sent_any = True
        if self.length is None:
            self._upstream.writeSequence([b"%x\r\n" % len(data), data, b"\r\n"])
        else:
            self._upstream.write(data)

    def _finish_upstream(self) -> None:
        if self.length is None:
            self._upstream.write(b"0\r\n\r\n")
            self.sent_any = True
        self._release_upstream()
        sent, self._sent = self._sent, None
        if sent is not None:
            sent()

    def _release_upstream(self) -> None:
        # attach() registered this body with the transport, so it is still
        # the transport's producer: unregister it whatever the transport
        # reports as its producer.  A TLS transport (TLSMemoryBIOProtocol)
        # wraps a producer in a _ProducerMembrane, so asking whether
        # C{upstream.producer is self} is never true through it, and the
        # pooled connection then refuses the next exchange's body.
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            upstream.unregisterProducer()

    def _pause_client(self) -> None:
        if not self._client_paused and not self.complete:
            self._client_paused = True
            self._client.pauseProducing()

    def _resume_client(self) -> None:
        if self._client_paused:
            self._client_paused = False
            self._client.resumeProducing()
