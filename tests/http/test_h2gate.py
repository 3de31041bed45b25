"""
Tests for L{lbproxy.http.h2gate}: the HTTP/2 framing gate as pure functions.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from lbproxy.http.framing import FramingError, Limits
from lbproxy.http.h2gate import BodyLength, check_request_headers, check_trailers, hpack_budget

Header = tuple[bytes, bytes]


def _head(extra: list[Header] | None = None, **pseudo: bytes) -> list[Header]:
    fields = {b":method": b"GET", b":scheme": b"https", b":path": b"/", b":authority": b"a.example"}
    for name, value in pseudo.items():
        fields[b":" + name.encode()] = value
    return [(n, v) for n, v in fields.items() if v is not None] + (extra or [])


class RequestHeadersTests(SynchronousTestCase):
    """
    L{check_request_headers}.
    """

    def refused(self, fields: list[Header], status: int = 400, end_stream: bool = True) -> str:
        """
        Assert C{fields} are refused with C{status}; return the detail.
        """
        error = self.assertRaises(FramingError, check_request_headers, fields, end_stream)
        self.assertEqual(error.status, status, error.detail)
        return error.detail

    def test_normalised(self) -> None:
        """
        A good head comes back as fields for Twisted: C{:method},
        C{:path}, C{:authority} and the regular fields, without
        underscore names, with one cookie and the content-length as
        digits.
        """
        head = check_request_headers(
            _head(
                [
                    (b"accept", b"*/*"),
                    (b"x_real_ip", b"1.2.3.4"),
                    (b"cookie", b"a=1"),
                    (b"cookie", b"b=2"),
                    (b"content-length", b"007"),
                ],
                method=b"POST",
            ),
            end_stream=False,
        )
        self.assertEqual(head.content_length, 7)
        self.assertEqual(
            head.fields(),
            [
                (b":method", b"POST"),
                (b":path", b"/"),
                (b":authority", b"a.example"),
                (b"accept", b"*/*"),
                (b"content-length", b"7"),
                (b"cookie", b"a=1; b=2"),
            ],
        )

    def test_request_line_injection(self) -> None:
        """
        Nothing that could end or split a request line passes.
        """
        for path in (b"/a /b", b"/a HTTP/1.0", b"/a\tb", b"/a\r\nb", b"/a\x00", b"a", b""):
            self.refused(_head(path=path))
        for method in (b"GET /x", b"G(E)T", b"GET\r\n", b""):
            self.refused(_head(method=method))

    def test_absolute_path(self) -> None:
        """
        An absolute-form C{:path} is refused.
        """
        self.refused(_head(path=b"https://b.example/x"))

    def test_asterisk(self) -> None:
        """
        C{*} only for C{OPTIONS}.
        """
        self.assertEqual(
            check_request_headers(_head(method=b"OPTIONS", path=b"*"), True).target, b"*"
        )
        self.refused(_head(path=b"*"))

    def test_connect(self) -> None:
        """
        C{CONNECT}: 501.
        """
        self.refused([(b":method", b"CONNECT"), (b":authority", b"a.example:443")], 501)

    def test_pseudo_rules(self) -> None:
        """
        Unknown, repeated, late or missing pseudo-header fields: 400.
        """
        self.refused(_head([(b":foo", b"1")]))
        self.refused(_head([(b":path", b"/again")]))
        self.refused([(b":method", b"GET"), (b"x", b"1"), (b":path", b"/"), (b":scheme", b"http")])
        self.refused([(b":method", b"GET"), (b":path", b"/"), (b":authority", b"a.example")])
        self.refused([(b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a.example")])
        self.refused([(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a")])
        self.refused(_head(scheme=b"ftp"))

    def test_authority(self) -> None:
        """
        One valid host: C{:authority}, or C{host} without it; the same
        C{host} beside it is merged, another refused.
        """
        for bad in (b"", b"a b", b"a/b", b"user@a.example", b"evil.example/x?y z@w"):
            self.refused(_head(authority=bad))
        self.refused(_head([(b"host", b"b.example")]))
        self.refused(_head([(b"host", b"a/b")], authority=None))
        self.refused(_head([(b"host", b"a"), (b"host", b"a")], authority=None))
        self.refused(_head(authority=None))
        same = check_request_headers(_head([(b"host", b"A.example")]), True)
        self.assertEqual((same.authority, same.headers), (b"a.example", []))
        only = check_request_headers(_head([(b"host", b"b.example:8443")], authority=None), True)
        self.assertEqual(only.authority, b"b.example:8443")

    def test_fields(self) -> None:
        """
        Names are lowercase tokens; values have no control characters and
        no surrounding whitespace.
        """
        for name in (b"X-Up", b"x y", b"x(y)", b"x:y", b"", b"\xff"):
            self.refused(_head([(name, b"1")]))
        for value in (b"a\rb", b"a\nb", b"a\x00b", b"a\x1fb", b"a\x7f", b" a", b"a\t"):
            self.refused(_head([(b"x", value)]))
        head = check_request_headers(_head([(b"x", b"a\tb c"), (b"y", b"")]), True)
        self.assertEqual(head.headers, [(b"x", b"a\tb c"), (b"y", b"")])

    def test_uppercase_detail(self) -> None:
        """
        An uppercase name is named as such.
        """
        self.assertIn("uppercase", self.refused(_head([(b"X-Up", b"1")])))

    def test_connection_specific(self) -> None:
        """
        RFC 9113 section 8.2.2: connection-specific fields are refused;
        C{te: trailers} is allowed and not forwarded.
        """
        for name, value in (
            (b"connection", b"close"),
            (b"keep-alive", b"5"),
            (b"proxy-connection", b"close"),
            (b"transfer-encoding", b"chunked"),
            (b"upgrade", b"h2c"),
            (b"te", b"gzip"),
            (b"te", b"trailers, gzip"),
        ):
            self.refused(_head([(name, value)]))
        self.assertEqual(check_request_headers(_head([(b"te", b"trailers")]), True).headers, [])

    def test_content_length(self) -> None:
        """
        One content-length of digits only, not over the body limit, and 0
        when HEADERS ends the stream.
        """
        for bad in (b"", b"+1", b"1 ", b"0x1", b"1,1", b"-1", b"1" * 20):
            self.refused(_head([(b"content-length", bad)]), end_stream=False)
        self.refused(
            _head([(b"content-length", b"1"), (b"content-length", b"1")]), end_stream=False
        )
        self.refused(_head([(b"content-length", b"5")]), end_stream=True)
        self.assertEqual(
            check_request_headers(_head([(b"content-length", b"0")]), True).content_length, 0
        )
        self.assertIsNone(check_request_headers(_head(), False).content_length)
        error = self.assertRaises(
            FramingError,
            check_request_headers,
            _head([(b"content-length", b"11")]),
            False,
            Limits(max_body_size=10),
        )
        self.assertEqual(error.status, 413)

    def test_limits(self) -> None:
        """
        The HTTP/1.1 limits, counting each field as a header line: 431;
        a long C{:path}: 414.
        """
        limits = Limits(max_headers=3, max_header_line=20, max_headers_size=60)
        ok = _head([(b"a", b"1"), (b"b", b"2"), (b"c", b"3")])
        check_request_headers(ok, True, limits)
        for fields in (
            _head([(b"a", b"1")] * 4),
            _head([(b"a", b"v" * 18)]),
            _head([(b"a", b"v" * 16)] * 3),
        ):
            error = self.assertRaises(FramingError, check_request_headers, fields, True, limits)
            self.assertEqual(error.status, 431)
        error = self.assertRaises(
            FramingError,
            check_request_headers,
            _head(path=b"/" + b"a" * 100),
            True,
            Limits(max_request_line=100),
        )
        self.assertEqual(error.status, 414)

    def test_hpack_budget(self) -> None:
        """
        The decoded header list allowed at all is above what the limits
        let through, so that a request over them is answered 431.
        """
        limits = Limits()
        self.assertGreater(hpack_budget(limits), 100_000 + 32)
        self.assertGreater(hpack_budget(limits), limits.max_headers_size + 32 * limits.max_headers)


class TrailersTests(SynchronousTestCase):
    """
    L{check_trailers}.
    """

    def test_allowed(self) -> None:
        """
        Ordinary fields pass.
        """
        check_trailers([(b"x-checksum", b"abc"), (b"server-timing", b"a;dur=1")])

    def test_refused(self) -> None:
        """
        Pseudo-header fields, framing and connection fields, and invalid
        fields are refused.
        """
        for field in (
            (b":path", b"/x"),
            (b":status", b"200"),
            (b"content-length", b"5"),
            (b"transfer-encoding", b"chunked"),
            (b"host", b"b.example"),
            (b"connection", b"close"),
            (b"te", b"trailers"),
            (b"X-Up", b"1"),
            (b"x", b"a\r\nb"),
        ):
            self.assertRaises(FramingError, check_trailers, [field])


class BodyLengthTests(SynchronousTestCase):
    """
    L{BodyLength}.
    """

    def test_exact(self) -> None:
        """
        DATA adding up to content-length passes.
        """
        body = BodyLength(5)
        body.data(3)
        body.data(2)
        body.end()

    def test_over(self) -> None:
        """
        More DATA than content-length is refused at once.
        """
        body = BodyLength(5)
        body.data(5)
        self.assertRaises(FramingError, body.data, 1)

    def test_short(self) -> None:
        """
        Less DATA than content-length is refused at the end.
        """
        body = BodyLength(5)
        body.data(3)
        self.assertRaises(FramingError, body.end)

    def test_no_length(self) -> None:
        """
        Without content-length any amount passes.
        """
        body = BodyLength(None)
        body.data(10**6)
        body.end()
