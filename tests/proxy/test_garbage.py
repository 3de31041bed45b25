"""
A proxied request leaves no reference cycle: its objects are freed by
reference counting as soon as it is over, not by Python's cyclic garbage
collector, whose full collections walk every live object and stalled the
reactor for tens of milliseconds per collection at c=1024 (1,024 clients in
flight; bench/RESULTS.md).
"""

from __future__ import annotations

import gc
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.support import get, start_app, start_proxy

#: lbproxy's per-request objects: none of them may be left to the collector.
_PER_REQUEST = {"HTTP11Request", "ProxyExchange", "ExchangeRecord", "UpstreamRequest"}


class NoCycleTests(TestCase):
    """
    Requests through the whole proxy, over loopback, with the collector off;
    then a collection that keeps what it finds (C{DEBUG_SAVEALL}) finds
    none of a request's objects.
    """

    def setUp(self) -> None:
        self.addCleanup(gc.enable)
        self.addCleanup(gc.set_debug, 0)
        self.addCleanup(gc.garbage.clear)

    def _cyclic_garbage(self) -> dict[str, int]:
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        gc.set_debug(0)
        found: dict[str, int] = {}
        for each in gc.garbage:
            name = type(each).__name__
            if name in _PER_REQUEST:
                found[name] = found.get(name, 0) + 1
        gc.garbage.clear()
        return found

    @inlineCallbacks
    def test_answered_requests(self) -> Any:
        """
        Answered GETs (the connection to the app server pooled between
        them) leave nothing for the collector.
        """
        _, _, app_port = start_app(self, "A")
        proxy_port, _, _ = start_proxy(self, [app_port])
        answer = yield get(proxy_port)  # warm: the pool's first connection
        self.assertEqual(answer.status, 200)
        gc.collect()
        gc.disable()
        for _ in range(3):
            answer = yield get(proxy_port)
            self.assertEqual(answer.status, 200)
        self.assertEqual(self._cyclic_garbage(), {})
