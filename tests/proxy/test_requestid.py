"""
Tests for L{lbproxy.proxy.requestid}: which ids are kept, and new ones.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from lbproxy.proxy.requestid import new_request_id, request_id_for


class RequestIdForTests(SynchronousTestCase):
    """
    L{request_id_for} keeps a valid client id and replaces anything else.
    """

    def test_valid_kept(self) -> None:
        """
        1 to 128 letters, digits and C{._:-} are kept as sent: a UUID, a
        ULID, another lbproxy's id.
        """
        for sent in (
            b"a",
            b"3f2b8c1e-0d4a-4b8e-9c1a-7e5f0a2b4c6d",
            b"01ARZ3NDEKTSV4RRFFQ69G5FAV",
            b"lb1:req.42_x",
            b"x" * 128,
        ):
            self.assertEqual(request_id_for(sent), sent)

    def test_invalid_replaced(self) -> None:
        """
        None, empty, too long, or with other bytes (spaces, quotes, a
        newline that would forge a log line): a new id.
        """
        for sent in (None, b"", b"x" * 129, b"a b", b'a"b', b"a\nb", b"\xc3\xa9", b"a/b"):
            new = request_id_for(sent)
            self.assertNotEqual(new, sent)
            self.assertRegex(new, rb"^[0-9a-f]{24}$")


class NewRequestIdTests(SynchronousTestCase):
    """
    L{new_request_id} is a per-process random prefix and a counter.
    """

    def test_shape(self) -> None:
        """
        Two ids in a row share the 16-digit prefix and count up by one.
        """
        first, second = new_request_id(), new_request_id()
        self.assertEqual(first[:16], second[:16])
        self.assertEqual(int(second[16:], 16), int(first[16:], 16) + 1)

    def test_forked_child_has_its_own_prefix(self) -> None:
        """
        A forked child (a worker) draws its own prefix, so that two workers
        never give the same id.
        """
        parent = new_request_id()
        reading, writing = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child)
            try:
                os.write(writing, new_request_id())
            finally:
                os._exit(0)
        os.close(writing)
        child = os.read(reading, 100)
        os.close(reading)
        os.waitpid(pid, 0)
        self.assertEqual(len(child), 24)
        self.assertNotEqual(child[:16], parent[:16])
