# -*- test-case-name: tests.http.test_framing -*-
"""
Request body decoders, the body half of the framing gate in
L{lbproxy.http.framing}: strict chunked decoding (RFC 9112 section 7.1)
and bodies of a known length (L{IdentityDecoder}).

Twisted's own decoder accepts chunk sizes of any magnitude; this one
refuses what L{lbproxy.http.framing} documents (signs, C{0x}, whitespace, sizes
of 2**63 or more, CR or LF in extensions, data not ended by CRLF, bare
LFs, invalid trailers) and enforces the body size limit chunk by chunk.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from lbproxy.http.framing import (
    DEFAULT_LIMITS,
    MAX_LENGTH,
    TOKEN,
    FramingError,
    Limits,
    parse_header_line,
)

__all__ = ["ChunkedDecoder", "IdentityDecoder"]

# A chunk size line, RFC 9112 section 7.1 (without BWS).
_QUOTED = rb'"(?:[\t\x20\x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t\x20-\x7e\x80-\xff])*"'
_CHUNK_LINE_RE = re.compile(
    rb"([0-9A-Fa-f]+)((?:;" + TOKEN + rb"(?:=(?:" + TOKEN + rb"|" + _QUOTED + rb"))?)*)"
)
#: Longest chunk size line (size and extensions); Twisted allows 1 kB.
_MAX_CHUNK_LINE = 4096

_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)


class ChunkedDecoder:
    """
    Decodes a chunked request body strictly (RFC 9112 section 7.1).

    It has the interface of C{twisted.web.http}'s chunked decoder (which
    accepts chunk sizes of any magnitude), so an C{HTTPChannel} can use it
    in that one's place.  Data is delivered as it arrives; a chunk that
    would take the body over the size limit is refused before any of it is
    delivered.  Trailer fields are checked and dropped (RFC 9110 section
    6.5.1 lets a proxy discard them; lbproxy sends its own last chunk).
    """

    __slots__ = (
        "_deliver",
        "_finish",
        "_max_body",
        "_max_trailers",
        "_buffer",
        "_state",
        "_remaining",
        "_received",
        "_trailer_size",
    )

    def __init__(
        self,
        data_callback: Callable[[bytes], None],
        finish_callback: Callable[[bytes], None],
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        """
        @param data_callback: called with each piece of body data.
        @param finish_callback: called once after the last chunk and the
            trailers, with the bytes that followed them (a pipelined
            request).
        @param limits: C{max_body_size} bounds the body,
            C{max_headers_size} the trailers.
        """
        self._deliver = data_callback
        self._finish = finish_callback
        self._max_body = limits.max_body_size
        self._max_trailers = limits.max_headers_size
        self._buffer = b""
        self._state = _SIZE
        self._remaining = 0
        self._received = 0
        self._trailer_size = 0

    def dataReceived(self, data: bytes) -> None:
        """
        Decode the next bytes of the body.

        @raise FramingError: 400 for invalid chunked framing, 413 for a body
            over the limit, 431 for trailers over the limit.
        """
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        position = 0
        end = len(data)
        while position < end:
            state = self._state
            if state == _DATA:
                take = min(self._remaining, end - position)
                piece = data if take == end else data[position : position + take]
                position += take
                self._remaining -= take
                if not self._remaining:
                    self._state = _DATA_END
                self._deliver(piece)
            elif state == _DATA_END:
                ending = data[position : position + 2]
                if ending != b"\r\n" and ending != b"\r":
                    raise FramingError(400, "chunk data not followed by CRLF")
                if len(ending) < 2:
                    break
                position += 2
                self._state = _SIZE
            elif state == _DONE:
                raise FramingError(400, "data after the end of a chunked body")
            else:
                line_end = data.find(b"\r\n", position)
                if line_end == -1:
                    if end - position > _MAX_CHUNK_LINE:
                        raise FramingError(400, "chunk size line too long")
                    if data.find(b"\n", position) != -1:
                        # Any LF here is bare (a CRLF would have been found):
                        # refuse now rather than wait for a CRLF.
                        raise FramingError(400, "bare LF in a chunked body")
                    break
                line = data[position:line_end]
                position = line_end + 2
                if state == _SIZE:
                    self._size_line(line)
                elif self._trailer_line(line):
                    self._state = _DONE
                    self._finish(data[position:])
                    return
        self._buffer = data[position:]

    def _size_line(self, line: bytes) -> None:
        if len(line) > _MAX_CHUNK_LINE:
            raise FramingError(400, "chunk size line too long")
        match = _CHUNK_LINE_RE.fullmatch(line)
        if match is None:
            raise FramingError(400, "invalid chunk size line")
        digits = match.group(1)
        if len(digits.lstrip(b"0")) > 16:
            raise FramingError(400, "chunk size too large")
        size = int(digits, 16)
        if size > MAX_LENGTH:
            raise FramingError(400, "chunk size too large")
        if size == 0:
            self._state = _TRAILER
            return
        self._received += size
        if self._max_body is not None and self._received > self._max_body:
            raise FramingError(413, f"body larger than {self._max_body} bytes")
        self._remaining = size
        self._state = _DATA

    def _trailer_line(self, line: bytes) -> bool:
        """
        Check one trailer line; C{True} at the empty line that ends them.
        """
        if not line:
            return True
        self._trailer_size += len(line) + 2
        if self._trailer_size > self._max_trailers:
            raise FramingError(431, f"trailers larger than {self._max_trailers} bytes")
        parse_header_line(line)
        return False


class IdentityDecoder:
    """
    A body of a known length: passes C{length} bytes on, then the rest to
    C{finish} (pipelined requests).
    """

    __slots__ = ("_remaining", "_deliver", "_finish")

    def __init__(
        self, length: int, deliver: Callable[[bytes], None], finish: Callable[[bytes], None]
    ) -> None:
        self._remaining = length
        self._deliver = deliver
        self._finish = finish

    def dataReceived(self, data: bytes) -> None:
        """
        The next bytes of the body, and maybe more.
        """
        remaining = self._remaining
        if len(data) < remaining:
            self._remaining = remaining - len(data)
            self._deliver(data)
            return
        self._remaining = 0
        if remaining:
            self._deliver(data[:remaining] if len(data) > remaining else data)
        self._finish(data[remaining:])
