"""
Tests for L{lbproxy.http.framing}: the framing gate, its chunked decoder, and
the one upstream check it adds to llhttp's (with an app server on loopback).
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import ConnectionLost
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase

from lbproxy.http.chunked import ChunkedDecoder
from lbproxy.http.framing import (
    FramingError,
    HeadReader,
    Limits,
    check_head,
    error_response,
    parse_header_line,
    parse_request_line,
)
from lbproxy.upstream.connection import response_framing_error
from tests.support import get, parse_responses, raw_request, start_proxy

_HOST = b"Host: app.example"


class _Refusals:
    """
    Assertions shared by the gate tests.
    """

    def assertRefused(
        self, status: int, request_line: bytes, *header_lines: bytes, limits: Limits | None = None
    ) -> FramingError:
        error = self.assertRaises(  # type: ignore[attr-defined]
            FramingError, check_head, request_line, header_lines, *([limits] if limits else [])
        )
        self.assertEqual(error.status, status, str(error))  # type: ignore[attr-defined]
        return error


class RequestLineTests(SynchronousTestCase, _Refusals):
    """
    The request line: C{method SP target SP version}, strictly.
    """

    def test_origin_form(self) -> None:
        """
        A plain request line passes unchanged.
        """
        line = parse_request_line(b"GET /a%20b?x=1 HTTP/1.1")
        self.assertEqual(
            (line.method, line.target, line.version), (b"GET", b"/a%20b?x=1", b"HTTP/1.1")
        )
        self.assertIsNone(line.authority)

    def test_http10(self) -> None:
        """
        HTTP/1.0 is accepted.
        """
        self.assertEqual(parse_request_line(b"GET / HTTP/1.0").version, b"HTTP/1.0")

    def test_method_not_token(self) -> None:
        """
        A method with a delimiter or a control character is a 400.
        """
        self.assertRefused(400, b"G(ET / HTTP/1.1", _HOST)
        self.assertRefused(400, b"GE\x01T / HTTP/1.1", _HOST)

    def test_target_control_characters(self) -> None:
        """
        Control characters, DEL and non-ASCII bytes in the target are a 400
        (Twisted lets 0x7F-0xB0 through).
        """
        for target in (b"/a\x01b", b"/a\x7fb", b"/caf\xc3\xa9", b"/a\x00"):
            self.assertRefused(400, b"GET " + target + b" HTTP/1.1", _HOST)

    def test_fragment(self) -> None:
        """
        A C{#} in the target is a 400: clients never send one.
        """
        self.assertRefused(400, b"GET /admin#/public HTTP/1.1", _HOST)

    def test_separators(self) -> None:
        """
        Only single spaces separate the parts: two spaces, a tab or a
        missing version are 400s.
        """
        for line in (b"GET  / HTTP/1.1", b"GET\t/\tHTTP/1.1", b"GET /", b"GET / HTTP/1.1 x"):
            self.assertRefused(400, line, _HOST)

    def test_http2_version(self) -> None:
        """
        HTTP/2.0 and later in HTTP/1 framing (the h2 preface too) are 505.
        """
        self.assertRefused(505, b"GET / HTTP/2.0", _HOST)
        self.assertRefused(505, b"PRI * HTTP/2.0")
        self.assertRefused(505, b"GET / HTTP/3.0", _HOST)

    def test_other_versions(self) -> None:
        """
        HTTP/1.2, HTTP/0.9, a lowercase name and odd shapes are 400s.
        """
        for version in (b"HTTP/1.2", b"HTTP/0.9", b"http/1.1", b"HTTP/1.10", b"HTTP/11"):
            self.assertRefused(400, b"GET / " + version, _HOST)

    def test_connect(self) -> None:
        """
        C{CONNECT} is a 501: lbproxy does not tunnel.
        """
        self.assertRefused(501, b"CONNECT app.example:443 HTTP/1.1", _HOST)

    def test_asterisk(self) -> None:
        """
        C{*} is a target for C{OPTIONS} only.
        """
        self.assertEqual(check_head(b"OPTIONS * HTTP/1.1", [_HOST]).target, b"*")
        self.assertRefused(400, b"GET * HTTP/1.1", _HOST)

    def test_absolute_form(self) -> None:
        """
        An absolute-form target is forwarded as its path, and its authority
        replaces the client's Host (RFC 9112 section 3.2.2).
        """
        head = check_head(b"GET http://app.example:8080/p?q HTTP/1.1", [b"Host: other"])
        self.assertEqual(head.target, b"/p?q")
        self.assertEqual(head.headers, [(b"Host", b"app.example:8080")])

    def test_absolute_form_empty_path(self) -> None:
        """
        An absolute-form target with no path gets C{/}, its query kept.
        """
        self.assertEqual(check_head(b"GET HTTPS://a?x=1 HTTP/1.1", [_HOST]).target, b"/?x=1")
        self.assertEqual(check_head(b"GET http://a HTTP/1.1", [_HOST]).target, b"/")

    def test_absolute_form_http10_without_host(self) -> None:
        """
        An HTTP/1.0 absolute-form request without Host gets one from the
        target.
        """
        head = check_head(b"GET http://a.example/ HTTP/1.0", [])
        self.assertEqual(head.headers, [(b"Host", b"a.example")])

    def test_absolute_form_userinfo(self) -> None:
        """
        Userinfo in the target is a 400 (RFC 9110 section 4.2.4).
        """
        self.assertRefused(400, b"GET http://user@app.example/ HTTP/1.1", _HOST)

    def test_absolute_form_bad_authority(self) -> None:
        """
        An empty or invalid authority, or another scheme, is a 400.
        """
        for target in (b"http:///x", b"http://a b/", b"ftp://a/", b"app.example:80", b"x"):
            self.assertRefused(400, b"GET " + target + b" HTTP/1.1", _HOST)


class HeaderLineTests(SynchronousTestCase, _Refusals):
    """
    Header lines: a token name, a colon, a value without control characters.
    """

    def test_value_stripped(self) -> None:
        """
        Spaces and tabs around a value are dropped, those inside kept.
        """
        self.assertEqual(parse_header_line(b"X-A: \t a \t b \t"), (b"X-A", b"a \t b"))
        self.assertEqual(parse_header_line(b"X-A:"), (b"X-A", b""))

    def test_obs_text(self) -> None:
        """
        Bytes 0x80-0xFF in a value (obs-text) are allowed.
        """
        self.assertEqual(parse_header_line(b"X-A: caf\xc3\xa9"), (b"X-A", b"caf\xc3\xa9"))

    def test_nul_cr_lf(self) -> None:
        """
        NUL, CR and LF inside a value are 400s (RFC 9110 section 5.5), as
        are other control characters and DEL.
        """
        for value in (b"a\x00b", b"a\rb", b"a\nb", b"a\x0bb", b"a\x7fb", b"\x0cchunked"):
            self.assertRefused(400, b"GET / HTTP/1.1", _HOST, b"X-A: " + value)

    def test_space_before_colon(self) -> None:
        """
        Whitespace between the name and the colon is a 400 (RFC 9112
        section 5.1).
        """
        self.assertRefused(400, b"GET / HTTP/1.1", _HOST, b"X-A : 1")
        self.assertRefused(400, b"GET / HTTP/1.1", _HOST, b"X-A\t: 1")

    def test_whitespace_before_first_header(self) -> None:
        """
        Whitespace before the first header is a 400 (RFC 9112 section 2.2).
        """
        self.assertRefused(400, b"GET / HTTP/1.1", b" " + _HOST)

    def test_obs_fold(self) -> None:
        """
        Obsolete line folding is a 400, not unfolded.
        """
        error = self.assertRefused(400, b"GET / HTTP/1.1", _HOST, b"X-A: 1", b" 2")
        self.assertIn("folding", error.detail)

    def test_bad_names(self) -> None:
        """
        An empty name, a name with a delimiter or non-ASCII, or a line
        without a colon is a 400.
        """
        for line in (b": 1", b"X[A]: 1", b"X\xc3\xa9: 1", b"X-A 1", b"X@A: 1"):
            self.assertRefused(400, b"GET / HTTP/1.1", _HOST, line)

    def test_underscore_dropped(self) -> None:
        """
        Headers whose name has an underscore are dropped, as nginx does,
        and never count for framing.
        """
        head = check_head(
            b"POST / HTTP/1.1",
            [_HOST, b"X_Real_IP: 1.2.3.4", b"Transfer_Encoding: chunked", b"X-Real-IP: 5"],
        )
        self.assertEqual(head.headers, [(b"Host", b"app.example"), (b"X-Real-IP", b"5")])
        self.assertEqual(head.body_length, 0)


class HostTests(SynchronousTestCase, _Refusals):
    """
    C{Host}: required on HTTP/1.1, once, and valid.
    """

    def test_missing_on_http11(self) -> None:
        """
        An HTTP/1.1 request without Host is a 400.
        """
        self.assertRefused(400, b"GET / HTTP/1.1", b"X-A: 1")

    def test_missing_on_http10(self) -> None:
        """
        An HTTP/1.0 request may come without Host.
        """
        self.assertEqual(check_head(b"GET / HTTP/1.0", []).headers, [])

    def test_two(self) -> None:
        """
        Two Host headers are a 400, even equal ones.
        """
        self.assertRefused(400, b"GET / HTTP/1.1", _HOST, _HOST)

    def test_invalid(self) -> None:
        """
        An empty Host, or one with a space, a slash or userinfo, is a 400.
        """
        for value in (b"", b"a b", b"a/b", b"u@a", b":80"):
            self.assertRefused(400, b"GET / HTTP/1.1", b"Host: " + value)

    def test_valid(self) -> None:
        """
        Names, ports and IPv6 literals are accepted.
        """
        for value in (b"a.example", b"a.example:8080", b"[::1]:80", b"127.0.0.1"):
            self.assertEqual(
                check_head(b"GET / HTTP/1.1", [b"Host: " + value]).headers[0][1], value
            )


class ContentLengthTests(SynchronousTestCase, _Refusals):
    """
    C{Content-Length}: one header, 1*DIGIT.
    """

    def _length(self, *values: bytes) -> int | None:
        lines = [b"Content-Length: " + value for value in values]
        return check_head(b"POST / HTTP/1.1", [_HOST, *lines]).body_length

    def test_valid(self) -> None:
        """
        A plain length frames the body and is forwarded as plain digits.
        """
        self.assertEqual(self._length(b"5"), 5)
        head = check_head(b"POST / HTTP/1.1", [_HOST, b"Content-Length: 007"])
        self.assertEqual(head.headers[-1], (b"Content-Length", b"7"))

    def test_no_body(self) -> None:
        """
        Without Content-Length or Transfer-Encoding there is no body.
        """
        self.assertEqual(check_head(b"POST / HTTP/1.1", [_HOST]).body_length, 0)

    def test_two_different(self) -> None:
        """
        Two different lengths are a 400 (CVE-2020-10108).
        """
        self.assertRefused(
            400, b"POST / HTTP/1.1", _HOST, b"Content-Length: 5", b"Content-Length: 0"
        )

    def test_two_equal(self) -> None:
        """
        Two equal lengths, or C{5, 5}, are a 400 too: lbproxy's choice.
        """
        self.assertRefused(
            400, b"POST / HTTP/1.1", _HOST, b"Content-Length: 5", b"Content-Length: 5"
        )
        self.assertRefused(400, b"POST / HTTP/1.1", _HOST, b"Content-Length: 5, 5")

    def test_not_digits(self) -> None:
        """
        Empty, signed, hexadecimal, underscored, spaced, non-ASCII digits:
        all 400s (CVE-2022-24801, HAProxy CVE-2023-40225).
        """
        for value in (b"", b"+5", b"-1", b"0x10", b"1_0", b"1 0", b"5.0", b"\xd9\xa1", b"five"):
            self.assertRefused(400, b"POST / HTTP/1.1", _HOST, b"Content-Length: " + value)

    def test_too_large(self) -> None:
        """
        A length of 2**63 or more is a 400; 2**63 - 1 is accepted.
        """
        self.assertEqual(self._length(b"%d" % (2**63 - 1)), 2**63 - 1)
        self.assertRefused(400, b"POST / HTTP/1.1", _HOST, b"Content-Length: %d" % 2**63)
        self.assertRefused(400, b"POST / HTTP/1.1", _HOST, b"Content-Length: " + b"9" * 5000)

    def test_max_body_size(self) -> None:
        """
        A length over the body limit is a 413; one at the limit passes.
        """
        limits = Limits(max_body_size=10)
        head = check_head(b"POST / HTTP/1.1", [_HOST, b"Content-Length: 10"], limits)
        self.assertEqual(head.body_length, 10)
        self.assertRefused(413, b"POST / HTTP/1.1", _HOST, b"Content-Length: 11", limits=limits)


class TransferEncodingTests(SynchronousTestCase, _Refusals):
    """
    C{Transfer-Encoding}: exactly C{chunked}, once, without a length.
    """

    def test_chunked(self) -> None:
        """
        C{chunked}, in any case, frames a chunked body and is forwarded
        normalised.
        """
        for value in (b"chunked", b"Chunked", b"CHUNKED", b" chunked\t"):
            head = check_head(b"POST / HTTP/1.1", [_HOST, b"Transfer-Encoding: " + value])
            self.assertIsNone(head.body_length)
            self.assertEqual(head.headers[-1], (b"Transfer-Encoding", b"chunked"))

    def test_with_content_length(self) -> None:
        """
        Both framing headers, in either order, are a 400 (CVE-2020-10109).
        """
        te, cl = b"Transfer-Encoding: chunked", b"Content-Length: 5"
        self.assertRefused(400, b"POST / HTTP/1.1", _HOST, te, cl)
        self.assertRefused(400, b"POST / HTTP/1.1", _HOST, cl, te)

    def test_two_headers(self) -> None:
        """
        Two Transfer-Encoding headers are a 400, even both C{chunked}.
        """
        te = b"Transfer-Encoding: chunked"
        self.assertRefused(400, b"POST / HTTP/1.1", _HOST, te, te)

    def test_http10(self) -> None:
        """
        Transfer-Encoding in an HTTP/1.0 request is a 400 (RFC 9112
        section 6.1).
        """
        self.assertRefused(400, b"POST / HTTP/1.0", b"Transfer-Encoding: chunked")

    def test_chunked_not_final(self) -> None:
        """
        A value whose last coding is not C{chunked}, or with C{chunked}
        twice, or malformed, is a 400.
        """
        for value in (
            b"identity",
            b"gzip",
            b"chunked, gzip",
            b"chunked, chunked",
            b",chunked",
            b"chunked,",
            b"",
            b"\xa0chunked",
            b"chunked;q=1",
        ):
            self.assertRefused(400, b"POST / HTTP/1.1", _HOST, b"Transfer-Encoding: " + value)

    def test_other_codings(self) -> None:
        """
        Other codings before C{chunked} are a 501: lbproxy forwards none.
        """
        for value in (b"gzip, chunked", b"JUNK, chunked", b"identity,chunked"):
            self.assertRefused(501, b"POST / HTTP/1.1", _HOST, b"Transfer-Encoding: " + value)


class HeadReaderTests(SynchronousTestCase):
    """
    L{HeadReader} takes a head line by line and enforces the size limits.
    """

    def _feed(self, reader: HeadReader, *lines: bytes) -> object:
        result = None
        for line in lines:
            result = reader.line(line)
        return result

    def test_head(self) -> None:
        """
        The empty line after the headers gives the head; the reader is then
        ready for the next one.
        """
        reader = HeadReader()
        self.assertIsNone(self._feed(reader, b"GET /1 HTTP/1.1", _HOST))
        first = reader.line(b"")
        second = self._feed(reader, b"GET /2 HTTP/1.1", _HOST, b"")
        self.assertEqual([first.target, second.target], [b"/1", b"/2"])  # type: ignore[union-attr]

    def test_one_leading_empty_line(self) -> None:
        """
        One empty line before the request line is ignored (RFC 9112 section
        2.2); a second is a 400.
        """
        reader = HeadReader()
        self.assertEqual(self._feed(reader, b"", b"GET / HTTP/1.1", _HOST, b"").target, b"/")  # type: ignore[union-attr]
        reader.line(b"")
        error = self.assertRaises(FramingError, reader.line, b"")
        self.assertEqual(error.status, 400)

    def test_request_line_limit(self) -> None:
        """
        A request line over the limit is a 414; at the limit it passes.
        """
        limits = Limits(max_request_line=30)
        line = b"GET /" + b"a" * 16 + b" HTTP/1.1"
        self.assertEqual(len(line), 30)
        HeadReader(limits).line(line)
        error = self.assertRaises(FramingError, HeadReader(limits).line, line + b"a")
        self.assertEqual(error.status, 414)

    def test_header_line_limit(self) -> None:
        """
        A header line over the limit is a 431.
        """
        reader = HeadReader(Limits(max_header_line=20))
        reader.line(b"GET / HTTP/1.1")
        reader.line(b"X: " + b"a" * 17)
        error = self.assertRaises(FramingError, reader.line, b"X: " + b"a" * 18)
        self.assertEqual(error.status, 431)

    def test_header_count_limit(self) -> None:
        """
        More header lines than the limit is a 431 (100 by default).
        """
        reader = HeadReader()
        reader.line(b"GET / HTTP/1.1")
        for i in range(100):
            reader.line(b"X-%d: 1" % i)
        error = self.assertRaises(FramingError, reader.line, b"X-100: 1")
        self.assertEqual(error.status, 431)

    def test_headers_size_limit(self) -> None:
        """
        Headers over the total limit are a 431 (64 kB by default), counting
        their CRLFs.
        """
        reader = HeadReader()
        reader.line(b"GET / HTTP/1.1")
        line = b"X: " + b"a" * 8000
        for _ in range(8):
            reader.line(line)
        error = self.assertRaises(FramingError, reader.line, line)
        self.assertEqual(error.status, 431)

    def test_error_on_the_line_that_breaks(self) -> None:
        """
        A bad line is refused when it arrives, not at the end of the head.
        """
        reader = HeadReader()
        reader.line(b"GET / HTTP/1.1")
        self.assertRaises(FramingError, reader.line, b"X-A : 1")

    def test_line_too_long(self) -> None:
        """
        An over-long unfinished line is a 414 before the request line, a
        431 after it.
        """
        reader = HeadReader()
        self.assertEqual(reader.line_too_long().status, 414)
        reader.line(b"GET / HTTP/1.1")
        self.assertEqual(reader.line_too_long().status, 431)


class ChunkedDecoderTests(SynchronousTestCase):
    """
    L{ChunkedDecoder} decodes chunked bodies strictly.
    """

    def setUp(self) -> None:
        self.data: list[bytes] = []
        self.rest: list[bytes] = []

    def _decoder(self, limits: Limits | None = None) -> ChunkedDecoder:
        return ChunkedDecoder(self.data.append, self.rest.append, *([limits] if limits else []))

    def _refused(self, body: bytes, status: int = 400, limits: Limits | None = None) -> None:
        decoder = self._decoder(limits)
        error = self.assertRaises(FramingError, decoder.dataReceived, body)
        self.assertEqual(error.status, status, str(error))

    def test_whole(self) -> None:
        """
        A body in one piece is decoded; what follows goes to the finish
        callback.
        """
        self._decoder().dataReceived(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nGET / HTTP/1.1")
        self.assertEqual(b"".join(self.data), b"hello world")
        self.assertEqual(self.rest, [b"GET / HTTP/1.1"])

    def test_byte_by_byte(self) -> None:
        """
        The same body fed a byte at a time gives the same data.
        """
        decoder = self._decoder()
        body = b'a;name=value;q="x \\" y"\r\n0123456789\r\n00\r\nT: 1\r\n\r\n'
        for byte in body:
            decoder.dataReceived(bytes([byte]))
        self.assertEqual(b"".join(self.data), b"0123456789")
        self.assertEqual(self.rest, [b""])

    def test_streamed(self) -> None:
        """
        Data is delivered as it arrives, before its chunk is complete.
        """
        decoder = self._decoder()
        decoder.dataReceived(b"a\r\n01234")
        self.assertEqual(self.data, [b"01234"])

    def test_size_prefixes(self) -> None:
        """
        C{0x}, C{+}, C{-}, spaces or an empty size are 400s (CVE-2022-24801).
        """
        for size in (b"0x5", b"+5", b"-5", b" 5", b"5 ", b"", b"5 ;a", b"5_0", b"g"):
            self._refused(size + b"\r\nhello\r\n0\r\n\r\n")

    def test_size_overflow(self) -> None:
        """
        A chunk size of 2**63 or more is a 400 (Twisted accepts any).
        """
        self._refused(b"8000000000000000\r\n")
        self._refused(b"10000000000000000\r\n")

    def test_extension_with_cr_or_lf(self) -> None:
        """
        A CR or LF inside a chunk extension is a 400 (CVE-2022-24801).
        """
        self._refused(b"5;a\nb\r\nhello\r\n0\r\n\r\n")
        self._refused(b"5;a\rb\r\nhello\r\n0\r\n\r\n")
        self._refused(b'5;a="\n"\r\nhello\r\n0\r\n\r\n')

    def test_bad_extension(self) -> None:
        """
        An extension that is not C{;token[=token|quoted-string]} is a 400.
        """
        for extension in (b";", b";a=", b";a=b c", b';a="x', b";a b", b";=b"):
            self._refused(b"5" + extension + b"\r\nhello\r\n0\r\n\r\n")

    def test_data_without_crlf(self) -> None:
        """
        Chunk data not followed by CRLF is a 400.
        """
        self._refused(b"5\r\nhelloXX\r\n0\r\n\r\n")
        self._refused(b"5\r\nhello\n0\r\n\r\n")

    def test_bare_lf_lines(self) -> None:
        """
        A size line ended by a bare LF is a 400.
        """
        self._refused(b"5\nhello\r\n0\r\n\r\n")

    def test_bare_lf_refused_at_once(self) -> None:
        """
        A bare LF is refused as soon as it arrives, without waiting for a
        CRLF that a client using LF alone never sends.
        """
        self._refused(b"5\nhello\n0\n\n")
        decoder = self._decoder()
        decoder.dataReceived(b"5\r\nhello")
        self.assertRaises(FramingError, decoder.dataReceived, b"\n")

    def test_bad_trailer(self) -> None:
        """
        A trailer that is not a field line is a 400.
        """
        self._refused(b"0\r\nnot a field\r\n\r\n")

    def test_trailers_dropped(self) -> None:
        """
        Valid trailers are dropped, never delivered as data.
        """
        self._decoder().dataReceived(b"1\r\na\r\n0\r\nX-Sum: 1\r\n\r\n")
        self.assertEqual(self.data, [b"a"])

    def test_long_size_line(self) -> None:
        """
        A size line over 4 kB without its end is a 400.
        """
        self._refused(b"5;a=" + b"b" * 5000)

    def test_body_limit(self) -> None:
        """
        A chunk taking the body over the limit is a 413, and none of it is
        delivered.
        """
        decoder = self._decoder(Limits(max_body_size=8))
        decoder.dataReceived(b"5\r\nhello\r\n")
        error = self.assertRaises(FramingError, decoder.dataReceived, b"4\r\nabcd\r\n")
        self.assertEqual(error.status, 413)
        self.assertEqual(self.data, [b"hello"])


class ErrorResponseTests(SynchronousTestCase):
    """
    L{error_response} is a complete answer that closes the connection.
    """

    def test_shape(self) -> None:
        """
        Status line, text body with its length, C{Connection: close}.
        """
        response = error_response(FramingError(431, "more than 100 headers"), b"Thu, 01 Jan 2026")
        parsed = parse_responses(response)[0]
        self.assertEqual((parsed.status, parsed.reason), (431, b"Request Header Fields Too Large"))
        self.assertEqual(parsed.header(b"connection"), [b"close"])
        self.assertEqual(parsed.header(b"date"), [b"Thu, 01 Jan 2026"])
        self.assertEqual(
            parsed.body, b"431 Request Header Fields Too Large: more than 100 headers\n"
        )


class ResponseFramingTests(SynchronousTestCase):
    """
    L{response_framing_error} refuses app server answers whose
    Transfer-Encoding is not exactly C{chunked}.
    """

    def test_acceptable(self) -> None:
        """
        No Transfer-Encoding, or C{chunked} in any case, is fine.
        """
        self.assertIsNone(response_framing_error([(b"Content-Length", b"3")]))
        self.assertIsNone(response_framing_error([(b"Transfer-Encoding", b"Chunked")]))

    def test_refused(self) -> None:
        """
        Other codings, C{chunked} twice (in one header or two) are refused.
        """
        for headers in (
            [(b"Transfer-Encoding", b"gzip")],
            [(b"transfer-encoding", b"gzip, chunked")],
            [(b"Transfer-Encoding", b"chunked, identity")],
            [(b"Transfer-Encoding", b"chunked"), (b"Transfer-Encoding", b"chunked")],
        ):
            self.assertIsNotNone(response_framing_error(headers), headers)


def _fixed_answer(testcase: TestCase, answer: bytes) -> int:
    """
    An app server on loopback answering every request with C{answer}.
    """

    class Fixed(Protocol):
        def dataReceived(self, data: bytes) -> None:
            self.transport.write(answer)

    port = reactor.listenTCP(0, Factory.forProtocol(Fixed), interface="127.0.0.1")
    testcase.addCleanup(port.stopListening)
    return port.getHost().port


class UpstreamFramingTests(TestCase):
    """
    An app server's answer with broken framing never reaches the client as
    if it were valid: 502 before anything was relayed, else an abort.
    """

    @inlineCallbacks
    def _status(self, answer: bytes):
        proxy_port, _, _ = start_proxy(self, [_fixed_answer(self, answer)])
        response = yield get(proxy_port)
        return response.status

    @inlineCallbacks
    def test_transfer_encoding_not_chunked(self):
        """
        C{Transfer-Encoding: gzip} (which llhttp reads until the connection
        closes) gives 502.
        """
        status = yield self._status(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc")
        self.assertEqual(status, 502)
        self.flushLoggedErrors()

    @inlineCallbacks
    def test_transfer_encoding_chunked_twice(self):
        """
        Two C{Transfer-Encoding: chunked} headers (llhttp merges them)
        give 502.
        """
        status = yield self._status(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\n"
        )
        self.assertEqual(status, 502)

    @inlineCallbacks
    def test_gzip_then_chunked(self):
        """
        C{gzip, chunked} (llhttp would de-chunk it and lose the gzip) gives
        502.
        """
        status = yield self._status(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        )
        self.assertEqual(status, 502)

    @inlineCallbacks
    def test_length_and_chunked(self):
        """
        Content-Length with Transfer-Encoding gives 502 (llhttp refuses it).
        """
        status = yield self._status(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\n"
        )
        self.assertEqual(status, 502)

    @inlineCallbacks
    def test_conflicting_lengths(self):
        """
        Two different Content-Lengths give 502 (llhttp refuses them).
        """
        status = yield self._status(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"
        )
        self.assertEqual(status, 502)

    @inlineCallbacks
    def test_invalid_chunk(self):
        """
        An invalid chunk after the headers makes lbproxy abort the client
        connection: the answer never looks complete.
        """
        port = _fixed_answer(
            self,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n",
        )
        proxy_port, _, _ = start_proxy(self, [port])
        client, done = raw_request(
            proxy_port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        data = yield done
        self.assertNotIn(b"abc", data)
        self.assertTrue(client.reason.check(ConnectionLost), client.reason)
