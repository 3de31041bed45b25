# -*- test-case-name: tests.admin.test_page -*-
"""
The status page (C{GET /}): C{status.html} (HTML and CSS, and a small
script that fetches C{api/status} every 2 seconds and draws it; no
framework, nothing from elsewhere), with its security headers.

The page is served with the pools and servers of the moment already
written in it as a plain list (L{render_page}), so that it names them
without its script (curl, a text browser, a phone with scripts off) and
shows them before the first fetch; the script replaces the list with its
cards.
"""

from __future__ import annotations

import base64
import hashlib
import re
from html import escape
from importlib import resources
from typing import Any

__all__ = ["PAGE", "PAGE_HEADERS", "render_page"]

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


def render_page(upstreams: dict[str, Any]) -> bytes:
    """
    The page with C{upstreams} (L{lbproxy.admin.core.AdminCore.upstreams})
    written in it as a list per pool, every value escaped.
    """
    parts = []
    for name, pool in upstreams.items():
        parts.append(
            f"<section><h2>{escape(name)}</h2>"
            f'<div class="pool-meta">balance {escape(pool["balance"])}</div><ul>'
        )
        parts.extend(f"<li>{escape(server_line(server))}</li>" for server in pool["servers"])
        parts.append("</ul></section>")
    filled = _SLOT.replace(b"></", b">" + "".join(parts).encode("utf-8") + b"</")
    return PAGE.replace(_SLOT, filled)
