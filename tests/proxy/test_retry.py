"""
Tests for L{lbproxy.proxy.retry}: what follows a failed attempt.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from lbproxy.errors import (
    ConnectFailed,
    InternalError,
    InvalidResponse,
    ReadTimeout,
    ResponseTruncated,
    StaleConnection,
    UpstreamError,
)
from lbproxy.proxy.retry import Next, after_failure


def _decide(error: UpstreamError, **settings: object) -> Next:
    arguments: dict[str, object] = {
        "answer_started": False,
        "method": b"GET",
        "body_sent": False,
        "resent": False,
    }
    arguments.update(settings)
    return after_failure(error, **arguments)  # type: ignore[arg-type]


class AfterFailureTests(SynchronousTestCase):
    """
    L{after_failure} decides from the failure kind and the exchange's past.
    """

    def test_connect_failed(self) -> None:
        """
        Nothing reached the server: the next server, for every method.
        """
        for method in (b"GET", b"POST", b"PATCH"):
            self.assertIs(_decide(ConnectFailed("x"), method=method), Next.NEXT_SERVER)

    def test_stale(self) -> None:
        """
        A stale pooled connection: an idempotent request without a body
        sent goes again on a fresh connection, once.
        """
        stale = StaleConnection("x")
        self.assertIs(_decide(stale), Next.FRESH_CONNECTION)
        self.assertIs(_decide(stale, method=b"PUT"), Next.FRESH_CONNECTION)
        self.assertIs(_decide(stale, resent=True), Next.BAD_GATEWAY)
        self.assertIs(_decide(stale, method=b"POST"), Next.BAD_GATEWAY)
        self.assertIs(_decide(stale, method=b"PUT", body_sent=True), Next.BAD_GATEWAY)

    def test_timeout(self) -> None:
        """
        The read timeout: 504.
        """
        self.assertIs(_decide(ReadTimeout("x")), Next.GATEWAY_TIMEOUT)

    def test_others(self) -> None:
        """
        Invalid, truncated or internal failures before the answer: 502.
        """
        for error in (InvalidResponse("x"), ResponseTruncated("x"), InternalError("x")):
            self.assertIs(_decide(error), Next.BAD_GATEWAY)

    def test_answer_started(self) -> None:
        """
        After the answer began, any failure resets the client.
        """
        for error in (ConnectFailed("x"), StaleConnection("x"), ReadTimeout("x")):
            self.assertIs(_decide(error, answer_started=True), Next.ABORT_CLIENT)
