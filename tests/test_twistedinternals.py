"""
Tests for L{lbproxy.twistedinternals}: every private name of Twisted's that
lbproxy relies on is still there, so that a Twisted upgrade that changes
one fails here rather than in production.
"""

from __future__ import annotations

import importlib
import socket

from twisted.internet import reactor, tcp
from twisted.internet.endpoints import SSL4ServerEndpoint, serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from lbproxy.twistedinternals import (
    SUBCLASSED,
    listening_interface,
    parse_endpoint,
    reserve_spare_descriptor,
    send_now,
    set_ssl_context_factory,
    ssl_context_factory,
    unsent_bytes,
)
from tests.certs import CA


class SubclassedTests(SynchronousTestCase):
    """
    The private methods and attributes lbproxy's subclasses use exist.
    """

    def test_names_exist(self) -> None:
        """
        Each listed class has each listed name (as a class attribute, or
        set by its constructor's code).
        """
        for module, name, attributes in SUBCLASSED:
            cls = getattr(importlib.import_module(module), name)
            source = importlib.import_module(module).__file__ or ""
            with open(source, encoding="utf-8") as f:
                text = f.read()
            for attribute in attributes:
                self.assertTrue(
                    hasattr(cls, attribute) or f"self.{attribute}" in text,
                    f"{module}.{name}.{attribute} is gone",
                )


class SpareDescriptorTests(SynchronousTestCase):
    """
    L{reserve_spare_descriptor} reaches Twisted's reservation.
    """

    def test_reserved(self) -> None:
        """
        After it, Twisted's spare descriptor is held.
        """
        reserve_spare_descriptor()
        self.assertTrue(tcp._reservedFD.available())  # type: ignore[attr-defined]


class TransportInternalsTests(TestCase):
    """
    C{send_now} and C{unsent_bytes} read a TCP transport's write queue.
    """

    def test_send_now_and_unsent(self) -> None:
        """
        On a real TCP connection, C{send_now} sends at once when nothing is
        queued, and C{unsent_bytes} reads the queue (0 here); other
        transports just C{write}.
        """
        transport = StringTransport()
        send_now(transport, b"x")
        self.assertEqual(transport.value(), b"x")
        self.assertIsNone(unsent_bytes(transport))
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        self.addCleanup(server.close)
        connected: list[tcp.Client] = []

        class Client(Protocol):
            def connectionMade(self) -> None:
                connected.append(self.transport)  # type: ignore[arg-type]

        factory = Factory.forProtocol(Client)
        from twisted.internet.endpoints import TCP4ClientEndpoint

        d = TCP4ClientEndpoint(reactor, "127.0.0.1", server.getsockname()[1]).connect(factory)

        def check(protocol: Protocol) -> None:
            peer, _ = server.accept()
            self.addCleanup(peer.close)
            client = connected[0]
            self.assertEqual(unsent_bytes(client), 0)
            send_now(client, b"hello")
            self.assertEqual(peer.recv(5), b"hello")
            client.loseConnection()

        return d.addCallback(check)


class EndpointInternalsTests(SynchronousTestCase):
    """
    An C{ssl:} listener endpoint's context factory can be read and
    replaced, and a description split as Twisted's parser does.
    """

    def test_parse(self) -> None:
        """
        C{parse_endpoint} gives the positional and keyword arguments.
        """
        self.assertEqual(
            parse_endpoint("ssl:8443:privateKey=k.pem"), (["ssl", "8443"], {"privateKey": "k.pem"})
        )

    def test_listening_interface(self) -> None:
        """
        C{listening_interface} reads the interface of TCP endpoints (wrapped
        by C{haproxy:} too), C{""} for all; L{None} for other kinds.
        """
        cases = {
            "tcp:0": "",
            "tcp:0:interface=127.0.0.1": "127.0.0.1",
            "tcp6:0:interface=\\:\\:1": "::1",
            "haproxy:tcp:0:interface=127.0.0.2": "127.0.0.2",
            "unix:/nonexistent/admin.sock": None,
        }
        for description, interface in cases.items():
            endpoint = serverFromString(reactor, description)
            self.assertEqual(listening_interface(endpoint), interface, description)

    def test_ssl_context_factory(self) -> None:
        """
        The context factory of an C{ssl:} endpoint is there, and a new one
        takes its place.
        """
        directory = self.mktemp()
        import os

        os.makedirs(directory)
        key, cert = CA().issue("localhost").write_split(directory, "server")
        endpoint = serverFromString(reactor, f"ssl:0:privateKey={key}:certKey={cert}")
        assert isinstance(endpoint, SSL4ServerEndpoint)
        original = ssl_context_factory(endpoint)
        self.assertTrue(hasattr(original, "getContext"))
        replacement = object()
        set_ssl_context_factory(endpoint, replacement)
        self.assertIs(ssl_context_factory(endpoint), replacement)
