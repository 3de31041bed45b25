# -*- test-case-name: tests.test_tls -*-
"""
The HTTPS policies of the client side for twisted.web requests (HTTP/2):
redirects of plain requests to https (C{308}) and
C{Strict-Transport-Security} on TLS responses.
"""

from __future__ import annotations

import re

from lbproxy.http.site import ProxyRequest

__all__ = ["HTTPSRequest", "https_request_factory"]


#: A C{Host} value lbproxy puts in a redirect: a name, IPv4 address or
#: bracketed IPv6 address, with an optional port.
_HOST = re.compile(rb"([A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]+)?")


class HTTPSRequest(ProxyRequest):
    """
    A L{ProxyRequest} with HTTPS policies (L{https_request_factory} sets
    them on a subclass).

    @cvar redirect_port: when not 0, requests on plain listeners are
        answered C{308 Permanent Redirect} to the same target over https on
        this port (nginx's C{return 308 https://$host$request_uri}); a body
        is read and dropped first.
    @cvar hsts: the C{Strict-Transport-Security} value added to responses
        on TLS listeners (unless the app server sent its own), or L{None}.
    """

    redirect_port = 0
    hsts: bytes | None = None

    def _redirecting(self) -> bool:
        return bool(self.redirect_port) and not self.isSecure()

    def gotLength(self, length: int | None) -> None:
        """
        Do not start proxying a request that will be redirected.
        """
        if self._redirecting():
            self.content = None
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        """
        Drop the body of a request that will be redirected.
        """
        if not self._redirecting():
            super().handleContentChunk(data)

    def process(self) -> None:
        """
        Redirect a plain request, or proxy it.
        """
        if self._redirecting():
            self._redirect()
        else:
            super().process()

    def write(self, data: bytes) -> None:
        """
        Add C{Strict-Transport-Security} to the headers of a TLS response.
        """
        if not self.startedWriting and self.hsts is not None and self.isSecure():
            headers = self.responseHeaders
            if not headers.hasHeader(b"strict-transport-security"):
                headers.setRawHeaders(b"Strict-Transport-Security", [self.hsts])
        super().write(data)

    def _redirect(self) -> None:
        self.site = self.channel.site
        host = self.getHeader(b"host") or b""
        match = _HOST.fullmatch(host)
        target = self.uri
        if target[:1] != b"/":
            # Absolute form (GET http://host/x): keep its path and query.
            path_start = target.find(b"/", target.find(b"//") + 2)
            target = target[path_start:] if path_start > 0 else b"/"
        if match is None:
            self.setResponseCode(400)
            body = b"Bad Request: no usable Host header to redirect to\n"
        else:
            port = b"" if self.redirect_port == 443 else b":%d" % self.redirect_port
            location = b"https://" + match.group(1) + port + target
            self.setResponseCode(308)
            self.setHeader(b"Location", location)
            body = b"Redirecting to " + location + b"\n"
        self.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        self.setHeader(b"Content-Length", b"%d" % len(body))
        self.write(body)
        self.finish()


def https_request_factory(redirect_port: int, hsts: int) -> type[ProxyRequest]:
    """
    The request class for a site with these HTTPS policies: plain
    L{ProxyRequest} (no cost per request) when both are off.

    @param redirect_port: see L{HTTPSRequest.redirect_port}.
    @param hsts: C{max-age} of C{Strict-Transport-Security} in seconds;
        0 for none.
    """
    if not redirect_port and not hsts:
        return ProxyRequest
    return type(
        "HTTPSRequest",
        (HTTPSRequest,),
        {
            "redirect_port": redirect_port,
            "hsts": b"max-age=%d" % hsts if hsts else None,
        },
    )
