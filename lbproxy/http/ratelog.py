# -*- test-case-name: tests.http.test_ratelog -*-
"""
Log lines about refused requests, at most one per second per reason.

A scan or a broken client can send thousands of bad requests a second; a
line for each would flood the log and cost more than refusing them.  The
first refusal for a reason is logged at once::

    refused a request from 10.0.0.5: 400 Bad Request: invalid header name

and the ones that follow within the interval are counted, then summed up in
one line when it ends (one line in the log)::

    refused 532 more requests in the last 1 s: 400 Bad Request: invalid
    header name (last from 10.0.0.5)

A reason with no refusal for a whole interval is forgotten, so that its
next refusal is again logged at once.  Every refusal is also counted by
its status (L{RateLimitedLog.counts}), for the admin's
C{lbproxy_refused_requests_total}: a dictionary increment, the only cost a
refusal adds.  nginx logs every refusal (at
C{info}); this is the Linux kernel's C{printk_ratelimit} ("N callbacks
suppressed"), kept per reason so that one kind of refusal cannot hide
another.
"""

from __future__ import annotations

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

__all__ = ["OTHER_REASONS", "RateLimitedLog"]

#: The reason under which refusals are counted once L{RateLimitedLog}
#: tracks as many reasons as it may (a bound on its memory, in case a
#: caller's reasons are not a small fixed set).
OTHER_REASONS = "other reasons"


class _Tally:
    """
    The refusals of one reason since its last line.
    """

    __slots__ = ("count", "peer", "timer")

    def __init__(self, timer: IDelayedCall) -> None:
        self.count = 0
        self.peer = ""
        self.timer = timer


class RateLimitedLog:
    """
    Logs refused requests at most once per C{interval} per reason, with a
    count.  One is shared by every client connection of a site (HTTP/1.1
    and HTTP/2 alike), so that a scan over many connections is summed up
    too.

    @ivar counts: refusals since start, by the status answered (400, 408,
        413, 414, 431 ...).
    """

    _log = Logger()

    def __init__(self, clock: IReactorTime, interval: float = 1.0, max_reasons: int = 100) -> None:
        """
        @param clock: what times the intervals.
        @param interval: seconds between two lines for one reason.
        @param max_reasons: most reasons counted at once; refusals for any
            further reason are counted under L{OTHER_REASONS}.
        """
        self._clock = clock
        self._interval = interval
        self._max_reasons = max_reasons
        self._tallies: dict[str, _Tally] = {}
        self.counts: dict[int, int] = {}

    def refused(self, reason: str, peer: str, status: int) -> None:
        """
        A request was refused: log it now if C{reason} was quiet for an
        interval, else count it for the summary at the interval's end.

        @param reason: why, in words, the same for every refusal of the
            kind (C{"400 Bad Request: invalid header name"}); never the
            client's bytes, which would make every refusal its own reason.
        @param peer: the client's address.
        @param status: the status answered (or that a reset stream would
            have had), for the counts.
        """
        counts = self.counts
        counts[status] = counts.get(status, 0) + 1
        self._log_refusal(reason, peer)

    def _log_refusal(self, reason: str, peer: str) -> None:
        tally = self._tallies.get(reason)
        if tally is None:
            if len(self._tallies) >= self._max_reasons and reason != OTHER_REASONS:
                self._log_refusal(OTHER_REASONS, peer)
                return
            timer = self._clock.callLater(self._interval, self._summarise, reason)
            self._tallies[reason] = _Tally(timer)
            self._log.info("refused a request from {peer}: {reason}", peer=peer, reason=reason)
            return
        tally.count += 1
        tally.peer = peer

    def flush(self) -> None:
        """
        Write the summaries due now and stop the timers (the site stops).
        """
        tallies, self._tallies = self._tallies, {}
        for reason, tally in tallies.items():
            if tally.timer.active():
                tally.timer.cancel()
            self._write(reason, tally)

    def _summarise(self, reason: str) -> None:
        """
        An interval of C{reason} ended: sum it up, or forget the reason if
        it was quiet.
        """
        tally = self._tallies[reason]
        if not tally.count:
            del self._tallies[reason]
            return
        self._write(reason, tally)
        tally.count = 0
        tally.timer = self._clock.callLater(self._interval, self._summarise, reason)

    def _write(self, reason: str, tally: _Tally) -> None:
        if tally.count:
            self._log.info(
                "refused {count} more {requests} in the last {seconds} s: {reason}"
                " (last from {peer})",
                count=tally.count,
                requests="request" if tally.count == 1 else "requests",
                seconds=f"{self._interval:g}",
                reason=reason,
                peer=tally.peer,
            )
