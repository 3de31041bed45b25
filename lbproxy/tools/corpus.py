# -*- test-case-name: tests.tools.test_corpus -*-
"""
The malformed-input corpus: hostile and borderline requests, each with the
answer lbproxy gives and what an app server behind it may see.

Every case names the CVE, peer bug or RFC rule it comes from.  The corpus
is data: C{tests/test_corpus.py} runs it against a real lbproxy in front of
a recording app server on loopback, and C{lbproxy selftest URL} sends it
to a deployed chain (see L{lbproxy.tools.selftest}).

Requests are templates: C{{host}} becomes the host (and port) of the URL
under test and C{{path}} its path (C{/} by default).  A request that must
never reach an app server as a request of its own has C{SMUGGLED} in its
path.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["APP", "CASES", "MARKER", "Case", "Reach"]

#: In L{Case.expect}: the app server's own answer (any status that is not
#: one of lbproxy's refusals; the test suite's app server answers 200).
APP = 0

#: In the path of every request that must not be smuggled through.
MARKER = b"SMUGGLED"


class Reach(enum.Enum):
    """
    What of a case may reach an app server.
    """

    #: Nothing: the input is refused before any byte is forwarded.
    NONE = "none"
    #: Exactly the requests the app answers (C{APP} in C{expect}), whole,
    #: and nothing after them.
    ANSWERED = "answered"
    #: The refused request's head and part of its body may have gone out
    #: (the error is inside a body that was already streaming), but no
    #: complete request and nothing that followed the error.
    PARTIAL = "partial"


@dataclass(frozen=True, slots=True)
class Case:
    """
    One corpus case.

    @ivar name: a short identifier.
    @ivar request: the raw bytes to send, with C{{host}} and C{{path}}.
    @ivar expect: the statuses of the answers, in order (L{APP} for the app
        server's own).
    @ivar reach: what may reach an app server.
    @ivar source: the CVE, peer bug or rule the case comes from.
    """

    name: str
    request: bytes
    expect: tuple[int, ...]
    reach: Reach
    source: str

    def render(self, host: bytes, path: bytes = b"/") -> bytes:
        """
        The bytes to send to C{host}, under C{path}.
        """
        return self.request.replace(b"{host}", host).replace(b"{path}", path)


_HOST = b"Host: {host}\r\n"
_CLOSE = b"Connection: close\r\n"
#: A request that would be smuggled if the one before it were misframed.
_SMUGGLED = b"GET {path}SMUGGLED HTTP/1.1\r\n" + _HOST + b"\r\n"


def _post(framing: bytes, body: bytes = b"", line: bytes = b"POST {path} HTTP/1.1") -> bytes:
    """
    A request with the framing headers C{framing} (CRLF-terminated lines),
    then C{body}.
    """
    return line + b"\r\n" + _HOST + framing + _CLOSE + b"\r\n" + body


def _get(headers: bytes = b"", line: bytes = b"GET {path} HTTP/1.1") -> bytes:
    """
    A bodiless request with extra C{headers} (CRLF-terminated lines).
    """
    return line + b"\r\n" + _HOST + headers + _CLOSE + b"\r\n"


_TE = b"Transfer-Encoding: chunked\r\n"


def _chunked(body: bytes) -> bytes:
    return _post(_TE, body)


_NONE, _ANSWERED, _PARTIAL = Reach.NONE, Reach.ANSWERED, Reach.PARTIAL

CASES: tuple[Case, ...] = (
    # --- Content-Length and Transfer-Encoding together -------------------
    Case(
        "cl-te",
        _post(b"Content-Length: 6\r\n" + _TE, b"0\r\n\r\nG"),
        (400,),
        _NONE,
        "CVE-2020-10109 (Twisted honoured CL over TE); CL.TE desync (Kettle 2019)",
    ),
    Case(
        "te-cl",
        _post(_TE + b"Content-Length: 4\r\n", b"5c\r\n" + _SMUGGLED + b"\r\n0\r\n\r\n"),
        (400,),
        _NONE,
        "CVE-2020-10109; TE.CL desync (Kettle 2019)",
    ),
    # --- Content-Length ---------------------------------------------------
    Case(
        "cl-two-different",
        _post(b"Content-Length: 41\r\nContent-Length: 0\r\n", _SMUGGLED),
        (400,),
        _NONE,
        "CVE-2020-10108 (Twisted used the last of two lengths)",
    ),
    Case(
        "cl-two-equal",
        _post(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"),
        (400,),
        _NONE,
        "RFC 9110 section 8.6 (lbproxy's choice, as nginx); cheroot#275",
    ),
    Case(
        "cl-list",
        _post(b"Content-Length: 5, 5\r\n", b"hello"),
        (400,),
        _NONE,
        "RFC 9110 section 8.6 (lbproxy's choice; HAProxy merges equal values)",
    ),
    Case(
        "cl-empty",
        _post(b"Content-Length: \r\n", _SMUGGLED),
        (400,),
        _NONE,
        "HAProxy CVE-2023-40225 (forwarded an empty Content-Length)",
    ),
    Case(
        "cl-plus",
        _post(b"Content-Length: +5\r\n", b"hello"),
        (400,),
        _NONE,
        "CVE-2022-24801 (Twisted accepted a + or - sign)",
    ),
    Case(
        "cl-minus",
        _post(b"Content-Length: -1\r\n", _SMUGGLED),
        (400,),
        _NONE,
        "CVE-2022-24801 (signed lengths)",
    ),
    Case(
        "cl-hex",
        _post(b"Content-Length: 0x10\r\n", b"0123456789abcdef"),
        (400,),
        _NONE,
        "CVE-2023-38697 (protocol-http1 accepted 0x lengths)",
    ),
    Case(
        "cl-underscore",
        _post(b"Content-Length: 1_0\r\n", b"0123456789"),
        (400,),
        _NONE,
        "gunicorn#2977, werkzeug#2716 (Python int() accepts 1_0)",
    ),
    Case(
        "cl-space-inside",
        _post(b"Content-Length: 1 0\r\n", b"0123456789"),
        (400,),
        _NONE,
        "Node.js CVE-2018-7159 (spaces inside Content-Length ignored)",
    ),
    Case(
        "cl-unicode-digit",
        _post(b"Content-Length: \xd9\xa1\r\n", b"x"),
        (400,),
        _NONE,
        "urllib3#5083, CPython gh-150751 (int() accepts non-ASCII digits)",
    ),
    Case(
        "cl-overflow",
        _post(b"Content-Length: 18446744073709551621\r\n", b"hello"),
        (400,),
        _NONE,
        "h11#181 (huge lengths); 2**64 + 5 wraps to 5 in 64-bit parsers",
    ),
    # --- Transfer-Encoding -----------------------------------------------
    Case(
        "te-junk-chunked",
        _post(b"Transfer-Encoding: JUNK, chunked\r\n", b"0\r\n\r\n"),
        (501,),
        _NONE,
        "Twisted 20.3.0 NEWS (TE values other than chunked accepted; ZeddYu Lu)",
    ),
    Case(
        "te-leading-comma",
        _post(b"Transfer-Encoding: ,chunked\r\n", b"0\r\n\r\n"),
        (400,),
        _NONE,
        "issue 6; RFC 9112 section 6.3 rule 4",
    ),
    Case(
        "te-twice",
        _post(_TE + _TE, b"0\r\n\r\n"),
        (400,),
        _NONE,
        "gunicorn CVE-2024-1135 (conflicting Transfer-Encoding headers)",
    ),
    Case(
        "te-identity",
        _post(b"Transfer-Encoding: identity\r\n", _SMUGGLED),
        (400,),
        _NONE,
        "HAProxy 'chunked missing from transfer-encoding' (Nathan Davison); Twisted "
        "accepted identity",
    ),
    Case(
        "te-chunked-not-last",
        _post(b"Transfer-Encoding: chunked, identity\r\n", b"0\r\n\r\n"),
        (400,),
        _NONE,
        "RFC 9112 section 6.3 rule 4",
    ),
    Case(
        "te-gzip-chunked",
        _post(b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n"),
        (501,),
        _NONE,
        "RFC 9112 section 6.1 (unknown transfer coding: 501)",
    ),
    Case(
        "te-vertical-tab",
        _post(b"Transfer-Encoding: \x0bchunked\r\n", b"0\r\n\r\n"),
        (400,),
        _NONE,
        "HAProxy CVE-2019-18277 (TE with \\x0b)",
    ),
    Case(
        "te-form-feed",
        _post(b"Transfer-Encoding: chunked\x0c\r\n", b"0\r\n\r\n"),
        (400,),
        _NONE,
        "CVE-2022-24801 (Twisted stripped all ASCII whitespace from values)",
    ),
    Case(
        "te-nbsp",
        _post(b"Transfer-Encoding: \xa0chunked\r\n", b"0\r\n\r\n"),
        (400,),
        _NONE,
        "non-ASCII whitespace (Python str.strip() removes U+00A0); issue 6",
    ),
    Case(
        "te-http10",
        _post(_TE, b"0\r\n\r\n", line=b"POST {path} HTTP/1.0"),
        (400,),
        _NONE,
        "RFC 9112 section 6.1 (TE in HTTP/1.0 is faulty framing)",
    ),
    Case(
        "te-space-before-colon",
        _post(b"Transfer-Encoding : chunked\r\n", b"0\r\n\r\n"),
        (400,),
        _NONE,
        "RFC 9112 section 5.1; 'HTTP Desync Attacks' (Kettle 2019)",
    ),
    Case(
        "te-obs-fold",
        _post(b"Transfer-Encoding:\r\n chunked\r\n", b"0\r\n\r\n"),
        (400,),
        _NONE,
        "Node.js CVE-2022-32215 (multi-line Transfer-Encoding)",
    ),
    Case(
        "te-underscore",
        _get(b"Transfer_Encoding: chunked\r\n"),
        (APP,),
        _ANSWERED,
        "nginx underscores_in_headers off; CGI/WSGI map _ and - to one variable",
    ),
    Case(
        "te-uppercase",
        _chunked(b"5\r\nhello\r\n0\r\n\r\n").replace(b"chunked", b"CHUNKED"),
        (APP,),
        _ANSWERED,
        "RFC 9110 section 10.1.4 (coding names are case-insensitive); control",
    ),
    # --- Chunked bodies (the error is found while the body streams) -----
    Case(
        "chunk-size-0x",
        _chunked(b"0x5\r\nhello\r\n0\r\n\r\n"),
        (400,),
        _PARTIAL,
        "CVE-2022-24801 (Twisted accepted 0x chunk sizes)",
    ),
    Case(
        "chunk-size-plus",
        _chunked(b"+5\r\nhello\r\n0\r\n\r\n"),
        (400,),
        _PARTIAL,
        "CVE-2023-38697 (protocol-http1); gunicorn#3060",
    ),
    Case(
        "chunk-size-space",
        _chunked(b"5 \r\nhello\r\n0\r\n\r\n"),
        (400,),
        _PARTIAL,
        "issue 6; RFC 9112 section 7.1 (lbproxy allows no BWS)",
    ),
    Case(
        "chunk-size-overflow",
        _chunked(b"10000000000000005\r\nhello\r\n0\r\n\r\n"),
        (400,),
        _PARTIAL,
        "2**64 + 5 wraps to 5; Twisted's decoder takes any size, llhttp refuses",
    ),
    Case(
        "chunk-ext-lf",
        _chunked(b"5;a\nb\r\nhello\r\n0\r\n\r\n"),
        (400,),
        _PARTIAL,
        "CVE-2022-24801; Kestrel CVE-2025-55315 (LF in a chunk extension)",
    ),
    Case(
        "chunk-ext-cr",
        _chunked(b"5;a\rb\r\nhello\r\n0\r\n\r\n"),
        (400,),
        _PARTIAL,
        "CVE-2022-24801 (illegal characters in chunk extensions)",
    ),
    Case(
        "chunk-bad-then-pipelined",
        _post(_TE, b"0x5\r\nhello\r\n0\r\n\r\n" + _SMUGGLED).replace(_CLOSE, b""),
        (400,),
        _PARTIAL,
        "issue 6 (a bad chunk followed by a pipelined request)",
    ),
    Case(
        "chunk-data-overrun",
        _chunked(b"5\r\nhelloXX\r\n0\r\n\r\n"),
        (400,),
        _PARTIAL,
        "RFC 9112 section 7.1 (chunk data must end with CRLF)",
    ),
    Case(
        "chunk-bare-lf",
        _chunked(b"5\nhello\n0\n\n"),
        (400,),
        _PARTIAL,
        "Node.js CVE-2022-32214 (bare LF as a delimiter)",
    ),
    Case(
        "chunk-bad-trailer",
        _chunked(b"5\r\nhello\r\n0\r\nnot a field\r\n\r\n"),
        (400,),
        _PARTIAL,
        "twisted#12014 (trailers taken unchecked)",
    ),
    Case(
        "chunked-valid",
        _chunked(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
        (APP,),
        _ANSWERED,
        "control: RFC 9112 section 7.1",
    ),
    Case(
        "chunked-extensions-trailers",
        _chunked(b'5;name=value;q="a \\" b"\r\nhello\r\n0;x=y\r\nX-Sum: 1\r\n\r\n'),
        (APP,),
        _ANSWERED,
        "control: RFC 9112 sections 7.1.1 and 7.1.2",
    ),
    # --- Header lines -------------------------------------------------------
    Case(
        "header-nul",
        _get(b"X-A: a\x00b\r\n"),
        (400,),
        _NONE,
        "RFC 9110 section 5.5",
    ),
    Case(
        "header-bare-cr",
        _post(b"X-A: \rxTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
        (400,),
        _NONE,
        "aiohttp CVE-2023-37276; Node.js CVE-2023-30589 (bare CR ends a line)",
    ),
    Case(
        "header-bare-lf",
        _post(b"Foo: x\nContent-Length: 41\r\n", _SMUGGLED),
        (400,),
        _NONE,
        "twisted#12754 (bare LF in a header value not rejected)",
    ),
    Case(
        "header-space-before-colon",
        _post(b"Content-Length : 41\r\n", _SMUGGLED),
        (400,),
        _NONE,
        "RFC 9112 section 5.1",
    ),
    Case(
        "whitespace-before-first-header",
        b"GET {path} HTTP/1.1\r\n Host: {host}\r\n" + _HOST + _CLOSE + b"\r\n",
        (400,),
        _NONE,
        "RFC 9112 section 2.2",
    ),
    Case(
        "header-empty-name",
        _get(b": x\r\n"),
        (400,),
        _NONE,
        "HAProxy CVE-2023-25725 (empty header names truncated the list)",
    ),
    Case(
        "header-name-not-token",
        _get(b"X[A]: 1\r\n"),
        (400,),
        _NONE,
        "RFC 9110 section 5.1",
    ),
    Case(
        "header-no-colon",
        _get(b"X-A 1\r\n"),
        (400,),
        _NONE,
        "RFC 9112 section 5",
    ),
    Case(
        "header-obs-fold",
        _get(b"X-A: 1\r\n 2\r\n"),
        (400,),
        _NONE,
        "RFC 9112 section 5.2 (lbproxy rejects, as nginx)",
    ),
    # --- Request line ------------------------------------------------------
    Case(
        "method-not-token",
        _get(line=b"G(ET {path} HTTP/1.1"),
        (400,),
        _NONE,
        "RFC 9112 section 3",
    ),
    Case(
        "method-control-char",
        _get(line=b"GE\x01T {path} HTTP/1.1"),
        (400,),
        _NONE,
        "RFC 9112 section 3",
    ),
    Case(
        "target-control-char",
        _get(line=b"GET {path}a\x01b HTTP/1.1"),
        (400,),
        _NONE,
        "RFC 9112 section 3.2",
    ),
    Case(
        "target-del",
        _get(line=b"GET {path}a\x7fb HTTP/1.1"),
        (400,),
        _NONE,
        "Twisted's target check lets 0x7F-0xB0 through (a '> 176' meant octal)",
    ),
    Case(
        "target-fragment",
        _get(line=b"GET {path}admin#/public HTTP/1.1"),
        (400,),
        _NONE,
        "RFC 9112 section 3.2 (never sent; servers disagree on it)",
    ),
    Case(
        "request-line-double-space",
        _get(line=b"GET  {path} HTTP/1.1"),
        (400,),
        _NONE,
        "RFC 9112 section 3",
    ),
    Case(
        "version-2",
        _get(line=b"GET {path} HTTP/2.0"),
        (505,),
        _NONE,
        "issue 6 (505 for HTTP/2 and later in HTTP/1 framing)",
    ),
    Case(
        "h2-preface",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        (505,),
        _NONE,
        "RFC 9113 section 3.4 (prior-knowledge h2 on an HTTP/1 port)",
    ),
    Case(
        "version-1-2",
        _get(line=b"GET {path} HTTP/1.2"),
        (400,),
        _NONE,
        "issue 6 (only HTTP/1.0 and HTTP/1.1)",
    ),
    Case(
        "version-lowercase",
        _get(line=b"GET {path} http/1.1"),
        (400,),
        _NONE,
        "RFC 9112 section 2.3 (HTTP-name is case-sensitive)",
    ),
    Case(
        "http-0.9",
        b"GET {path}\r\n\r\n",
        (400,),
        _NONE,
        "RFC 9112 section 3 (no HTTP/0.9)",
    ),
    Case(
        "connect",
        _get(line=b"CONNECT {host} HTTP/1.1"),
        (501,),
        _NONE,
        "RFC 9110 section 9.3.6 (a reverse proxy does not tunnel)",
    ),
    Case(
        "absolute-form",
        _get(line=b"GET http://{host}{path} HTTP/1.1").replace(_HOST, b"Host: elsewhere\r\n"),
        (APP,),
        _ANSWERED,
        "RFC 9112 section 3.2.2 (the target's authority replaces Host)",
    ),
    Case(
        "absolute-form-userinfo",
        _get(line=b"GET http://user@{host}{path} HTTP/1.1"),
        (400,),
        _NONE,
        "RFC 9110 section 4.2.4",
    ),
    Case(
        "host-missing",
        b"GET {path} HTTP/1.1\r\n" + _CLOSE + b"\r\n",
        (400,),
        _NONE,
        "RFC 9112 section 3.2",
    ),
    Case(
        "host-twice",
        _get(b"Host: elsewhere\r\n"),
        (400,),
        _NONE,
        "RFC 9112 section 3.2 (Host confusion)",
    ),
    Case(
        "host-invalid",
        _get(line=b"GET {path} HTTP/1.1").replace(_HOST, b"Host: a b\r\n"),
        (400,),
        _NONE,
        "RFC 9112 section 3.2",
    ),
    Case(
        "http10-without-host",
        b"GET {path} HTTP/1.0\r\n\r\n",
        (APP,),
        _ANSWERED,
        "control: RFC 9112 section 3.2 (Host is required from HTTP/1.1 on)",
    ),
    Case(
        "bare-lf-head",
        b"GET {path} HTTP/1.1\nHost: {host}\nConnection: close\n\n",
        (400,),
        _NONE,
        "Node.js CVE-2022-32214 (bare LF line endings)",
    ),
    Case(
        "bare-lf-mixed",
        b"GET {path} HTTP/1.1\r\nHost: {host}\nX-A: 1\r\n" + _CLOSE + b"\r\n",
        (400,),
        _NONE,
        "twisted#12754",
    ),
    Case(
        "leading-empty-line",
        b"\r\n" + _get(),
        (APP,),
        _ANSWERED,
        "control: RFC 9112 section 2.2 (one empty line before a request)",
    ),
    # --- Limits (nginx's defaults) -----------------------------------------
    Case(
        "request-line-over-8k",
        _get(line=b"GET {path}" + b"a" * 8300 + b" HTTP/1.1"),
        (414,),
        _NONE,
        "nginx large_client_header_buffers 4 8k",
    ),
    Case(
        "header-line-over-8k",
        _get(b"X-A: " + b"a" * 8300 + b"\r\n"),
        (431,),
        _NONE,
        "nginx large_client_header_buffers 4 8k; RFC 6585 section 5",
    ),
    Case(
        "headers-over-64k",
        _get(b"".join(b"X-%d: %s\r\n" % (i, b"a" * 8000) for i in range(9))),
        (431,),
        _NONE,
        "issue 6 (64 kB of headers)",
    ),
    Case(
        "headers-over-100",
        _get(b"".join(b"X-%d: 1\r\n" % i for i in range(101))),
        (431,),
        _NONE,
        "HAProxy tune.http.maxhdr 101",
    ),
    # --- Pipelining and the rest ---------------------------------------------
    Case(
        "pipelined",
        b"GET {path} HTTP/1.1\r\n" + _HOST + b"\r\n" + _get(),
        (APP, APP),
        _ANSWERED,
        "CVE-2023-46137, CVE-2024-41671 (Twisted answered pipelined requests out of order)",
    ),
    Case(
        "pipelined-then-refused",
        b"GET {path} HTTP/1.1\r\n" + _HOST + b"\r\n" + _post(b"Content-Length: 1\r\n" + _TE),
        (APP, 400),
        _ANSWERED,
        "twisted#4894 (an error answer must not overtake an earlier answer)",
    ),
    Case(
        "upgrade-h2c",
        _get(b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n").replace(
            _CLOSE, b"Connection: Upgrade, HTTP2-Settings, close\r\n"
        ),
        (APP,),
        _ANSWERED,
        "h2c smuggling (Bishop Fox 2020): Upgrade is hop-by-hop and dropped",
    ),
    Case(
        "cl-leading-zeros",
        _post(b"Content-Length: 005\r\n", b"hello"),
        (APP,),
        _ANSWERED,
        "control: RFC 9110 section 8.6 (1*DIGIT; forwarded as 5)",
    ),
)
