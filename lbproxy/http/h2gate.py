# -*- test-case-name: tests.http.test_h2gate -*-
"""
The framing gate for HTTP/2 requests: the rules of L{lbproxy.http.framing},
applied to a request that arrives as HTTP/2 fields and frames.

An HTTP/2 request is forwarded to the app server as HTTP/1.1: C{:method}
and C{:path} become its request line, C{:authority} its C{Host}, and every
other field a header line.  So whatever HTTP/2 lets through unchecked
becomes HTTP/1.1 that lbproxy never checked: a space in C{:path} injects a
request line, a CR LF in a value injects a header or a whole request.
lbproxy does not rely on the C{h2} library for this (its checks differ
between versions and fail the whole connection); the functions here check
every request, whatever C{h2} validated:

  - Pseudo-header fields (RFC 9113 section 8.3): only C{:method},
    C{:scheme}, C{:path} and C{:authority}, each at most once, all before
    the regular fields; C{:method}, C{:scheme} and C{:path} present.
    Anything else is malformed: 400.
  - C{:method} is a token; C{CONNECT} is 501, as on HTTP/1.1 (lbproxy
    does not tunnel).  C{:scheme} is C{http} or C{https}.  C{:path} is
    origin-form, visible ASCII without C{#} and starting with C{/}, or
    C{*} for C{OPTIONS} (RFC 9113 section 8.3.1): 400 otherwise, and 414
    when C{method SP path SP HTTP/1.1} is over C{max_request_line}.
  - C{:authority} (or, without it, one C{host} field) is a valid
    C{host[:port]} without userinfo; it becomes the one C{Host}.  A
    C{host} field beside it must name the same host (merged), else 400;
    empty, missing or repeated: 400.
  - Field names are lowercase tokens (RFC 9113 section 8.2.1: an
    uppercase name is malformed); values hold no NUL, CR, LF or other
    control character but HTAB, and neither start nor end with
    whitespace.  Otherwise 400.
  - Connection-specific fields (RFC 9113 section 8.2.2: C{connection},
    C{keep-alive}, C{proxy-connection}, C{transfer-encoding}, C{upgrade},
    and C{te} other than C{trailers}) are malformed: 400.
  - Names with an underscore are dropped, as on HTTP/1.1.  C{cookie}
    fields are joined with C{"; "} into one (RFC 9113 section 8.2.3).
  - The limits of HTTP/1.1 apply to the fields as header lines
    (C{name: value}): C{max_header_line}, C{max_headers_size} and
    C{max_headers}, 431 beyond.
  - C{content-length}: at most one field, ASCII digits only (as on
    HTTP/1.1: two fields, even equal, are a 400); 413 over
    C{max_body_size}.  With END_STREAM on the HEADERS frame it must be 0
    (RFC 9113 section 8.1.1).  The DATA that follows must add up to it
    exactly (L{BodyLength}); a mismatch is a stream error.
  - Trailers (L{check_trailers}) carry no pseudo-header field and none of
    the fields that frame or route a request; they are checked like
    header fields and never forwarded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from lbproxy.http.framing import (
    _HOST_RE,
    _TARGET_RE,
    _TOKEN_RE,
    DEFAULT_LIMITS,
    FramingError,
    Limits,
    _content_length,
)

__all__ = [
    "BodyLength",
    "CONNECTION_SPECIFIC",
    "H2Head",
    "check_request_headers",
    "check_trailers",
    "hpack_budget",
]

Header = tuple[bytes, bytes]

#: A field name as HTTP/2 sends it: a token in lowercase (RFC 9113
#: section 8.2.1).
_NAME_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")
#: A field value's characters: HTAB, SP, VCHAR and obs-text (RFC 9110
#: section 5.5), so no NUL, CR, LF or other control character.
_VALUE_RE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_WHITESPACE = (0x20, 0x09)

#: The request pseudo-header fields of RFC 9113 section 8.3.1.
_PSEUDO = frozenset({b":method", b":scheme", b":path", b":authority"})

#: Fields that describe one HTTP/1.1 connection and must not appear in
#: HTTP/2 (RFC 9113 section 8.2.2); C{te} is allowed with C{trailers} only.
CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)

#: Fields refused in trailers: those that frame, route or connect a request
#: (RFC 9110 section 6.5.1 lists what a trailer cannot carry).
_NOT_IN_TRAILERS = CONNECTION_SPECIFIC | {b"content-length", b"host", b"te", b"trailer"}


@dataclass(slots=True)
class H2Head:
    """
    An HTTP/2 request head that passed the gate, normalised for
    forwarding.

    @ivar method: the method token.
    @ivar target: the C{:path}: origin-form, or C{*}.
    @ivar authority: the one host (and port) of the request.
    @ivar headers: the regular fields to forward, in order: no C{host}
        (the authority is the host), no underscore names, one C{cookie},
        C{content-length} as plain digits if the client sent one.
    @ivar content_length: the C{content-length}, or L{None} if none was
        sent (the body, if DATA follows, has no announced length).
    """

    method: bytes
    target: bytes
    authority: bytes
    headers: list[Header]
    content_length: int | None

    def fields(self) -> list[Header]:
        """
        The head as HTTP/2 fields again, for Twisted's C{H2Stream}:
        C{:method}, C{:path}, C{:authority} (which Twisted makes the
        C{Host}), then the regular fields.
        """
        return [
            (b":method", self.method),
            (b":path", self.target),
            (b":authority", self.authority),
            *self.headers,
        ]


def check_request_headers(
    fields: Iterable[Header], end_stream: bool, limits: Limits = DEFAULT_LIMITS
) -> H2Head:
    """
    Check the fields of an HTTP/2 request's HEADERS (RFC 9113 section 8).

    @param fields: the decoded fields, in order, as bytes.
    @param end_stream: whether the HEADERS frame ended the stream (the
        request has no body).
    @param limits: the size limits.
    @return: the normalised head.
    @raise FramingError: 400, 413, 414, 431 or 501, as the module
        docstring says.
    """
    pseudo: dict[bytes, bytes] = {}
    headers: list[Header] = []
    hosts: list[bytes] = []
    lengths: list[bytes] = []
    cookies: list[bytes] = []
    regular = False
    count = 0
    size = 0
    max_line = limits.max_header_line
    for name, value in fields:
        if name[:1] == b":":
            if regular:
                raise FramingError(400, "pseudo-header field after a regular field")
            if name not in _PSEUDO:
                raise FramingError(400, "unknown pseudo-header field")
            if name in pseudo:
                raise FramingError(400, "repeated pseudo-header field")
            pseudo[name] = value
            continue
        regular = True
        # The limits first, as on HTTP/1.1, each field as a header line.
        line = len(name) + 2 + len(value)
        if line > max_line:
            raise FramingError(431, f"header line longer than {max_line}")
        size += line + 2
        count += 1
        if size > limits.max_headers_size:
            raise FramingError(431, f"headers larger than {limits.max_headers_size} bytes")
        if count > limits.max_headers:
            raise FramingError(431, f"more than {limits.max_headers} headers")
        _check_field(name, value)
        if b"_" in name:
            continue  # dropped, as nginx does (underscores_in_headers off)
        if name == b"host":
            hosts.append(value)
        elif name == b"content-length":
            lengths.append(value)
        elif name == b"cookie":
            cookies.append(value)
        elif name == b"te":
            if value.lower() != b"trailers":
                raise FramingError(400, "te other than trailers (RFC 9113 section 8.2.2)")
            # Hop-by-hop: not forwarded.
        elif name in CONNECTION_SPECIFIC:
            raise FramingError(400, "connection-specific header field in HTTP/2")
        else:
            headers.append((name, value))
    method = _method(pseudo)
    target = _target(method, pseudo, limits)
    authority = _authority(pseudo.get(b":authority"), hosts)
    content_length = None
    if lengths:
        if len(lengths) > 1:
            raise FramingError(400, "more than one content-length")
        content_length = _content_length(lengths[0])
        if limits.max_body_size is not None and content_length > limits.max_body_size:
            raise FramingError(413, f"body larger than {limits.max_body_size} bytes")
        if end_stream and content_length:
            # RFC 9113 section 8.1.1: the DATA must add up to it, and
            # there is none.
            raise FramingError(400, "content-length without a body")
        headers.append((b"content-length", b"%d" % content_length))
    if cookies:
        headers.append((b"cookie", b"; ".join(cookies)))
    return H2Head(method, target, authority, headers, content_length)


def _check_field(name: bytes, value: bytes) -> None:
    """
    Refuse a field whose name is not a lowercase token or whose value has
    a control character or surrounding whitespace (RFC 9113 section
    8.2.1).
    """
    if _NAME_RE.fullmatch(name) is None:
        if name and _NAME_RE.fullmatch(name.lower()) is not None:
            raise FramingError(400, "uppercase header name in HTTP/2")
        raise FramingError(400, "invalid header name")
    if _VALUE_RE.fullmatch(value) is None:
        raise FramingError(400, "invalid character in a header value")
    if value and (value[0] in _WHITESPACE or value[-1] in _WHITESPACE):
        raise FramingError(400, "whitespace around a header value")


def _method(pseudo: dict[bytes, bytes]) -> bytes:
    method = pseudo.get(b":method")
    if method is None:
        raise FramingError(400, "request without :method")
    if _TOKEN_RE.fullmatch(method) is None:
        raise FramingError(400, "invalid method")
    if method == b"CONNECT":
        raise FramingError(501, "CONNECT is not supported by this reverse proxy")
    scheme = pseudo.get(b":scheme")
    if scheme is None:
        raise FramingError(400, "request without :scheme")
    if scheme.lower() not in (b"http", b"https"):
        raise FramingError(400, "unsupported :scheme")
    return method


def _target(method: bytes, pseudo: dict[bytes, bytes], limits: Limits) -> bytes:
    target = pseudo.get(b":path")
    if target is None:
        raise FramingError(400, "request without :path")
    # The request line it becomes upstream: METHOD SP target SP HTTP/1.1.
    if len(method) + len(target) + 10 > limits.max_request_line:
        raise FramingError(414, f"request line longer than {limits.max_request_line}")
    if _TARGET_RE.fullmatch(target) is None:
        raise FramingError(400, "invalid character in :path")
    if target[0] == 0x2F:  # "/"
        return target
    if target == b"*":
        if method != b"OPTIONS":
            raise FramingError(400, "asterisk-form :path with a method other than OPTIONS")
        return target
    raise FramingError(400, ":path is not an origin-form target")


def _authority(authority: bytes | None, hosts: list[bytes]) -> bytes:
    if len(hosts) > 1:
        raise FramingError(400, "more than one host header field")
    for value in (authority, *hosts):
        if value is None:
            continue
        if b"@" in value:
            # RFC 9113 section 8.3.1: no userinfo in :authority.
            raise FramingError(400, "userinfo in the authority")
        if _HOST_RE.fullmatch(value) is None:
            raise FramingError(400, "invalid :authority or host")
    if authority is None:
        if not hosts:
            raise FramingError(400, "request without :authority or host")
        return hosts[0]
    if hosts and hosts[0].lower() != authority.lower():
        # RFC 9113 section 8.3.1: a host that differs from :authority.
        raise FramingError(400, "host differs from :authority")
    return authority


def check_trailers(fields: Iterable[Header], limits: Limits = DEFAULT_LIMITS) -> None:
    """
    Check an HTTP/2 request's trailers (which are then dropped, as the
    trailers of a chunked HTTP/1.1 body are).

    @param fields: the decoded trailer fields.
    @param limits: the size limits, as for header fields.
    @raise FramingError: if a field is invalid, a pseudo-header field
        (RFC 9113 section 8.1), or one that frames or routes a request.
    """
    count = 0
    size = 0
    for name, value in fields:
        if name[:1] == b":":
            raise FramingError(400, "pseudo-header field in trailers")
        line = len(name) + 2 + len(value)
        size += line + 2
        count += 1
        if (
            line > limits.max_header_line
            or size > limits.max_headers_size
            or count > limits.max_headers
        ):
            raise FramingError(431, "trailers over the header limits")
        _check_field(name, value)
        if name in _NOT_IN_TRAILERS:
            raise FramingError(400, "framing or connection field in trailers")


class BodyLength:
    """
    The DATA of one request stream counted against its C{content-length}
    (RFC 9113 section 8.1.1: a request whose DATA do not add up to it is
    malformed).

    @ivar expected: the C{content-length}, or L{None} if none was sent.
    @ivar received: the bytes of DATA so far.
    """

    __slots__ = ("expected", "received")

    def __init__(self, expected: int | None) -> None:
        self.expected = expected
        self.received = 0

    def data(self, size: int) -> None:
        """
        Count C{size} more bytes of DATA.

        @raise FramingError: 400 if they go past C{content-length}.
        """
        self.received += size
        if self.expected is not None and self.received > self.expected:
            raise FramingError(400, "more DATA than content-length")

    def end(self) -> None:
        """
        The stream ended: the DATA must match C{content-length}.

        @raise FramingError: 400 if there was less.
        """
        if self.expected is not None and self.received != self.expected:
            raise FramingError(400, "less DATA than content-length")


def hpack_budget(limits: Limits) -> int:
    """
    The largest decoded header list (as HPACK counts it: name, value and
    32 bytes a field) the HTTP/2 connection accepts at all: twice what
    the limits allow, so that a request somewhat over them is decoded and
    answered 431 by the gate, while one far over them (an HPACK bomb) ends
    the connection, as C{h2} does by default beyond 64 KiB.
    """
    allowed = limits.max_headers_size + limits.max_request_line + 32 * (limits.max_headers + 4)
    return 2 * allowed
