"""
Tests for L{lbproxy.proxy.headers}: hop-by-hop removal and the headers sent upstream.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from lbproxy.proxy.headers import (
    HOP_BY_HOP,
    REPLACED_DOWNSTREAM,
    connection_tokens,
    end_to_end,
    upstream_request_headers,
)


def _upstream(
    headers: list[tuple[bytes, bytes]],
    client_address: bytes = b"10.0.0.9",
    scheme: bytes = b"http",
    default_host: bytes = b"127.0.0.1:3000",
    request_id: bytes = b"id-1",
) -> list[tuple[bytes, bytes]]:
    """
    Call L{upstream_request_headers} with defaults for what a test ignores.
    """
    return upstream_request_headers(
        headers, client_address, scheme, lambda: default_host, request_id
    )


class HopByHopTests(SynchronousTestCase):
    """
    L{end_to_end} drops hop-by-hop headers (RFC 9110 section 7.6.1) and keeps
    the rest in order.
    """

    def test_every_fixed_name_dropped(self) -> None:
        """
        Each name in L{HOP_BY_HOP} is dropped, whatever its case.
        """
        for name in sorted(HOP_BY_HOP):
            for spelling in (name, name.upper(), name.title()):
                headers = [(b"Accept", b"*/*"), (spelling, b"x"), (b"Date", b"today")]
                self.assertEqual(
                    end_to_end(headers),
                    [(b"Accept", b"*/*"), (b"Date", b"today")],
                    spelling,
                )

    def test_fixed_list(self) -> None:
        """
        L{HOP_BY_HOP} is the RFC 9110 list plus the old C{Proxy-Connection}.
        """
        self.assertEqual(
            HOP_BY_HOP,
            {
                b"connection",
                b"keep-alive",
                b"proxy-connection",
                b"te",
                b"trailer",
                b"transfer-encoding",
                b"upgrade",
            },
        )

    def test_connection_named_header_dropped(self) -> None:
        """
        A header named in C{Connection} is dropped, whatever the case of
        either spelling.
        """
        headers = [
            (b"Connection", b"X-Secret"),
            (b"x-secret", b"1"),
            (b"X-Public", b"2"),
        ]
        self.assertEqual(end_to_end(headers), [(b"X-Public", b"2")])

    def test_connection_comma_list(self) -> None:
        """
        Every name of a comma-separated C{Connection} value is dropped,
        spaces around the commas ignored.
        """
        headers = [
            (b"Connection", b"close ,X-A,  x-b"),
            (b"X-A", b"1"),
            (b"X-B", b"2"),
            (b"X-C", b"3"),
        ]
        self.assertEqual(end_to_end(headers), [(b"X-C", b"3")])

    def test_several_connection_headers(self) -> None:
        """
        Names from every C{Connection} header count, even one that comes
        after the header it names.
        """
        headers = [
            (b"X-B", b"2"),
            (b"Connection", b"X-A"),
            (b"X-A", b"1"),
            (b"connection", b"x-b"),
            (b"X-C", b"3"),
        ]
        self.assertEqual(end_to_end(headers), [(b"X-C", b"3")])

    def test_response_direction(self) -> None:
        """
        Response headers lose their hop-by-hop headers too, and the rest keep
        their order.
        """
        headers = [
            (b"Content-Type", b"text/plain"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Connection", b"keep-alive"),
            (b"Keep-Alive", b"timeout=5"),
            (b"ETag", b'"1"'),
        ]
        self.assertEqual(end_to_end(headers), [(b"Content-Type", b"text/plain"), (b"ETag", b'"1"')])

    def test_repeated_headers_kept_in_order(self) -> None:
        """
        Two C{Set-Cookie} headers stay two headers, in their order.
        """
        headers = [
            (b"Set-Cookie", b"a=1"),
            (b"Connection", b"close"),
            (b"Set-Cookie", b"b=2"),
        ]
        self.assertEqual(end_to_end(headers), [(b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2")])

    def test_connection_tokens(self) -> None:
        """
        L{connection_tokens} lower-cases the names of every value and skips
        empty list elements.
        """
        self.assertEqual(connection_tokens([b"Close, X-A", b" ,x-b,,"]), {b"close", b"x-a", b"x-b"})


class ReplacedDownstreamTests(SynchronousTestCase):
    """
    An app server's answer loses its C{X-Request-Id} (lbproxy writes the
    request's) as well as its hop-by-hop headers.
    """

    def test_request_id_dropped(self) -> None:
        """
        C{X-Request-Id}, in any case, is dropped with the hop-by-hop headers;
        the rest stays in order.
        """
        headers = [
            (b"X-Request-Id", b"app-1"),
            (b"Content-Type", b"text/plain"),
            (b"Connection", b"close"),
            (b"x-request-id", b"app-2"),
            (b"ETag", b'"1"'),
        ]
        self.assertEqual(
            end_to_end(headers, REPLACED_DOWNSTREAM),
            [(b"Content-Type", b"text/plain"), (b"ETag", b'"1"')],
        )

    def test_default_keeps_it(self) -> None:
        """
        Without C{dropped}, only hop-by-hop headers go.
        """
        headers = [(b"X-Request-Id", b"app-1")]
        self.assertEqual(end_to_end(headers), headers)


class UpstreamRequestHeadersTests(SynchronousTestCase):
    """
    L{upstream_request_headers} builds what the app server receives.
    """

    def test_host_kept(self) -> None:
        """
        The client's C{Host} goes upstream unchanged, in its place, and
        C{X-Forwarded-Host} repeats it.
        """
        self.assertEqual(
            _upstream([(b"Host", b"example.com:8080"), (b"Accept", b"*/*")]),
            [
                (b"Host", b"example.com:8080"),
                (b"Accept", b"*/*"),
                (b"X-Forwarded-For", b"10.0.0.9"),
                (b"X-Forwarded-Proto", b"http"),
                (b"X-Forwarded-Host", b"example.com:8080"),
                (b"X-Request-Id", b"id-1"),
            ],
        )

    def test_forwarded_for_created(self) -> None:
        """
        Without a client C{X-Forwarded-For}, one holding the client's address
        is added.
        """
        headers = dict(_upstream([(b"Host", b"h")], client_address=b"192.0.2.7"))
        self.assertEqual(headers[b"X-Forwarded-For"], b"192.0.2.7")

    def test_forwarded_for_appended(self) -> None:
        """
        The client's address is appended to the C{X-Forwarded-For} it sent,
        as nginx's C{$proxy_add_x_forwarded_for}.
        """
        out = _upstream([(b"Host", b"h"), (b"x-forwarded-for", b"203.0.113.1")])
        self.assertEqual(
            [value for name, value in out if name.lower() == b"x-forwarded-for"],
            [b"203.0.113.1, 10.0.0.9"],
        )

    def test_two_forwarded_for_joined(self) -> None:
        """
        Two client C{X-Forwarded-For} headers become one, their values joined
        in order before the client's address.
        """
        out = _upstream(
            [
                (b"X-Forwarded-For", b"203.0.113.1"),
                (b"Host", b"h"),
                (b"X-Forwarded-For", b"198.51.100.2, 198.51.100.3"),
            ]
        )
        self.assertEqual(
            [value for name, value in out if name.lower() == b"x-forwarded-for"],
            [b"203.0.113.1, 198.51.100.2, 198.51.100.3, 10.0.0.9"],
        )

    def test_forwarded_proto_replaced(self) -> None:
        """
        C{X-Forwarded-Proto} is the scheme lbproxy was reached by; a value the
        client sent is dropped.
        """
        out = _upstream([(b"Host", b"h"), (b"X-Forwarded-Proto", b"https")], scheme=b"http")
        self.assertEqual(
            [value for name, value in out if name.lower() == b"x-forwarded-proto"],
            [b"http"],
        )

    def test_forwarded_proto_https(self) -> None:
        """
        The scheme given is passed on as C{X-Forwarded-Proto}.
        """
        out = _upstream([(b"Host", b"h")], scheme=b"https")
        self.assertIn((b"X-Forwarded-Proto", b"https"), out)

    def test_forwarded_host_replaced(self) -> None:
        """
        C{X-Forwarded-Host} is the client's C{Host}; a value the client sent
        is dropped.
        """
        out = _upstream([(b"X-Forwarded-Host", b"evil.example"), (b"Host", b"good.example")])
        self.assertEqual(
            [value for name, value in out if name.lower() == b"x-forwarded-host"],
            [b"good.example"],
        )

    def test_expect_and_content_length_dropped(self) -> None:
        """
        C{Expect} and C{Content-Length} are not forwarded: lbproxy answered
        the C{100 Continue} and frames the body it sends itself.
        """
        out = _upstream(
            [
                (b"Host", b"h"),
                (b"Expect", b"100-continue"),
                (b"Content-Length", b"12"),
                (b"Content-Type", b"text/plain"),
            ]
        )
        self.assertEqual(
            [name for name, value in out],
            [
                b"Host",
                b"Content-Type",
                b"X-Forwarded-For",
                b"X-Forwarded-Proto",
                b"X-Forwarded-Host",
                b"X-Request-Id",
            ],
        )

    def test_hop_by_hop_dropped(self) -> None:
        """
        Hop-by-hop request headers, and those C{Connection} names, are not
        forwarded.
        """
        out = _upstream(
            [
                (b"Host", b"h"),
                (b"Connection", b"keep-alive, X-Hop"),
                (b"X-Hop", b"1"),
                (b"TE", b"trailers"),
                (b"Upgrade", b"websocket"),
            ]
        )
        self.assertEqual(
            [name for name, value in out],
            [
                b"Host",
                b"X-Forwarded-For",
                b"X-Forwarded-Proto",
                b"X-Forwarded-Host",
                b"X-Request-Id",
            ],
        )

    def test_missing_host_defaulted(self) -> None:
        """
        Without a client C{Host} (HTTP/1.0), C{default_host} is sent first and
        repeated in C{X-Forwarded-Host}.
        """
        self.assertEqual(
            _upstream([(b"Accept", b"*/*")], default_host=b"127.0.0.1:3000"),
            [
                (b"Host", b"127.0.0.1:3000"),
                (b"Accept", b"*/*"),
                (b"X-Forwarded-For", b"10.0.0.9"),
                (b"X-Forwarded-Proto", b"http"),
                (b"X-Forwarded-Host", b"127.0.0.1:3000"),
                (b"X-Request-Id", b"id-1"),
            ],
        )

    def test_request_id_replaced(self) -> None:
        """
        The request's id goes upstream as the one C{X-Request-Id}: those the
        client sent are dropped (the exchange chose the id, keeping the
        client's if it was valid).
        """
        out = _upstream(
            [(b"Host", b"h"), (b"X-Request-Id", b"a"), (b"x-request-id", b"b")],
            request_id=b"b",
        )
        self.assertEqual(
            [(name, value) for name, value in out if name.lower() == b"x-request-id"],
            [(b"X-Request-Id", b"b")],
        )

    def test_repeated_headers_kept(self) -> None:
        """
        Repeated end-to-end request headers go upstream repeated and in order.
        """
        out = _upstream(
            [(b"Host", b"h"), (b"Cookie", b"a=1"), (b"Accept", b"*/*"), (b"Cookie", b"b=2")]
        )
        self.assertEqual(
            [(name, value) for name, value in out if name == b"Cookie"],
            [(b"Cookie", b"a=1"), (b"Cookie", b"b=2")],
        )
