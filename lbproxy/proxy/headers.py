# -*- test-case-name: tests.proxy.test_headers -*-
"""
Pure header rewriting for both directions of the proxy.

A proxy forwards end-to-end headers and drops hop-by-hop ones
(RFC 9110 section 7.6.1): C{Connection}, every header C{Connection} names,
and the fixed list in L{HOP_BY_HOP}.  Headers are handled as
C{(name, value)} pairs of bytes so that repeated headers (two
C{Set-Cookie}) stay repeated and in order.

lbproxy sets C{X-Request-Id} both ways (L{lbproxy.proxy.requestid}): the
client's own, if valid, is the request's id, and an app server's in its
answer is replaced by the request's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from lbproxy.http.framing import connection_tokens

__all__ = [
    "HOP_BY_HOP",
    "REPLACED_DOWNSTREAM",
    "end_to_end",
    "upstream_request_headers",
]

Header = tuple[bytes, bytes]

#: Lower-cased names of the headers that only describe one hop.
#: C{Proxy-Connection} is not standard but old clients send it (nginx and
#: HAProxy drop it too).
HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

#: Headers lbproxy writes itself on the way to the app server.  C{Expect} is
#: dropped because lbproxy has already answered C{100 Continue} and holds
#: the body; C{Content-Length} is recomputed from the body it sends;
#: C{X-Request-Id} is the request's id (the client's, if it was valid).
_REWRITTEN_UPSTREAM: frozenset[bytes] = frozenset(
    {
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-request-id",
        b"expect",
        b"content-length",
    }
)

#: Headers of an app server's answer that lbproxy drops besides the
#: hop-by-hop ones, and writes itself: the request's C{X-Request-Id}.
REPLACED_DOWNSTREAM: frozenset[bytes] = HOP_BY_HOP | {b"x-request-id"}


def end_to_end(headers: Iterable[Header], dropped: frozenset[bytes] = HOP_BY_HOP) -> list[Header]:
    """
    Drop hop-by-hop headers, including every header C{Connection} names.

    @param headers: the headers as received, in order.
    @param dropped: the lower-cased names to drop besides those
        C{Connection} names: L{HOP_BY_HOP}, or more of them
        (L{REPLACED_DOWNSTREAM}).
    @return: the headers a proxy may forward, in the same order.
    """
    lowered = [(name.lower(), name, value) for name, value in headers]
    drop = _dropped(lowered, dropped)
    return [(name, value) for lower, name, value in lowered if lower not in drop]


def _dropped(
    lowered: list[tuple[bytes, bytes, bytes]], fixed: frozenset[bytes]
) -> frozenset[bytes]:
    """
    The lower-cased names to drop: C{fixed} plus those C{Connection} names.
    """
    connection = [value for lower, _, value in lowered if lower == b"connection"]
    if not connection:
        return fixed
    return fixed | connection_tokens(connection)


def upstream_request_headers(
    headers: Iterable[Header],
    client_address: bytes,
    scheme: bytes,
    default_host: Callable[[], bytes],
    request_id: bytes,
) -> list[Header]:
    """
    The headers to send to the app server for one client request.

    End-to-end headers go through unchanged (the client's C{Host} included);
    the client's address is appended to C{X-Forwarded-For} (nginx's
    C{$proxy_add_x_forwarded_for}); C{X-Forwarded-Proto} and
    C{X-Forwarded-Host} are set, replacing whatever the client sent, since
    lbproxy is the edge that knows them; C{X-Request-Id} is the request's
    id.  Hop-by-hop headers are dropped as by L{end_to_end}.

    @param headers: the client's request headers, in order.
    @param client_address: the client's IP address (or C{b"unix:"}).
    @param scheme: C{b"http"} or C{b"https"}, how the client reached us.
    @param default_host: gives the C{Host} to send when the client sent
        none (an HTTP/1.0 client); called only then.
    @param request_id: the request's id (L{lbproxy.proxy.requestid}).
    @return: the headers, without C{Content-Length}: the caller adds the
        framing of the body it actually sends.
    """
    lowered = [(name.lower(), name, value) for name, value in headers]
    hop_by_hop = _dropped(lowered, HOP_BY_HOP)
    forwarded_for: list[bytes] = []
    host: bytes | None = None
    out: list[Header] = []
    for lower, name, value in lowered:
        if lower in hop_by_hop:
            continue
        if lower in _REWRITTEN_UPSTREAM:
            if lower == b"x-forwarded-for":
                forwarded_for.append(value)
            continue
        if lower == b"host" and host is None:
            host = value
        out.append((name, value))
    if host is None:
        host = default_host()
        out.insert(0, (b"Host", host))
    forwarded_for.append(client_address)
    out.append((b"X-Forwarded-For", b", ".join(forwarded_for)))
    out.append((b"X-Forwarded-Proto", scheme))
    out.append((b"X-Forwarded-Host", host))
    out.append((b"X-Request-Id", request_id))
    return out
