# -*- test-case-name: tests.http.test_h2 -*-
"""
HTTP/2 client connections behind lbproxy's gate (L{lbproxy.http.h2gate}).

Twisted's C{H2Connection} turns each HTTP/2 stream into a request with
little checking of its own, and the C{h2} library validates fields
differently from one version to the next, failing the whole connection
when it objects.  L{ProxyH2Connection} puts lbproxy's gate between the two:
every event C{h2} decodes passes through L{ProxyH2Connection.gate} before
Twisted sees it, so a malformed request never becomes a request.

  - A head refused by the gate is answered on its stream (400, 413, 414,
    431 or 501 with a short text body), and, if the client is still
    sending, the stream is reset: PROTOCOL_ERROR for a malformed request
    (RFC 9113 section 8.1.1), NO_ERROR otherwise (section 8.1).  Other
    streams carry on: these are stream errors, not connection errors.
  - DATA is counted against C{content-length} and trailers are checked; a
    mismatch resets the stream with PROTOCOL_ERROR and Twisted sees the
    reset, so the request's upstream exchange is abandoned, and the app
    server is not blamed for it.
  - An answer cut short by the app server resets its stream with
    INTERNAL_ERROR, so the client cannot take a truncated body for a
    whole one.
  - A stream answered in full while the client still sends its body is
    reset with NO_ERROR (RFC 9113 section 8.1), so its remaining DATA is
    not read.

C{h2}'s own field validation is turned off (lbproxy checks more, and per
stream); so is its check of C{content-length}, which ends the whole
connection where RFC 9113 asks for a stream error.

Private names this leans on, since Twisted's HTTP/2 support
(C{twisted.web._http2}) is private as a whole: it subclasses its
C{H2Connection}, replaces its C{conn} (the C{h2} state machine), overrides
its C{_requestDone} and calls its C{_tryToWriteControlData}; of C{h2}, it
overrides C{_begin_new_stream} to turn off the stream's C{content-length}
checks.  The whole suite runs on the oldest and the newest Twisted and
C{h2} that C{setup.cfg} allows (C{.ci/run}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import h2.connection
from h2.config import H2Configuration
from h2.errors import ErrorCodes
from h2.events import (
    DataReceived,
    Event,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from h2.exceptions import ProtocolError
from twisted.logger import Logger
from twisted.web._http2 import H2Connection
from twisted.web.http import datetimeToString

from lbproxy.http.framing import DEFAULT_LIMITS, REASONS, FramingError, Limits
from lbproxy.http.h2gate import BodyLength, check_request_headers, check_trailers, hpack_budget
from lbproxy.interfaces import IStreamTransport

if TYPE_CHECKING:
    from lbproxy.http.h2request import H2Request, StreamSite

__all__ = ["ProxyH2Connection"]

#: Events about one stream that Twisted looks the stream up for (and fails
#: with a KeyError if it no longer knows it).
_STREAM_EVENTS = (DataReceived, StreamEnded, StreamReset, TrailersReceived)


def _unchecked(*args: object) -> None:
    """
    Stands in for C{h2}'s own C{content-length} checks: lbproxy makes them
    per stream (L{BodyLength}).
    """


class _GatedH2(h2.connection.H2Connection):
    """
    C{h2}'s server-side state machine, with lbproxy's gate on the events it
    reports and its own field checks off.
    """

    def __init__(self, gate: Any, limits: Limits) -> None:
        """
        @param gate: called with the events of each C{receive_data}; returns
            the events Twisted may see.
        @param limits: the gate's size limits, which set how large a header
            list is decoded at all (L{hpack_budget}), and so advertised as
            C{SETTINGS_MAX_HEADER_LIST_SIZE}.
        """
        # h2 reads this in __init__ for its decoder and its SETTINGS.
        self.DEFAULT_MAX_HEADER_LIST_SIZE = hpack_budget(limits)
        super().__init__(
            H2Configuration(
                client_side=False,
                header_encoding=None,
                validate_inbound_headers=False,
                normalize_inbound_headers=False,
            )
        )
        self._gate = gate

    def receive_data(self, data: Any) -> list[Event]:
        """
        As C{h2}, then through the gate.
        """
        return self._gate(super().receive_data(data))  # type: ignore[no-any-return]

    def _begin_new_stream(self, stream_id: int, allowed_ids: Any) -> Any:
        """
        As C{h2} (a private method), with the stream's C{content-length}
        checks off: C{h2} raises them as connection errors (a GOAWAY that
        drops every other stream of the client), and not in every version;
        the gate checks the same per stream.
        """
        stream = super()._begin_new_stream(stream_id, allowed_ids)
        # Replaced on this stream object only; mypy checks a function put in
        # a method's place as if it were to be bound to the stream.
        stream._initialize_content_length = _unchecked  # type: ignore[method-assign, assignment]
        stream._track_content_length = _unchecked  # type: ignore[method-assign, assignment]
        return stream

    def reset_stream(self, stream_id: int, error_code: int = ErrorCodes.INTERNAL_ERROR) -> None:
        """
        Reset a stream; with INTERNAL_ERROR unless told otherwise.  Twisted
        resets a stream when its answer cannot be completed (the app server
        closed in the middle of it), with C{h2}'s default, NO_ERROR, which
        RFC 9113 section 8.1 reserves for a complete answer.
        """
        super().reset_stream(stream_id, error_code)


class ProxyH2Connection(H2Connection):
    """
    Twisted's HTTP/2 connection with lbproxy's gate in front of its
    streams.

    @ivar limits: the gate's limits (the site's, when the connection
        started).
    """

    _log = Logger()
    # Set by ProxySite.http2_connection before the connection starts
    # (Twisted's H2Connection reads requestFactory without declaring it,
    # and declares site and factory as None until a factory sets them).
    requestFactory: type[H2Request]
    site: StreamSite  # type: ignore[assignment]
    factory: StreamSite  # type: ignore[assignment]
    # Set by makeConnection before any other event: the HTTP/1.1
    # connection's (lbproxy.http.h1), handed over after ALPN.
    transport: IStreamTransport

    def __init__(self, limits: Limits = DEFAULT_LIMITS, reactor: Any = None) -> None:
        """
        @param limits: the gate's size limits.
        @param reactor: as Twisted's C{H2Connection}.
        """
        super().__init__(reactor)
        self.limits = limits
        self.conn = _GatedH2(self.gate, limits)
        # The streams Twisted knows, with the body still to come on each
        # (None when none is).
        self._bodies: dict[int, BodyLength | None] = {}

    def gate(self, events: list[Event]) -> list[Event]:
        """
        The events of one read, less those of refused streams.

        @param events: what C{h2} decoded, in order.
        @return: the events to hand to Twisted.
        """
        passed: list[Event] = []
        refused: set[int] = set()
        bodies = self._bodies
        for event in events:
            stream_id = getattr(event, "stream_id", 0)
            if stream_id in refused:
                self._drop(event)
                continue
            if isinstance(event, RequestReceived):
                open_ = event.stream_ended is None
                try:
                    head = check_request_headers(event.headers, not open_, self.limits)
                except FramingError as error:
                    self._refuse_head(stream_id, error, open_)
                    refused.add(stream_id)
                    continue
                event.headers = head.fields()
                bodies[stream_id] = BodyLength(head.content_length) if open_ else None
                passed.append(event)
                continue
            if not isinstance(event, _STREAM_EVENTS):
                passed.append(event)
                continue
            if stream_id not in bodies:
                # Twisted is done with this stream (it answered it, or it
                # was refused): what the client still sends is dropped.
                self._drop(event)
                continue
            body = bodies[stream_id]
            try:
                if isinstance(event, DataReceived):
                    if body is not None:
                        body.data(len(event.data))
                elif isinstance(event, TrailersReceived):
                    check_trailers(event.headers, self.limits)
                    continue  # checked, and dropped (Twisted ignores them)
                elif isinstance(event, StreamEnded):
                    if body is not None:
                        body.end()
                        bodies[stream_id] = None
            except FramingError as error:
                refused.add(stream_id)
                passed = self._refuse_stream(stream_id, error, passed)
                continue
            passed.append(event)
        return passed

    def _drop(self, event: Event) -> None:
        """
        Forget an event of a refused stream, giving its DATA's room back
        to the connection's flow-control window.
        """
        if isinstance(event, DataReceived) and event.flow_controlled_length:
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)

    def _refuse_head(self, stream_id: int, error: FramingError, open_: bool) -> None:
        """
        Answer a refused head on its stream; reset the stream if the
        client is still sending (RFC 9113 sections 8.1 and 8.1.1).
        """
        self._log_refusal(error)
        reason = REASONS[error.status]
        body = b"%d %s: %s\n" % (error.status, reason, error.detail.encode("ascii", "replace"))
        conn = self.conn
        # A body only if it fits the client's window at once: nothing of a
        # refused stream is queued.
        fits = len(body) <= min(
            conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size
        )
        headers = [
            (b":status", b"%d" % error.status),
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"%d" % (len(body) if fits else 0)),
            (b"date", datetimeToString()),
        ]
        try:
            conn.send_headers(stream_id, headers, end_stream=not fits)
            if fits:
                conn.send_data(stream_id, body, end_stream=True)
            if open_:
                malformed = error.status == 400
                conn.reset_stream(
                    stream_id, ErrorCodes.PROTOCOL_ERROR if malformed else ErrorCodes.NO_ERROR
                )
        except ProtocolError:
            pass  # the client reset the stream in the same read: nothing to answer

    def _refuse_stream(
        self, stream_id: int, error: FramingError, passed: list[Event]
    ) -> list[Event]:
        """
        Reset a stream whose body broke the rules (PROTOCOL_ERROR, RFC 9113
        section 8.1.1).  Its events of this read are withdrawn; if Twisted
        already knew it, Twisted is told of the reset, so that its request
        and upstream exchange are abandoned.

        @return: C{passed} without the stream's events.
        """
        self._log_refusal(error)
        try:
            self.conn.reset_stream(stream_id, ErrorCodes.PROTOCOL_ERROR)
        except ProtocolError:
            pass  # already closed by the client in the same read
        known = stream_id in self.streams
        kept = []
        for event in passed:
            if getattr(event, "stream_id", 0) == stream_id:
                self._drop(event)
            else:
                kept.append(event)
        if known:
            try:
                reset = StreamReset(stream_id=stream_id)
            except TypeError:
                # h2 before 4.3 (setup.cfg's floor is 4.1) takes no arguments;
                # 4.3 made the events dataclasses with a required stream_id.
                reset = StreamReset()  # type: ignore[call-arg]
                reset.stream_id = stream_id
            reset.error_code = ErrorCodes.PROTOCOL_ERROR
            reset.remote_reset = False
            kept.append(reset)
        else:
            del self._bodies[stream_id]
        return kept

    def _log_refusal(self, error: FramingError) -> None:
        # Through the site's rate-limited log, as HTTP/1.1 refusals: a scan
        # must not flood the log.
        peer = getattr(self.transport.getPeer(), "host", "-")
        self.site.refusals.refused(f"HTTP/2 {error}", str(peer), error.status)

    def _requestDone(self, streamID: int) -> None:
        """
        Twisted is done with a stream (a private method of Twisted's): forget
        it, and if the client has not finished sending, ask it to stop
        (RST_STREAM NO_ERROR after a complete answer, RFC 9113 section 8.1).
        """
        super()._requestDone(streamID)
        self._bodies.pop(streamID, None)
        if not self._stillProducing:
            return  # the connection is gone
        stream = self.conn.streams.get(streamID)
        if stream is not None and not stream.closed:
            self.conn.reset_stream(streamID, ErrorCodes.NO_ERROR)
            self._tryToWriteControlData()
