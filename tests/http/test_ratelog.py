"""
Tests for L{lbproxy.http.ratelog}: refusals logged at most once per second per
reason, with a count, on a L{Clock}.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from lbproxy.http.ratelog import OTHER_REASONS, RateLimitedLog

_BAD_NAME = "400 Bad Request: invalid header name"
_TOO_BIG = "413 Content Too Large: body larger than 10 bytes"


class RateLimitedLogTests(SynchronousTestCase):
    """
    L{RateLimitedLog} writes the first refusal of a reason at once and sums
    up the rest of each second in one line.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.log = RateLimitedLog(self.clock)
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def lines(self) -> list[str]:
        return [
            formatEvent(event)
            for event in self.events
            if event.get("log_namespace", "").startswith("lbproxy.http.ratelog")
        ]

    def test_burst(self) -> None:
        """
        1,000 refusals in one second: one line at once, one summary line
        with the count when the second is over, and nothing more.
        """
        for i in range(1000):
            self.log.refused(_BAD_NAME, f"10.0.0.{i % 7}", 400)
            self.clock.advance(0.0009)
        self.assertEqual(self.lines(), [f"refused a request from 10.0.0.0: {_BAD_NAME}"])
        self.clock.advance(1.0 - self.clock.seconds())
        self.assertEqual(
            self.lines()[1:],
            [f"refused 999 more requests in the last 1 s: {_BAD_NAME} (last from 10.0.0.5)"],
        )
        self.clock.advance(10)
        self.assertEqual(len(self.lines()), 2)

    def test_single(self) -> None:
        """
        One refusal is one line, with no summary after it.
        """
        self.log.refused(_BAD_NAME, "10.0.0.5", 400)
        self.clock.advance(5)
        self.assertEqual(self.lines(), [f"refused a request from 10.0.0.5: {_BAD_NAME}"])

    def test_steady_stream(self) -> None:
        """
        Refusals that keep coming give one line a second.
        """
        for _ in range(50):
            self.log.refused(_BAD_NAME, "10.0.0.5", 400)
            self.clock.advance(0.1)
        self.assertEqual(len(self.lines()), 1 + 4)
        self.assertIn("refused 10 more requests in the last 1 s", self.lines()[1])

    def test_quiet_reason_logged_at_once_again(self) -> None:
        """
        After a whole quiet interval, the next refusal of a reason is logged
        at once, as a first one.
        """
        self.log.refused(_BAD_NAME, "10.0.0.5", 400)
        self.clock.advance(1.0)
        self.clock.advance(0.5)
        self.log.refused(_BAD_NAME, "10.0.0.6", 400)
        self.assertEqual(
            self.lines(),
            [
                f"refused a request from 10.0.0.5: {_BAD_NAME}",
                f"refused a request from 10.0.0.6: {_BAD_NAME}",
            ],
        )

    def test_reasons_apart(self) -> None:
        """
        Each reason has its own first line and its own count.
        """
        for _ in range(3):
            self.log.refused(_BAD_NAME, "10.0.0.5", 400)
            self.log.refused(_TOO_BIG, "10.0.0.6", 413)
        self.clock.advance(1.0)
        self.assertEqual(
            self.lines(),
            [
                f"refused a request from 10.0.0.5: {_BAD_NAME}",
                f"refused a request from 10.0.0.6: {_TOO_BIG}",
                f"refused 2 more requests in the last 1 s: {_BAD_NAME} (last from 10.0.0.5)",
                f"refused 2 more requests in the last 1 s: {_TOO_BIG} (last from 10.0.0.6)",
            ],
        )

    def test_reasons_bounded(self) -> None:
        """
        Past the most reasons it tracks, refusals are counted under one
        catch-all reason, so memory and lines stay bounded.
        """
        log = RateLimitedLog(self.clock, max_reasons=2)
        for i in range(10):
            log.refused(f"reason {i}", "10.0.0.5", 400)
        self.clock.advance(1.0)
        self.assertEqual(
            self.lines(),
            [
                "refused a request from 10.0.0.5: reason 0",
                "refused a request from 10.0.0.5: reason 1",
                f"refused a request from 10.0.0.5: {OTHER_REASONS}",
                f"refused 7 more requests in the last 1 s: {OTHER_REASONS} (last from 10.0.0.5)",
            ],
        )

    def test_flush(self) -> None:
        """
        Flushing (the site stops) writes what is counted and leaves no timer.
        """
        self.log.refused(_BAD_NAME, "10.0.0.5", 400)
        self.log.refused(_BAD_NAME, "10.0.0.6", 400)
        self.log.flush()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(
            self.lines()[1:],
            [f"refused 1 more request in the last 1 s: {_BAD_NAME} (last from 10.0.0.6)"],
        )

    def test_counts_by_status(self) -> None:
        """
        Every refusal is counted by its status, those only summed up in the
        log included, and those past the most reasons tracked too.
        """
        log = RateLimitedLog(self.clock, max_reasons=1)
        for _ in range(3):
            log.refused(_BAD_NAME, "10.0.0.5", 400)
        log.refused(_TOO_BIG, "10.0.0.6", 413)
        log.refused("HTTP/2 408 Request Timeout: request body stalled for 60 s", "10.0.0.7", 408)
        self.assertEqual(log.counts, {400: 3, 413: 1, 408: 1})
