# -*- test-case-name: tests.upstream.test_upgrade -*-
"""
What an upgrade is, both ways (RFC 9110 section 7.8): the protocols an
HTTP/1.1 request asks to switch to, which lbproxy forwards to the app
server (L{upgrade_offer}), and whether a C{101 Switching Protocols} answer
takes one of them (L{switch_refusal}).  Pure functions on headers; the
client side (L{lbproxy.http.h1}) asks the first, the upstream connection
(L{lbproxy.upstream.connection}) the second, and the tunnel itself is
L{lbproxy.proxy.tunnel}.

C{h2c} is never offered: HTTP/2 in a tunnel would carry requests lbproxy
never sees, past its gate and its routes (h2c smuggling, Bishop Fox 2020).
Such a request goes to the app server as a plain one, without C{Upgrade}.
"""

from __future__ import annotations

from collections.abc import Iterable

from lbproxy.http.framing import connection_tokens

__all__ = ["protocol_names", "switch_refusal", "upgrade_offer"]

Header = tuple[bytes, bytes]


def protocol_names(values: Iterable[bytes]) -> frozenset[bytes]:
    """
    The protocol names listed in C{Upgrade} values, lower-cased and
    without versions (C{WebSocket} is C{websocket}, C{foo/2} is C{foo}).
    """
    return frozenset(
        part.split(b"/", 1)[0].strip().lower()
        for value in values
        for part in value.split(b",")
        if part.strip()
    )


def upgrade_offer(headers: Iterable[Header]) -> bytes | None:
    """
    What an HTTP/1.1 request whose C{Connection} names C{upgrade} offers to
    switch to: its C{Upgrade} values joined, to forward as they came.

    @param headers: the request's headers, as the gate passed them.
    @return: the value, or L{None} if there is no C{Upgrade} header, it
        lists no protocol, or it lists C{h2c}.
    """
    values = [value for name, value in headers if len(name) == 7 and name.lower() == b"upgrade"]
    if not values:
        return None
    names = protocol_names(values)
    if not names or b"h2c" in names:
        return None
    return b", ".join(values)


def switch_refusal(offer: bytes | None, headers: Iterable[Header]) -> str | None:
    """
    Why a C{101 Switching Protocols} answer cannot open a tunnel, if it
    cannot: it must answer a request that offered an upgrade, say what it
    switched to in C{Upgrade} and C{Connection: upgrade} (RFC 9110 section
    7.8: a server that sends C{Upgrade} also names it in C{Connection}),
    and switch only to protocols the request offered.

    @param offer: what the request offered (L{upgrade_offer}), L{None} for
        a plain request.
    @param headers: the answer's headers.
    @return: a reason for the log line, or L{None} if the switch is good.
    """
    if offer is None:
        return "101 Switching Protocols to a request that did not ask to upgrade"
    upgrade: list[bytes] = []
    connection: list[bytes] = []
    for name, value in headers:
        lower = name.lower()
        if lower == b"upgrade":
            upgrade.append(value)
        elif lower == b"connection":
            connection.append(value)
    chosen = protocol_names(upgrade)
    if not chosen or b"upgrade" not in connection_tokens(connection):
        return "101 Switching Protocols without Upgrade and Connection: upgrade"
    if not chosen <= protocol_names([offer]):
        return "101 Switching Protocols to a protocol the client did not ask for"
    return None
