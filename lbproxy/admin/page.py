# -*- test-case-name: tests.admin.test_page -*-
"""
The status page (C{GET /}): C{status.html} (HTML and CSS, and a small
script that fetches C{api/status} every 2 seconds and draws it; no
framework, nothing from elsewhere), with its security headers.

The page is served with the pools, their DNS sources and servers of the
moment already written in it as plain lists (L{render_page}), so that it
names them without its script (curl, a text browser, a phone with scripts
off) and shows them before the first fetch; the script replaces the lists
with its cards, writing each DNS source's line as L{source_line} does.
"""

from __future__ import annotations

import base64
import hashlib
import re
from html import escape
from importlib import resources
from typing import Any

__all__ = ["PAGE", "PAGE_HEADERS", "ago", "render_page", "server_line", "source_line"]

#: The page as shipped, its server list empty.
PAGE = resources.files(__package__).joinpath("status.html").read_bytes()

#: Where L{render_page} writes the server list.
_SLOT = b'<main id="pools"></main>'


def _hashes(tag: bytes) -> str:
    # The page's inline script and style are allowed by their hashes
    # (CSP level 2), so that no other script can run in it.
    found = re.findall(rb"<%s>(.*?)</%s>" % (tag, tag), PAGE, re.DOTALL)
    return " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(body).digest()).decode() + "'"
        for body in found
    )


#: The page's headers: a content security policy allowing its own script
#: and style alone, no framing, no referrer.
PAGE_HEADERS = {
    b"Content-Type": b"text/html; charset=utf-8",
    b"Content-Security-Policy": (
        f"default-src 'none'; script-src {_hashes(b'script')}; "
        f"style-src {_hashes(b'style')}; connect-src 'self'; img-src data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ).encode("ascii"),
    b"X-Frame-Options": b"DENY",
    b"Referrer-Policy": b"no-referrer",
}


def server_line(server: dict[str, Any]) -> str:
    """
    One server as a line of text: its address, state and why it is out.

    @param server: a server of L{lbproxy.admin.core.server_data}.
    """
    line = f"{server['address']} {server['state']}"
    if server["backup"]:
        line += " (backup)"
    if server["down_reason"]:
        line += f": {server['down_reason']}"
    return line


def ago(then: float, now: float) -> str:
    """
    How long ago C{then} was, for people: C{"5 s ago"}, C{"3 min ago"},
    C{"2 h ago"} (the page's script writes the same).
    """
    # int(x + 0.5) rounds halves up, as the script's Math.round does.
    seconds = int(max(0.0, now - then) + 0.5)
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{int(seconds / 60 + 0.5)} min ago"
    return f"{int(seconds / 3600 + 0.5)} h ago"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def source_line(source: dict[str, Any], now: float) -> str:
    """
    What a DNS source's last lookup found, as a line after its URL:
    C{"via 10.0.0.2:53: ok 3 s ago, TTL 5 s; 2 servers: 10.0.0.7:3000
    10.0.0.8:3000"}, or C{"via system: failed 4 s ago (timed out), failing
    since 2 min ago; keeps 2 servers: ..."} (the page's script writes the
    same).

    @param source: a source of L{lbproxy.admin.core.source_data}.
    @param now: the clock's seconds, for the ages.
    """
    line = f"via {source['resolver']}: "
    if source["last_lookup"] is None:
        line += "not looked up yet"
    else:
        line += f"{source['last_outcome']} {ago(source['last_lookup'], now)}"
        if source["last_error"]:
            line += f" ({source['last_error']})"
        if source["failing_since"] is not None:
            line += f", failing since {ago(source['failing_since'], now)}"
        elif source["ttl"] is not None:
            line += f", TTL {source['ttl']:g} s"
    servers = source["servers"]
    if not servers:
        return line + "; no servers"
    kept = "keeps " if source["failing_since"] is not None else ""
    return line + f"; {kept}{_plural(len(servers), 'server')}: " + " ".join(servers)


def render_page(upstreams: dict[str, Any], now: float) -> bytes:
    """
    The page with C{upstreams} (L{lbproxy.admin.core.AdminCore.upstreams})
    written in it as lists per pool (its DNS sources, its servers), every
    value escaped.

    @param now: the clock's seconds, for the ages of DNS lookups.
    """
    parts = []
    for name, pool in upstreams.items():
        parts.append(
            f"<section><h2>{escape(name)}</h2>"
            f'<div class="pool-meta">balance {escape(pool["balance"])}</div>'
        )
        if pool["discovery"]:
            parts.append('<ul class="sources">')
            parts.extend(
                f"<li>{escape(source['url'])} {escape(source_line(source, now))}</li>"
                for source in pool["discovery"]
            )
            parts.append("</ul>")
        parts.append("<ul>")
        parts.extend(f"<li>{escape(server_line(server))}</li>" for server in pool["servers"])
        parts.append("</ul></section>")
    filled = _SLOT.replace(b"></", b">" + "".join(parts).encode("utf-8") + b"</")
    return PAGE.replace(_SLOT, filled)
