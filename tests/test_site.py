"""
Tests for L{lbproxy.site}: the access log line and the client channel.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from lbproxy.site import combined_log_line


class _FinishedRequest:
    """
    The parts of a finished request an access line reads.
    """

    def __init__(
        self, uri: bytes = b"/", headers: dict[bytes, bytes] | None = None, address: object = None
    ) -> None:
        self.method = b"GET"
        self.uri = uri
        self.clientproto = b"HTTP/1.1"
        self.code = 200
        self.sentLength = 9
        self.requestHeaders = Headers({k: [v] for k, v in (headers or {}).items()})
        self._address = address or IPv4Address("TCP", "10.0.0.7", 5555)

    def getClientAddress(self) -> object:
        return self._address


_TIME = "[25/Nov/2026:12:00:00 +0000]"


class CombinedLogLineTests(SynchronousTestCase):
    """
    L{combined_log_line} writes nginx's C{combined} format.
    """

    def test_plain(self) -> None:
        """
        Address unquoted, request line, status, bytes, referrer and agent
        quoted, as nginx writes them.
        """
        line = combined_log_line(
            _TIME,
            _FinishedRequest(headers={b"referer": b"http://r/", b"user-agent": b"curl/8"}),
        )
        self.assertEqual(
            line,
            '10.0.0.7 - - [25/Nov/2026:12:00:00 +0000] "GET / HTTP/1.1" 200 9 "http://r/" "curl/8"',
        )

    def test_missing_headers_are_dashes(self) -> None:
        """
        No Referer or User-Agent gives C{"-"} for each.
        """
        line = combined_log_line(_TIME, _FinishedRequest())
        self.assertTrue(line.endswith('200 9 "-" "-"'), line)

    def test_escapes(self) -> None:
        """
        Quotes, backslashes, control and non-ASCII bytes are written as
        C{\\xHH}, so a request cannot forge or break a log line.
        """
        line = combined_log_line(
            _TIME,
            _FinishedRequest(uri=b'/a"b\\c\n\xff', headers={b"user-agent": b'x" 200 1 "'}),
        )
        self.assertIn('"GET /a\\x22b\\x5Cc\\x0A\\xFF HTTP/1.1"', line)
        self.assertTrue(line.endswith('"x\\x22 200 1 \\x22"'), line)
        self.assertNotIn("\n", line)

    def test_unix_client(self) -> None:
        """
        A client on a UNIX socket is logged as C{-}.
        """
        line = combined_log_line(_TIME, _FinishedRequest(address=UNIXAddress(b"/run/lb.sock")))
        self.assertTrue(line.startswith("- - - ["), line)
