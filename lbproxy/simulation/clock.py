# -*- test-case-name: tests.simulation.test_clock -*-
"""
A virtual clock on a heap: L{VirtualClock}, an C{IReactorTime} that runs
its calls in time order as fast as they can run.

Written by hand because L{twisted.internet.task.Clock} sorts its whole
list of calls on every C{callLater} (and scans it on every C{advance}):
fine for a test with a few calls, O(n log n) per call for a simulation
with thousands in flight and millions in all.  Here a call costs a push
and a pop on a binary heap (O(log n)); cancelled and rescheduled calls
stay in the heap and are skipped when they come up, rather than being
searched for.

Besides C{IReactorTime}, L{VirtualClock.at} schedules a plain function
without making an C{IDelayedCall}: the simulator's per-request path,
where nothing is ever cancelled.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.error import AlreadyCalled, AlreadyCancelled
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from zope.interface import implementer

__all__ = ["VirtualCall", "VirtualClock"]


@implementer(IDelayedCall)
class VirtualCall:
    """
    A call scheduled on a L{VirtualClock} with C{callLater}.
    """

    __slots__ = ("_clock", "_time", "_entry", "_function", "_args", "_kwargs", "_state")

    def __init__(
        self,
        clock: VirtualClock,
        time: float,
        function: Callable[..., object],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self._clock = clock
        self._time = time
        self._entry = 0
        self._function = function
        self._args = args
        self._kwargs = kwargs
        # "pending", "called" or "cancelled".
        self._state = "pending"

    def __repr__(self) -> str:
        return f"<VirtualCall {self._function!r} at {self._time} {self._state}>"

    def getTime(self) -> float:
        """
        When it is due, in the clock's seconds.
        """
        return self._time

    def cancel(self) -> None:
        """
        Do not call it.

        @raise AlreadyCancelled: if it was cancelled.
        @raise AlreadyCalled: if it ran.
        """
        self._check()
        self._state = "cancelled"
        self._clock._forget(self)

    def delay(self, secondsLater: float) -> None:
        """
        Make it due C{secondsLater} later than it was.
        """
        self._check()
        self._time += secondsLater
        self._clock._push(self)

    def reset(self, secondsFromNow: float) -> None:
        """
        Make it due C{secondsFromNow} after the clock's present.
        """
        self._check()
        self._time = self._clock.seconds() + secondsFromNow
        self._clock._push(self)

    def active(self) -> bool:
        """
        Whether it is still to be called.
        """
        return self._state == "pending"

    def _check(self) -> None:
        if self._state == "cancelled":
            raise AlreadyCancelled(self)
        if self._state == "called":
            raise AlreadyCalled(self)

    def _fire(self, entry: int) -> None:
        """
        Run it, if C{entry} is its current place in the heap (an older
        one, left by C{delay} or C{reset}, is skipped) and it is pending.
        """
        if entry != self._entry or self._state != "pending":
            return
        self._state = "called"
        self._clock._forget(self)
        self._function(*self._args, **self._kwargs)


@implementer(IReactorTime)
class VirtualClock:
    """
    Virtual time, from 0: calls run in the order of their times (ties in
    the order they were scheduled), each seeing C{seconds()} equal to its
    time.
    """

    def __init__(self) -> None:
        self._now = 0.0
        # Entries are (time, sequence, function, argument): the sequence
        # is unique, so comparisons never reach the function.
        self._heap: list[tuple[float, int, Callable[[Any], object], Any]] = []
        self._sequence = itertools.count()
        self._pending: dict[VirtualCall, None] = {}

    def seconds(self) -> float:
        """
        The present, in virtual seconds.
        """
        return self._now

    def callLater(
        self, delay: float, callable: Callable[..., Any], *args: object, **kwargs: object
    ) -> IDelayedCall:
        """
        Call C{callable(*args, **kwargs)} C{delay} seconds from now.
        """
        call = VirtualCall(self, self._now + delay, callable, args, kwargs)
        self._pending[call] = None
        self._push(call)
        return call

    def getDelayedCalls(self) -> list[IDelayedCall]:
        """
        The calls scheduled with C{callLater} and still pending.
        """
        return list(self._pending)

    def at(self, when: float, function: Callable[[Any], object], argument: Any) -> None:
        """
        Call C{function(argument)} at C{when} (not before now): the lean
        path, with no C{IDelayedCall} to cancel.
        """
        heapq.heappush(self._heap, (when, next(self._sequence), function, argument))

    def advance(self, amount: float) -> None:
        """
        Run every call due within C{amount} seconds, then move the present
        C{amount} on (as L{twisted.internet.task.Clock.advance}, but each
        call sees its own time).
        """
        end = self._now + amount
        self.run(end)
        self._now = end

    def run(self, until: float = float("inf")) -> None:
        """
        Run calls in time order until none is left or the next is due
        after C{until}.
        """
        heap = self._heap
        pop = heapq.heappop
        while heap:
            if heap[0][0] > until:
                return
            when, _, function, argument = pop(heap)
            self._now = when
            function(argument)

    def run_merged(self, times: Sequence[float], function: Callable[[int], object]) -> None:
        """
        Run calls in time order until none is left, and, among them,
        C{function(i)} at C{times[i]} for each C{i} (C{times} ascending;
        at a tie, before the calls due then).

        The stream is merged in rather than scheduled: a simulated
        request's arrival then costs no heap push and pop.
        """
        heap = self._heap
        pop = heapq.heappop
        count = len(times)
        index = 0
        upcoming = times[0] if count else math.inf
        while True:
            if heap and heap[0][0] < upcoming:
                when, _, call, argument = pop(heap)
                self._now = when
                call(argument)
            elif index < count:
                self._now = upcoming
                function(index)
                index += 1
                upcoming = times[index] if index < count else math.inf
            else:
                return

    def _push(self, call: VirtualCall) -> None:
        entry = next(self._sequence)
        call._entry = entry
        heapq.heappush(self._heap, (call._time, entry, call._fire, entry))

    def _forget(self, call: VirtualCall) -> None:
        self._pending.pop(call, None)
