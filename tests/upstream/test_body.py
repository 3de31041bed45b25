"""
Tests for L{lbproxy.upstream.body.StreamingBody}: a request body relayed as it
arrives, with backpressure both ways, driven with fake transports.
"""

from __future__ import annotations

from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from lbproxy.upstream.body import PENDING_LIMIT, StreamingBody


class StreamingBodyTests(SynchronousTestCase):
    """
    L{StreamingBody} moves bytes from the client to the upstream transport
    and holds the client back when the upstream cannot keep up.
    """

    def setUp(self) -> None:
        self.client = StringTransport()
        self.upstream = StringTransport()

    def test_interface(self) -> None:
        """
        It is a push producer (the upstream transport pauses it).
        """
        self.assertTrue(verifyObject(IPushProducer, StreamingBody(self.client, 3)))

    def test_pending_until_attached(self) -> None:
        """
        Pieces that arrive before the upstream connection exists are kept
        and sent, in order, when it is attached; the rest follow at once.
        """
        body = StreamingBody(self.client, 9)
        body.feed(b"abc")
        body.feed(b"def")
        self.assertEqual(self.upstream.value(), b"")
        body.attach(self.upstream)
        self.assertEqual(self.upstream.value(), b"abcdef")
        body.feed(b"ghi")
        self.assertEqual(self.upstream.value(), b"abcdefghi")
        self.assertFalse(body.complete)
        body.end()
        self.assertTrue(body.complete)
        self.assertIsNone(self.upstream.producer)

    def test_chunked(self) -> None:
        """
        A body without a length is sent upstream chunked, ending with the
        last chunk.
        """
        body = StreamingBody(self.client, None)
        self.assertEqual(body.framing_header, (b"Transfer-Encoding", b"chunked"))
        body.attach(self.upstream)
        body.feed(b"hello")
        body.feed(b"")
        body.feed(b" world!")
        body.end()
        self.assertEqual(self.upstream.value(), b"5\r\nhello\r\n7\r\n world!\r\n0\r\n\r\n")

    def test_framing_header_with_length(self) -> None:
        """
        A body with a length keeps its Content-Length.
        """
        self.assertEqual(
            StreamingBody(self.client, 1234).framing_header, (b"Content-Length", b"1234")
        )

    def test_client_paused_while_pending_grows(self) -> None:
        """
        More than L{PENDING_LIMIT} bytes waiting for a connection pause the
        client; attaching resumes it.
        """
        body = StreamingBody(self.client, 10 * PENDING_LIMIT)
        body.feed(b"x" * PENDING_LIMIT)
        self.assertEqual(self.client.producerState, "producing")
        body.feed(b"x")
        self.assertEqual(self.client.producerState, "paused")
        body.attach(self.upstream)
        self.assertEqual(self.client.producerState, "producing")
        self.assertEqual(len(self.upstream.value()), PENDING_LIMIT + 1)

    def test_upstream_backpressure_pauses_client(self) -> None:
        """
        When the upstream transport pauses the body (the app server reads
        slowly), reading from the client stops until it resumes.
        """
        body = StreamingBody(self.client, 100)
        body.attach(self.upstream)
        self.assertIs(self.upstream.producer, body)
        self.upstream.producer.pauseProducing()
        self.assertEqual(self.client.producerState, "paused")
        self.upstream.producer.resumeProducing()
        self.assertEqual(self.client.producerState, "producing")

    def test_release_keeps_pending(self) -> None:
        """
        An attempt that wrote nothing (the body had not started) releases
        the body for the next server without losing anything.
        """
        body = StreamingBody(self.client, 6)
        body.feed(b"abc")
        self.assertFalse(body.sent_any)
        body.release()
        body.attach(self.upstream)
        body.feed(b"def")
        self.assertEqual(self.upstream.value(), b"abcdef")
        self.assertTrue(body.sent_any)

    def test_detach_discards_and_resumes(self) -> None:
        """
        Once detached (the exchange is over), the rest of the body is
        dropped and the client is not left paused.
        """
        body = StreamingBody(self.client, 100)
        body.attach(self.upstream)
        body.pauseProducing()
        body.detach()
        self.assertEqual(self.client.producerState, "producing")
        self.assertIsNone(self.upstream.producer)
        body.feed(b"more")
        self.assertEqual(self.upstream.value(), b"")


class _WrappingConsumer(StringTransport):
    """
    A transport that registers a wrapper of its producer, as Twisted's TLS
    transport registers a C{_ProducerMembrane} with the TCP transport
    below it: its C{producer} is never the body itself.
    """

    def registerProducer(self, producer, streaming):
        super().registerProducer(_Wrapper(producer), streaming)


class _Wrapper:
    def __init__(self, producer):
        self.producer = producer


class WrappedProducerTests(SynchronousTestCase):
    """
    A body unregisters itself from a transport that wrapped it.
    """

    def test_unregistered_through_a_wrapper(self) -> None:
        """
        Once the whole body is sent, the transport has no producer, so the
        (pooled) connection can take the next request's body.
        """
        upstream = _WrappingConsumer()
        body = StreamingBody(StringTransport(), 3)
        body.attach(upstream)
        body.feed(b"abc")
        body.end()
        self.assertIsNone(upstream.producer)
        StreamingBody(StringTransport(), 3).attach(upstream)

    def test_detached_through_a_wrapper(self) -> None:
        """
        A body detached before it was complete (an early answer) is
        unregistered too.
        """
        upstream = _WrappingConsumer()
        body = StreamingBody(StringTransport(), 3)
        body.attach(upstream)
        body.detach()
        self.assertIsNone(upstream.producer)
