"""
Tests for L{lbproxy.simulation.clock}: the heap clock keeps the
C{IReactorTime} and C{IDelayedCall} contracts that Twisted's code (a
L{LoopingCall}, a Deferred's timeout) relies on.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.error import AlreadyCalled, AlreadyCancelled
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from lbproxy.simulation.clock import VirtualClock


class ContractTests(SynchronousTestCase):
    """
    L{VirtualClock} is an L{IReactorTime}; its calls are L{IDelayedCall}s.
    """

    def setUp(self) -> None:
        self.clock = VirtualClock()
        self.calls: list[tuple[str, float]] = []

    def record(self, name: str) -> None:
        self.calls.append((name, self.clock.seconds()))

    def test_interfaces(self) -> None:
        """
        The clock and its calls provide the interfaces fully.
        """
        self.assertTrue(verifyObject(IReactorTime, self.clock))
        self.assertTrue(verifyObject(IDelayedCall, self.clock.callLater(1, self.record, "a")))

    def test_order(self) -> None:
        """
        Calls run in time order, ties in the order scheduled, each seeing
        its own time; C{advance} then sets the present.
        """
        self.clock.callLater(2, self.record, "b")
        self.clock.callLater(1, self.record, "a")
        self.clock.callLater(2, self.record, "c")
        self.clock.callLater(5, self.record, "late")
        self.clock.advance(3)
        self.assertEqual(self.calls, [("a", 1.0), ("b", 2.0), ("c", 2.0)])
        self.assertEqual(self.clock.seconds(), 3.0)

    def test_arguments(self) -> None:
        """
        Positional and keyword arguments reach the call.
        """
        seen = []
        self.clock.callLater(0, lambda *a, **k: seen.append((a, k)), 1, 2, x=3)
        self.clock.advance(0)
        self.assertEqual(seen, [((1, 2), {"x": 3})])

    def test_cancel(self) -> None:
        """
        A cancelled call does not run and is not listed; cancelling it
        again raises L{AlreadyCancelled}.
        """
        call = self.clock.callLater(1, self.record, "a")
        call.cancel()
        self.clock.advance(2)
        self.assertEqual(self.calls, [])
        self.assertFalse(call.active())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertRaises(AlreadyCancelled, call.cancel)

    def test_called(self) -> None:
        """
        A call that ran is not active; cancelling, delaying or resetting
        it raises L{AlreadyCalled}.
        """
        call = self.clock.callLater(1, self.record, "a")
        self.clock.advance(1)
        self.assertFalse(call.active())
        self.assertRaises(AlreadyCalled, call.cancel)
        self.assertRaises(AlreadyCalled, call.delay, 1)
        self.assertRaises(AlreadyCalled, call.reset, 1)

    def test_reset(self) -> None:
        """
        C{reset} moves a call to that long from now, once (its old time
        passes without it).
        """
        call = self.clock.callLater(1, self.record, "a")
        self.clock.advance(0.5)
        call.reset(2)
        self.assertEqual(call.getTime(), 2.5)
        self.clock.advance(10)
        self.assertEqual(self.calls, [("a", 2.5)])

    def test_delay(self) -> None:
        """
        C{delay} moves a call later by that much, once.
        """
        call = self.clock.callLater(1, self.record, "a")
        call.delay(2)
        self.clock.advance(10)
        self.assertEqual(self.calls, [("a", 3.0)])

    def test_delayed_calls(self) -> None:
        """
        C{getDelayedCalls} lists the pending calls made with C{callLater}.
        """
        first = self.clock.callLater(1, self.record, "a")
        second = self.clock.callLater(2, self.record, "b")
        self.assertEqual(set(self.clock.getDelayedCalls()), {first, second})
        self.clock.advance(1)
        self.assertEqual(self.clock.getDelayedCalls(), [second])

    def test_looping_call(self) -> None:
        """
        A L{LoopingCall} runs on it (as the health checker's do).
        """
        loop = LoopingCall(self.record, "tick")
        loop.clock = self.clock
        loop.start(2, now=True)
        self.clock.advance(5)
        loop.stop()
        self.assertEqual(self.calls, [("tick", 0.0), ("tick", 2.0), ("tick", 4.0)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_timeout(self) -> None:
        """
        A Deferred's C{addTimeout} on it fires at the virtual time.
        """
        waiting: Deferred[None] = Deferred()
        waiting.addTimeout(3, self.clock)
        self.clock.advance(2.9)
        self.assertNoResult(waiting)
        self.clock.advance(0.1)
        self.failureResultOf(waiting)


class MergedTests(SynchronousTestCase):
    """
    L{VirtualClock.run_merged} runs a stream of times among the calls.
    """

    def test_merged(self) -> None:
        """
        The stream's entries run at their times among the calls (before a
        call due at the same time), calls they schedule included, until
        nothing is left.
        """
        clock = VirtualClock()
        seen: list[tuple[str, float]] = []

        def arrive(index: int) -> None:
            seen.append((f"arrival {index}", clock.seconds()))
            clock.at(
                clock.seconds() + 1.5, lambda i: seen.append((f"done {i}", clock.seconds())), index
            )

        clock.callLater(1.0, lambda: seen.append(("call", clock.seconds())))
        clock.run_merged([0.0, 1.0, 4.0], arrive)
        self.assertEqual(
            seen,
            [
                ("arrival 0", 0.0),
                ("arrival 1", 1.0),
                ("call", 1.0),
                ("done 0", 1.5),
                ("done 1", 2.5),
                ("arrival 2", 4.0),
                ("done 2", 5.5),
            ],
        )
