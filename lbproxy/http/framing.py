# -*- test-case-name: tests.http.test_framing -*-
"""
The framing gate: lbproxy decides where each client request ends.

A reverse proxy is a security boundary.  When it and the app server behind
it disagree about where one request ends, the bytes in between become a
second request that the proxy never saw (request smuggling).  So lbproxy
does not take C{twisted.web}'s word for the framing of a request: every
request line and header line goes through the pure functions here first,
and only a head that passes, normalised, is handed to Twisted and proxied.
What is rejected gets a short answer with C{Connection: close}, the
connection is closed, and no byte of it reaches an app server.

The rules (RFC 9110 and RFC 9112, strict where they allow a choice):

  - Lines end with CRLF.  A bare LF or CR anywhere in the head is a 400;
    lbproxy does not normalise them (RFC 9112 section 2.2 allows either).
  - Request line: exactly C{method SP target SP version}.  The method is a
    token; the target is visible ASCII with no C{#} (origin-form, C{*} for
    C{OPTIONS} only, or absolute-form C{http(s)://authority/...} without
    userinfo); the version is C{HTTP/1.1} or C{HTTP/1.0}.  C{HTTP/2.0} and
    later give 505, any other version 400.  C{CONNECT} gives 501: lbproxy
    is not a forward proxy and does not tunnel.  One empty line before the
    request line is ignored (RFC 9112 section 2.2).
  - An absolute-form target is forwarded as origin-form and its authority
    replaces the C{Host} value (RFC 9112 section 3.2.2).
  - Header lines: C{name ":" OWS value OWS}; the name is a non-empty token
    (so a space before the colon, or whitespace before the first header, is
    a 400, RFC 9112 sections 2.2 and 5.1); the value holds no NUL, CR, LF
    or other control character but HTAB (RFC 9110 section 5.5).  Obsolete
    line folding is a 400, not unfolded (RFC 9112 section 5.2 allows
    either; nginx rejects it too).
  - Header names with an underscore are dropped, not forwarded, as nginx
    does by default (C{underscores_in_headers off}): CGI and WSGI map
    C{Transfer_Encoding} and C{Transfer-Encoding} to the same variable.
  - C{Host}: required on HTTP/1.1, exactly once, and a valid
    C{host[:port]} (RFC 9112 section 3.2); an empty one is a 400, as in
    nginx.
  - C{Content-Length}: exactly one header whose value is ASCII digits
    only, below 2**63.  C{5, 5} and two equal headers are a 400 (RFC 9110
    section 8.6 allows taking the one value; nginx rejects, and so does
    lbproxy).  C{+5}, C{0x10}, C{1_0}, C{-1}, an empty value: 400.
  - C{Transfer-Encoding}: at most one header, not on HTTP/1.0, never with
    C{Content-Length} (400).  Its value is a list of tokens whose last is
    C{chunked}, which appears once (else 400, RFC 9112 section 6.3 rule 4);
    codings before C{chunked} (C{gzip, chunked}) are 501 (RFC 9112 section
    6.1), since lbproxy forwards no transfer coding but chunked.
  - Chunked bodies (L{lbproxy.http.chunked.ChunkedDecoder}): a chunk size is 1*HEXDIG below
    2**63 with no sign, C{0x} or whitespace; extensions are
    C{;token[=token|quoted-string]} with no whitespace (RFC 9112 section
    7.1.1 allows BWS; no client sends it) and never a CR or LF; the data
    ends with CRLF; trailer fields are checked like headers and dropped.
  - Limits (nginx's where it has them): request line over 8 kB, 414; a
    header line over 8 kB, all headers over 64 kB or more than 100 header
    lines, 431; a body over the configured maximum, 413.

The upstream side is parsed by llhttp (L{lbproxy.upstream.connection}),
which already rejects conflicting lengths and invalid chunks; its
C{response_framing_error} adds the one check llhttp lacks, a
C{Transfer-Encoding} other than C{chunked}.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "DEFAULT_LIMITS",
    "REASONS",
    "FramingError",
    "HeadReader",
    "MAX_LENGTH",
    "Limits",
    "RequestHead",
    "RequestLine",
    "TOKEN",
    "check_head",
    "connection_tokens",
    "error_response",
    "parse_header_line",
    "parse_request_line",
]

Header = tuple[bytes, bytes]

#: The reason phrase of every status the gate answers with.
REASONS: dict[int, bytes] = {
    400: b"Bad Request",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}

#: A token (RFC 9110 section 5.6.2), as a regular expression.
TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_TOKEN_RE = re.compile(TOKEN)
_VERSION_RE = re.compile(rb"HTTP/([0-9])\.[0-9]")
# Visible ASCII but "#": a fragment is never sent (RFC 9112 section 3.2)
# and servers disagree on what follows it.
_TARGET_RE = re.compile(rb"[\x21\x22\x24-\x7e]+")
_ABSOLUTE_RE = re.compile(rb"[Hh][Tt][Tt][Pp][Ss]?://([^/?]*)(.*)")
# RFC 3986 host (IP literal or reg-name) with an optional port.
_HOST_RE = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]+)(?::[0-9]*)?")
# A field line, RFC 9112 section 5: the value may hold HTAB, SP, VCHAR and
# obs-text; its surrounding OWS is stripped afterwards (a regular expression
# that excluded it would backtrack quadratically on long runs of spaces).
_FIELD_RE = re.compile(rb"(" + TOKEN + rb"):([\t\x20-\x7e\x80-\xff]*)")
_FIELD_MATCH = _FIELD_RE.fullmatch

#: The largest length lbproxy accepts, as most parsers use signed 64 bits.
MAX_LENGTH = 2**63 - 1


class FramingError(Exception):
    """
    A request lbproxy refuses to proxy, and the answer it gets.

    @ivar status: the status to answer with (a key of L{REASONS}).
    @ivar detail: one line saying why, for the client and the log; it never
        repeats the client's bytes.
    """

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(status, detail)
        self.status = status
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.status} {REASONS[self.status].decode()}: {self.detail}"


@dataclass(frozen=True, slots=True)
class Limits:
    """
    Size limits on client requests; the defaults are nginx's.

    @ivar max_request_line: longest request line, in bytes (414 beyond;
        nginx's C{large_client_header_buffers 4 8k}).
    @ivar max_header_line: longest header line, in bytes (431 beyond).
    @ivar max_headers_size: most bytes of all header lines (431 beyond).
    @ivar max_headers: most header lines (431 beyond).
    @ivar max_body_size: largest body in bytes (413 beyond), L{None} for no
        limit (HAProxy's default; nginx's C{client_max_body_size} is 1 MB).
    """

    max_request_line: int = 8192
    max_header_line: int = 8192
    max_headers_size: int = 65536
    max_headers: int = 100
    max_body_size: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_request_line", "max_header_line", "max_headers_size", "max_headers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} {getattr(self, name)} must be at least 1")
        if self.max_body_size is not None and self.max_body_size < 0:
            raise ValueError(f"max_body_size {self.max_body_size} must be 0 or more")


#: nginx's limits, and no limit on bodies.
DEFAULT_LIMITS = Limits()


@dataclass(slots=True)
class RequestLine:
    """
    A parsed request line.

    @ivar method: the method token, as sent.
    @ivar target: the target to forward: as sent, or the path and query of
        an absolute-form target.
    @ivar version: C{b"HTTP/1.1"} or C{b"HTTP/1.0"}.
    @ivar authority: the authority of an absolute-form target, which
        becomes the C{Host}; L{None} for other forms.
    """

    method: bytes
    target: bytes
    version: bytes
    authority: bytes | None = None


@dataclass(slots=True)
class RequestHead:
    """
    A request head that passed the gate, normalised for forwarding.

    @ivar method: the method token.
    @ivar target: the target, in origin-form unless it is C{*}.
    @ivar version: C{b"HTTP/1.1"} or C{b"HTTP/1.0"}.
    @ivar headers: the header fields in order, values stripped of OWS,
        names with underscores dropped, framing headers normalised
        (C{Content-Length} as plain digits, C{Transfer-Encoding: chunked}).
    @ivar body_length: the body's length; 0 for no body, L{None} for a
        chunked body.
    """

    method: bytes
    target: bytes
    version: bytes
    headers: list[Header]
    body_length: int | None

    @property
    def request_line(self) -> bytes:
        """
        The request line to hand on, without its CRLF.
        """
        return b" ".join((self.method, self.target, self.version))


def parse_request_line(line: bytes) -> RequestLine:
    """
    Parse and check a request line (RFC 9112 section 3).

    @param line: the line, without its CRLF.
    @return: the parts, the target normalised to origin-form.
    @raise FramingError: 400, 501 (C{CONNECT}) or 505 (HTTP/2 and later).
    """
    parts = line.split(b" ")
    if len(parts) != 3:
        raise FramingError(400, "malformed request line")
    method, target, version = parts
    if version != b"HTTP/1.1" and version != b"HTTP/1.0":
        match = _VERSION_RE.fullmatch(version)
        if match is not None and match.group(1) >= b"2":
            raise FramingError(505, "only HTTP/1.0 and HTTP/1.1 are spoken here")
        raise FramingError(400, "unsupported HTTP version")
    if _TOKEN_RE.fullmatch(method) is None:
        raise FramingError(400, "invalid method")
    if method == b"CONNECT":
        raise FramingError(501, "CONNECT is not supported by this reverse proxy")
    if _TARGET_RE.fullmatch(target) is None:
        raise FramingError(400, "invalid character in the request target")
    if target[0] == 0x2F:  # "/": origin-form, by far the most common
        return RequestLine(method, target, version)
    if target == b"*":
        if method != b"OPTIONS":
            raise FramingError(400, "asterisk-form target with a method other than OPTIONS")
        return RequestLine(method, target, version)
    path, authority = _absolute_form(target)
    return RequestLine(method, path, version, authority)


def _absolute_form(target: bytes) -> tuple[bytes, bytes]:
    """
    Split an absolute-form target into the origin-form to forward and the
    authority that becomes the C{Host}.
    """
    match = _ABSOLUTE_RE.fullmatch(target)
    if match is None:
        raise FramingError(400, "request target is neither a path nor an http(s) URL")
    authority, rest = match.groups()
    if b"@" in authority:
        # RFC 9110 section 4.2.4: userinfo is deprecated and a recipient
        # should treat it as an error (it hides the real host from humans).
        raise FramingError(400, "userinfo in the request target")
    if _HOST_RE.fullmatch(authority) is None:
        raise FramingError(400, "invalid authority in the request target")
    if not rest:
        rest = b"/"
    elif rest[0] == 0x3F:  # "?": a query with an empty path
        rest = b"/" + rest
    return rest, authority


def parse_header_line(line: bytes) -> Header:
    """
    Parse and check one header (or trailer) field line (RFC 9112 section 5).

    @param line: the line, without its CRLF.
    @return: the name as sent and the value without surrounding OWS.
    @raise FramingError: 400 if it is not a valid field line.
    """
    match = _FIELD_RE.fullmatch(line)
    if match is None:
        raise FramingError(400, _field_problem(line))
    return match.group(1), match.group(2).strip(b" \t")


def _field_problem(line: bytes) -> str:
    """
    Why C{line} is not a field line, in words.
    """
    if line[:1] in (b" ", b"\t"):
        return "obsolete line folding or whitespace before a header"
    name, colon, _ = line.partition(b":")
    if not colon:
        return "header line without a colon"
    if _TOKEN_RE.fullmatch(name) is None:
        return "invalid header name"
    return "invalid character in a header value"


def _decide(
    request_line: RequestLine,
    headers: list[Header],
    hosts: int,
    host_at: int,
    lengths: list[bytes],
    codings: list[bytes],
    limits: Limits,
) -> RequestHead:
    """
    Decide the framing of a complete head, from what L{HeadReader} found
    in its header lines: the headers to forward (without underscores or
    framing headers), how many C{Host} headers and where the first is, and
    the C{Content-Length} and C{Transfer-Encoding} values.

    @raise FramingError: 400, 413 or 501, as the module docstring says.
    """
    version = request_line.version
    if hosts > 1:
        raise FramingError(400, "more than one Host header")
    authority = request_line.authority
    if authority is not None:
        # RFC 9112 section 3.2.2: the target's authority wins over Host.
        if host_at >= 0:
            headers[host_at] = (headers[host_at][0], authority)
        else:
            headers.insert(0, (b"Host", authority))
    elif hosts == 0 and version == b"HTTP/1.1":
        raise FramingError(400, "HTTP/1.1 request without a Host header")
    body_length: int | None
    if codings:
        if lengths:
            # RFC 9112 section 6.3 rule 3 lets Transfer-Encoding win, but
            # the pair is the classic smuggling probe (CVE-2020-10109).
            raise FramingError(400, "both Content-Length and Transfer-Encoding")
        if version == b"HTTP/1.0":
            raise FramingError(400, "Transfer-Encoding in an HTTP/1.0 request")
        if len(codings) > 1:
            raise FramingError(400, "more than one Transfer-Encoding header")
        _check_codings(codings[0])
        headers.append((b"Transfer-Encoding", b"chunked"))
        body_length = None
    elif lengths:
        if len(lengths) > 1:
            raise FramingError(400, "more than one Content-Length header")
        body_length = _content_length(lengths[0])
        if limits.max_body_size is not None and body_length > limits.max_body_size:
            raise FramingError(413, f"body larger than {limits.max_body_size} bytes")
        headers.append((b"Content-Length", b"%d" % body_length))
    else:
        # RFC 9112 section 6.3 rule 7: a request without either has no body.
        body_length = 0
    return RequestHead(request_line.method, request_line.target, version, headers, body_length)


def _check_codings(value: bytes) -> None:
    """
    Accept a C{Transfer-Encoding} value only if it is exactly C{chunked}
    (in any case, RFC 9110 section 10.1.4 makes coding names
    case-insensitive).
    """
    codings = [coding.strip(b" \t") for coding in value.split(b",")]
    if any(_TOKEN_RE.fullmatch(coding) is None for coding in codings):
        raise FramingError(400, "invalid Transfer-Encoding")
    lowered = [coding.lower() for coding in codings]
    if lowered[-1] != b"chunked" or lowered.count(b"chunked") != 1:
        raise FramingError(400, "chunked is not the final transfer coding")
    if len(lowered) > 1:
        raise FramingError(501, "transfer codings other than chunked are not supported")


def _content_length(value: bytes) -> int:
    """
    The value of a C{Content-Length}: 1*DIGIT (RFC 9110 section 8.6).

    C{bytes.isdigit} accepts ASCII digits only, unlike C{int()} which also
    takes C{+5}, C{1_0}, surrounding whitespace and non-ASCII digits.
    """
    if not value.isdigit() or len(value.lstrip(b"0")) > 19:
        raise FramingError(400, "invalid Content-Length")
    length = int(value)
    if length > MAX_LENGTH:
        raise FramingError(400, "invalid Content-Length")
    return length


#: The empty list of framing header values every reader starts with; never
#: appended to (a reader replaces it with a list of its own).
_NONE: list[bytes] = []


class HeadReader:
    """
    Collects one request head line by line and passes it through the gate.

    Limits and syntax are checked as each line arrives, so a huge or broken
    head is refused at once, without being held.  The framing headers are
    picked out in the same pass; the empty line that ends the head brings
    the decision.  After each complete head the reader is ready for the
    next request.
    """

    __slots__ = (
        "_limits",
        "_max_header_line",
        "_max_headers_size",
        "_max_headers",
        "_request_line",
        "_headers",
        "_count",
        "_size",
        "_hosts",
        "_host_at",
        "_lengths",
        "_codings",
        "_blank_skipped",
    )

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        """
        @param limits: the size limits to enforce.
        """
        self._limits = limits
        # Copied out of limits: line() runs for every header of every request.
        self._max_header_line = limits.max_header_line
        self._max_headers_size = limits.max_headers_size
        self._max_headers = limits.max_headers
        self._reset()

    def _reset(self) -> None:
        self._request_line: RequestLine | None = None
        self._headers: list[Header] = []
        self._count = 0
        self._size = 0
        self._hosts = 0
        self._host_at = -1
        # Framing headers are rare after the first request line: no list
        # is made until one comes (an idle connection holds none).
        self._lengths: list[bytes] = _NONE
        self._codings: list[bytes] = _NONE
        self._blank_skipped = False

    def line(self, line: bytes) -> RequestHead | None:
        """
        Take the next line of the head.

        @param line: the line, without its CRLF.
        @return: the normalised head after its final empty line, else
            L{None}.
        @raise FramingError: if the head is refused.
        """
        request_line = self._request_line
        if request_line is not None:
            if line:
                # A header line: the common case, kept short.
                length = len(line)
                if length > self._max_header_line:
                    raise self.line_too_long()
                self._size += length + 2
                self._count += 1
                if self._size > self._max_headers_size:
                    raise FramingError(431, f"headers larger than {self._max_headers_size} bytes")
                if self._count > self._max_headers:
                    raise FramingError(431, f"more than {self._max_headers} headers")
                match = _FIELD_MATCH(line)
                if match is None:
                    raise FramingError(400, _field_problem(line))
                name, value = match.groups()
                if b"_" in name:
                    return None  # dropped, as nginx does
                value = value.strip(b" \t")
                # Only names of these lengths can be framing headers.
                size = len(name)
                if size == 4 or size == 14 or size == 17:
                    lower = name.lower()
                    if lower == b"host":
                        if _HOST_RE.fullmatch(value) is None:
                            raise FramingError(400, "invalid Host header")
                        self._hosts += 1
                        self._host_at = len(self._headers)
                    elif lower == b"content-length":
                        if self._lengths:
                            self._lengths.append(value)
                        else:
                            self._lengths = [value]
                        return None
                    elif lower == b"transfer-encoding":
                        if self._codings:
                            self._codings.append(value)
                        else:
                            self._codings = [value]
                        return None
                self._headers.append((name, value))
                return None
            head = _decide(
                request_line,
                self._headers,
                self._hosts,
                self._host_at,
                self._lengths,
                self._codings,
                self._limits,
            )
            self._reset()
            return head
        if not line and not self._blank_skipped:
            # RFC 9112 section 2.2: ignore at least one empty line before a
            # request line (some clients send CRLF after a POST body).
            self._blank_skipped = True
            return None
        if len(line) > self._limits.max_request_line:
            raise self.line_too_long()
        self._request_line = parse_request_line(line)
        return None

    @property
    def in_head(self) -> bool:
        """
        Whether a head has begun (its request line has arrived).
        """
        return self._request_line is not None

    def line_too_long(self) -> FramingError:
        """
        The error for a line over its limit at this point of the head.
        """
        if self._request_line is None:
            return FramingError(414, f"request line longer than {self._limits.max_request_line}")
        return FramingError(431, f"header line longer than {self._limits.max_header_line}")


def check_head(
    request_line: bytes, header_lines: Iterable[bytes], limits: Limits = DEFAULT_LIMITS
) -> RequestHead:
    """
    The whole gate in one call: a raw request line and raw header lines in,
    the normalised head out.

    @param request_line: the request line, without its CRLF.
    @param header_lines: the header lines, without CRLFs or the final
        empty line.
    @param limits: the size limits.
    @return: the head to forward.
    @raise FramingError: if the request must be refused.
    """
    if not request_line:
        raise FramingError(400, "malformed request line")
    reader = HeadReader(limits)
    reader.line(request_line)
    for line in header_lines:
        if not line:
            raise FramingError(400, "empty header line")
        reader.line(line)
    head = reader.line(b"")
    assert head is not None
    return head


def error_response(error: FramingError, date: bytes | None = None) -> bytes:
    """
    The whole answer to a refused request: status, a short text body,
    C{Connection: close}.

    @param error: why the request is refused.
    @param date: the C{Date} header value, if one is wanted.
    @return: the bytes to write before closing the connection.
    """
    reason = REASONS[error.status]
    body = b"%d %s: %s\n" % (error.status, reason, error.detail.encode("ascii", "replace"))
    head = [
        b"HTTP/1.1 %d %s" % (error.status, reason),
        b"Content-Type: text/plain; charset=utf-8",
        b"Content-Length: %d" % len(body),
        b"Connection: close",
    ]
    if date is not None:
        head.append(b"Date: " + date)
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def connection_tokens(values: Iterable[bytes]) -> frozenset[bytes]:
    """
    The lower-cased option names listed in C{Connection} header values.

    @param values: every value of the C{Connection} header.
    @return: e.g. C{{b"close", b"x-secret"}}.
    """
    return frozenset(
        token.strip().lower() for value in values for token in value.split(b",") if token.strip()
    )
