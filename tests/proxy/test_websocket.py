"""
Integration tests of tunnels: lbproxy, started as twistd starts it,
between real WebSocket clients and app servers (the websockets library's
threaded implementation, each in threads of its own) or raw sockets, all on
loopback with ports the system chooses.

Threads block on sockets with deadlines (C{recv(timeout=...)}, joins with a
timeout); the test waits for what they return, never for a fixed time.
"""

from __future__ import annotations

import hashlib
import os
import queue
import socket
import ssl
import threading
from typing import Any

from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from lbproxy.config.file import load_config
from lbproxy.tap import make_proxy_service
from lbproxy.tools.corpus import CASES
from tests.certs import CA
from tests.support import get, listen, parse_responses, raw_request, start_app, start_proxy

try:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect
    from websockets.sync.server import ServerConnection, serve
except ImportError:  # the floors' run installs lbproxy without its test extra
    NO_WEBSOCKETS: str | None = "websockets is not installed (pip install '.[test]')"
else:
    NO_WEBSOCKETS = None

#: Seconds any one blocking step of a thread may take.
DEADLINE = 10.0

_MIB = 1024 * 1024


class EchoApp:
    """
    A WebSocket app server on loopback, run by the websockets library in a
    thread of its own: it echoes every message, and C{"close N"} makes it
    close with code N.

    @ivar closes: C{(code, reason)} of each connection's close, as the app
        saw it, in order.
    @ivar paths: the path each connection asked for.
    """

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.closes: queue.Queue[tuple[int | None, str | None]] = queue.Queue()
        self.paths: list[str] = []
        self.server = serve(
            self._handle, "127.0.0.1", 0, max_size=None, compression=None, ssl=ssl_context
        )
        self.port: int = self.server.socket.getsockname()[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="echo app")
        self._thread.start()

    def _handle(self, websocket: ServerConnection) -> None:
        assert websocket.request is not None
        self.paths.append(websocket.request.path)
        try:
            for message in websocket:
                if isinstance(message, str) and message.startswith("close "):
                    websocket.close(int(message[6:]), "app bye")
                else:
                    websocket.send(message)
        except ConnectionClosed:
            pass
        finally:
            self.closes.put((websocket.close_code, websocket.close_reason))

    def next_close(self) -> Deferred[tuple[int | None, str | None]]:
        """
        The next connection's close, once the app saw it.
        """
        return threads.deferToThread(self.closes.get, timeout=DEADLINE)

    def stop(self) -> Deferred[None]:
        """
        Stop listening, close what is open (off the reactor thread: the
        close handshakes go through lbproxy) and join the thread.
        """

        def shut_down() -> None:
            self.server.shutdown()
            self._thread.join(DEADLINE)
            if self._thread.is_alive():
                raise AssertionError("the echo app did not stop")

        return threads.deferToThread(shut_down)


def _config(servers: list[str], extra: str, listen: str) -> str:
    addresses = ", ".join(f'"{server}"' for server in servers)
    return (
        f'listen = ["{listen}"]\n{extra}\n'
        f"[upstream.web]\nservers = [{addresses}]\nhealth-check = false\n"
    )


class _ServiceTestCase(TestCase):
    """
    lbproxy's service on a configuration file, as twistd runs it (so that
    reload and stop are the real ones).
    """

    listen = "tcp:0:interface=127.0.0.1"
    drain = 1.0

    @inlineCallbacks
    def start_service(self, servers: list[str], extra: str = "", stop: bool = True) -> Any:
        """
        Start the service over C{servers}, listening on C{self.listen} and
        logging to C{self.access_log}.

        @param extra: top-level lines of the configuration file.
        @param stop: stop it on cleanup.
        @return: (fires with) the service and its port.
        """
        self.path = self.mktemp()
        self.access_log = self.mktemp()
        self.write_config(servers, extra)
        service, _ = make_proxy_service(load_config(self.path), reactor, self.path)
        service.startService()
        if stop:
            self.addCleanup(service.stopService)
        ports = yield service.listening_ports()
        return service, ports[0].getHost().port

    def write_config(self, servers: list[str], extra: str = "") -> None:
        """
        (Re)write the configuration file.
        """
        with open(self.path, "w") as f:
            f.write(
                _config(
                    servers,
                    f'access-log = "{self.access_log}"\ndrain-timeout = {self.drain}\n{extra}',
                    self.listen,
                )
            )

    def echo_app(self, ssl_context: ssl.SSLContext | None = None) -> EchoApp:
        """
        An L{EchoApp}, stopped on cleanup (after the service).
        """
        app = EchoApp(ssl_context)
        self.addCleanup(app.stop)
        return app

    def access_lines(self, service: Any) -> list[str]:
        """
        The access log's lines so far.
        """
        service.site.access_log.flush()
        with open(self.access_log) as f:
            return f.read().splitlines()


class WebSocketTests(_ServiceTestCase):
    """
    WebSocket conversations through lbproxy, end to end.
    """

    skip = NO_WEBSOCKETS

    @inlineCallbacks
    def test_echo_many_small_and_one_big(self):
        """
        Two hundred small messages and a 1 MiB one come back whole and in
        order; once the client closed, the tunnel's access line says 101,
        the bytes each way and how long it was open.
        """
        app = self.echo_app()
        service, port = yield self.start_service([f"127.0.0.1:{app.port}"])
        big = os.urandom(_MIB)

        def conversation() -> list[Any]:
            with connect(f"ws://127.0.0.1:{port}/chat", max_size=None, compression=None) as ws:
                got: list[Any] = []
                for i in range(200):
                    ws.send(f"message {i}")
                    got.append(ws.recv(timeout=DEADLINE))
                ws.send(big)
                got.append(ws.recv(timeout=DEADLINE))
                return got

        got = yield threads.deferToThread(conversation)
        self.assertEqual(got[:200], [f"message {i}" for i in range(200)])
        self.assertEqual(got[200], big)
        yield service.resource.drained()
        [line] = self.access_lines(service)
        self.assertIn('"GET /chat HTTP/1.1" 101 ', line)
        sent = int(line.split('" 101 ', 1)[1].split(" ", 1)[0])
        uploaded = int(line.rsplit("bytes_uploaded=", 1)[1])
        self.assertGreater(sent, _MIB)
        self.assertGreater(uploaded, _MIB)
        self.assertRegex(line, r" duration=\d+\.\d{3} bytes_uploaded=")

    @inlineCallbacks
    def test_close_codes(self):
        """
        A close code and reason pass through either way: the client's to
        the app, the app's to the client.
        """
        app = self.echo_app()
        _, port = yield self.start_service([f"127.0.0.1:{app.port}"])

        def client_closes() -> None:
            with connect(f"ws://127.0.0.1:{port}/a") as ws:
                ws.send("hi")
                ws.recv(timeout=DEADLINE)
                ws.close(4001, "client bye")

        yield threads.deferToThread(client_closes)
        self.assertEqual((yield app.next_close()), (4001, "client bye"))

        def app_closes() -> tuple[int | None, str | None]:
            with connect(f"ws://127.0.0.1:{port}/b") as ws:
                ws.send("close 4002")
                try:
                    ws.recv(timeout=DEADLINE)
                except ConnectionClosed:
                    return ws.close_code, ws.close_reason
                raise AssertionError("the app did not close")

        self.assertEqual((yield threads.deferToThread(app_closes)), (4002, "app bye"))

    @inlineCallbacks
    def test_reload_keeps_the_tunnel(self):
        """
        A conversation of a thousand messages loses none across a reload
        (SIGHUP's) in its middle, even one that removes its server and
        shortens the tunnel timeout; then a 1 MiB message comes back.  New
        requests go where the new configuration says.
        """
        app = self.echo_app()
        _, _, port_b = start_app(self, "B")
        service, port = yield self.start_service([f"127.0.0.1:{app.port}"])

        def reload() -> Deferred[bool]:
            self.write_config([f"127.0.0.1:{port_b}"], "tunnel-timeout = 0.5")
            return service.reload()

        big = os.urandom(_MIB)

        def conversation() -> tuple[list[Any], bool]:
            reloaded = False
            with connect(f"ws://127.0.0.1:{port}/chat", max_size=None) as ws:
                got: list[Any] = []
                for i in range(1000):
                    if i == 500:
                        reloaded = threads.blockingCallFromThread(reactor, reload)
                    ws.send(f"message {i}")
                    got.append(ws.recv(timeout=DEADLINE))
                ws.send(big)
                got.append(ws.recv(timeout=DEADLINE))
                return got, reloaded

        got, reloaded = yield threads.deferToThread(conversation)
        self.assertTrue(reloaded)
        self.assertEqual(got[:1000], [f"message {i}" for i in range(1000)])
        self.assertEqual(got[1000], big)
        self.assertEqual(app.paths, ["/chat"])
        response = yield get(port)
        self.assertEqual(response.body, b"PORT B")

    @inlineCallbacks
    def test_stop_drains_then_closes(self):
        """
        On stop a tunnel keeps working for the drain timeout, then both its
        connections are closed, its access line is written, and the stop
        completes.
        """
        app = self.echo_app()
        self.drain = 0.5
        service, port = yield self.start_service([f"127.0.0.1:{app.port}"], stop=False)
        stopping: list[Deferred[None]] = []

        def stop() -> None:
            stopping.append(service.stopService())

        def conversation() -> tuple[Any, Any]:
            with connect(f"ws://127.0.0.1:{port}/chat") as ws:
                ws.send("before")
                ws.recv(timeout=DEADLINE)
                threads.blockingCallFromThread(reactor, stop)
                ws.send("during the drain")
                during = ws.recv(timeout=DEADLINE)
                try:
                    ws.recv(timeout=DEADLINE)
                except ConnectionClosed as e:
                    return during, e
                raise AssertionError("the tunnel was not closed")

        during, closed = yield threads.deferToThread(conversation)
        self.assertEqual(during, "during the drain")
        # Aborted: no close frame came (1006).
        self.assertIsNone(closed.rcvd)
        yield stopping[0]
        self.assertEqual(service.resource.in_flight, 0)
        # The log was closed by the stop: its file has every line.
        with open(self.access_log) as f:
            [line] = f.read().splitlines()
        self.assertIn('"GET /chat HTTP/1.1" 101 ', line)
        code, _ = yield app.next_close()
        self.assertEqual(code, 1006)

    @inlineCallbacks
    def test_over_tls_both_ways(self):
        """
        A wss client through a TLS listener to an https app server: the
        conversation and its close pass through.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        ca = CA()
        ca_path = ca.write(directory)
        key_path, cert_path = ca.issue("localhost", "127.0.0.1").write_split(directory, "server")
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_context.load_cert_chain(cert_path, key_path)
        app = self.echo_app(server_context)
        self.listen = f"ssl:0:interface=127.0.0.1:privateKey={key_path}:certKey={cert_path}"
        service, tls_port = yield self.start_service(
            [f"https://127.0.0.1:{app.port}"], f'upstream-ca = "{ca_path}"'
        )
        client_context = ssl.create_default_context(cafile=ca_path)

        def conversation() -> list[Any]:
            uri = f"wss://localhost:{tls_port}/secure"
            with connect(uri, ssl=client_context, max_size=None) as ws:
                got = []
                for message in ("one", b"\x00two", "x" * 100_000):
                    ws.send(message)
                    got.append(ws.recv(timeout=DEADLINE))
                ws.close(4003, "tls bye")
                return got

        got = yield threads.deferToThread(conversation)
        self.assertEqual(got, ["one", b"\x00two", "x" * 100_000])
        self.assertEqual((yield app.next_close()), (4003, "tls bye"))
        yield service.resource.drained()
        self.assertIn('"GET /secure HTTP/1.1" 101 ', self.access_lines(service)[0])


_UPGRADE = (
    b"GET /raw HTTP/1.1\r\nHost: raw.example\r\nConnection: Upgrade\r\nUpgrade: raw-bytes\r\n\r\n"
)
_SWITCH = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: raw-bytes\r\nConnection: Upgrade\r\n\r\n"


def _pattern(total: int) -> bytes:
    """
    C{total} bytes of a repeating pattern.
    """
    return (bytes(range(256)) * (total // 256 + 1))[:total]


class FloodingApp:
    """
    An app server on a blocking socket, in a thread: it answers one
    upgrade request with a 101 and then sends a pattern as fast as the
    socket takes it, until a send blocks for a second (its send buffer is
    full) or C{limit} bytes went out; then it closes.

    @ivar done: fires with C{(bytes sent, whether a send blocked)}.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.done: Deferred[tuple[int, bool]] = threads.deferToThread(self._serve)

    def _serve(self) -> tuple[int, bool]:
        self._listener.settimeout(DEADLINE)
        connection, _ = self._listener.accept()
        self._listener.close()
        with connection:
            # Small buffers keep the pipeline short: the test sends less.
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
            connection.settimeout(DEADLINE)
            head = b""
            while b"\r\n\r\n" not in head:
                head += connection.recv(4096)
            connection.sendall(_SWITCH)
            chunk = _pattern(64 * 1024)
            connection.settimeout(1.0)
            sent = 0
            while sent < self._limit:
                offset = sent % len(chunk)
                try:
                    sent += connection.send(chunk[offset:] if offset else chunk)
                except TimeoutError:
                    return sent, True
            return sent, False


class _Peer(Protocol):
    """
    A raw client or app protocol that a test can close on cleanup, when a
    failure left it open.
    """

    _closed = False

    def connectionLost(self, reason: Failure) -> None:
        self._closed = True
        for waiter in getattr(self, "_waiters", []):
            waiter.callback(None)

    def close_now(self) -> Deferred[None] | None:
        """
        Abort the connection if it is open; fires once it is closed.
        """
        if self._closed or self.transport is None:
            return None
        waiter: Deferred[None] = Deferred()
        self._waiters = [*getattr(self, "_waiters", []), waiter]
        self.transport.abortConnection()
        return waiter


class _StallingClient(_Peer):
    """
    Sends an upgrade request and, once the 101 came, stops reading until
    told; collects everything after the 101.

    @ivar switched: fires when the 101 arrived.
    @ivar done: fires with the bytes after the 101 once the connection
        closed.
    """

    def __init__(self) -> None:
        self.received = b""
        self.switched: Deferred[None] = Deferred()
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        self.transport.write(_UPGRADE)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if not self.switched.called and b"\r\n\r\n" in self.received:
            head, self.received = self.received.split(b"\r\n\r\n", 1)
            assert head.startswith(b"HTTP/1.1 101 "), head
            self.transport.pauseProducing()
            self.switched.callback(None)

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self.done.callback(self.received)


@implementer(IHalfCloseableProtocol)
class _HalfClosingApp(_Peer):
    """
    An app server that answers a 101, records what comes, and when the
    client's FIN arrives answers once more and closes.
    """

    def __init__(self) -> None:
        self.received = b""
        self.fin: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if not self.received and b"\r\n\r\n" in data:
            self.transport.write(_SWITCH)
            data = data.split(b"\r\n\r\n", 1)[1]
        self.received += data

    def readConnectionLost(self) -> None:
        self.transport.write(b"goodbye after your FIN")
        self.transport.loseConnection()
        self.fin.callback(self.received)

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        if not self.fin.called:
            self.fin.errback(AssertionError("closed without a FIN first"))


@implementer(IHalfCloseableProtocol)
class _HalfClosingClient(_Peer):
    """
    Sends an upgrade request; after the 101, sends C{hello} and its FIN,
    and collects what still comes until the close.
    """

    def __init__(self) -> None:
        self.received = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(_UPGRADE)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.received.startswith(b"HTTP/1.1 101 ") and b"\r\n\r\n" in self.received:
            if not hasattr(self, "said"):
                self.said = True
                self.transport.write(b"hello")
                self.transport.loseWriteConnection()

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self.done.callback(self.received)


@implementer(IHalfCloseableProtocol)
class _FinningApp(_Peer):
    """
    An app server that answers a 101 with its last message and its FIN
    (C{shutdown(SHUT_WR)}), then keeps reading until the client's FIN.

    @ivar fin: fires with what came after the 101's request once the
        client's FIN arrived.
    """

    def __init__(self) -> None:
        self.received = b""
        self.fin: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if not self.received and b"\r\n\r\n" in data and not hasattr(self, "switched"):
            self.switched = True
            self.transport.write(_SWITCH + b"my last message")
            self.transport.loseWriteConnection()
            data = data.split(b"\r\n\r\n", 1)[1]
        self.received += data

    def readConnectionLost(self) -> None:
        # (Both ways ended: this close is at once, so report first.)
        self.fin.callback(self.received)
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        if not self.fin.called:
            self.fin.errback(AssertionError("closed without a FIN first"))


@implementer(IHalfCloseableProtocol)
class _ClientAfterFin(_Peer):
    """
    Sends an upgrade request; when the app server's FIN arrives (its
    C{readConnectionLost}, not a close), sends more and its own FIN.

    @ivar eof: fires with what came before the FIN.
    """

    def __init__(self) -> None:
        self.received = b""
        self.eof: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(_UPGRADE)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def readConnectionLost(self) -> None:
        self.transport.write(b"still talking after your FIN")
        self.transport.loseWriteConnection()
        self.eof.callback(self.received)

    def writeConnectionLost(self) -> None:
        pass


class _Always101(Protocol):
    """
    An app server that answers any request with a 101.
    """

    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(_SWITCH)


def _connect(testcase: TestCase, port: int, protocol: _Peer) -> None:
    """
    Connect C{protocol} to C{port} on loopback; closed on cleanup if a
    failure left it open.
    """
    factory = ClientFactory()
    factory.protocol = lambda: protocol  # type: ignore[assignment]
    reactor.connectTCP("127.0.0.1", port, factory)
    testcase.addCleanup(protocol.close_now)


class RawTunnelTests(TestCase):
    """
    Tunnels between raw sockets: backpressure, half-close, and the
    requests and answers that must not open a tunnel.
    """

    @inlineCallbacks
    def test_slow_reader_fills_the_app_servers_socket(self):
        """
        A client that stops reading pauses the app server: its socket's
        send buffer fills while lbproxy holds only a transport's buffer
        and a read for the client; when the client reads again, every byte
        arrives, in order.
        """
        limit = 64 * _MIB
        app = FloodingApp(limit)
        proxy_port, site, _ = start_proxy(self, [app.port])
        client = _StallingClient()
        _connect(self, proxy_port, client)
        yield client.switched
        sent, blocked = yield app.done
        self.assertTrue(blocked, f"the app sent {sent} bytes unhindered")
        self.assertLess(sent, limit)
        [connection] = site.connections
        self.assertLessEqual(connection.unsent(), 256 * 1024)
        client.transport.resumeProducing()
        received = yield client.done
        self.assertEqual(len(received), sent)
        self.assertEqual(hashlib.sha256(received).digest(), hashlib.sha256(_pattern(sent)).digest())

    @inlineCallbacks
    def test_half_close(self):
        """
        Over plain TCP the client's FIN reaches the app server, which can
        still answer; then its close reaches the client.
        """
        app = _HalfClosingApp()
        app_port = listen(self, Factory.forProtocol(lambda: app))
        self.addCleanup(app.close_now)
        proxy_port, _, _ = start_proxy(self, [app_port])
        client = _HalfClosingClient()
        _connect(self, proxy_port, client)
        before_fin = yield app.fin
        self.assertEqual(before_fin, b"hello")
        received = yield client.done
        self.assertTrue(received.endswith(b"\r\n\r\ngoodbye after your FIN"), received)

    @inlineCallbacks
    def test_half_close_from_the_app_server(self):
        """
        Over plain TCP the app server's FIN reaches the client as a FIN, not
        as a close: the client can still send, and the app server, which
        keeps reading after its FIN, gets it.
        """
        app = _FinningApp()
        app_port = listen(self, Factory.forProtocol(lambda: app))
        self.addCleanup(app.close_now)
        proxy_port, _, _ = start_proxy(self, [app_port])
        client = _ClientAfterFin()
        _connect(self, proxy_port, client)
        before_eof = yield client.eof
        self.assertTrue(before_eof.endswith(b"\r\n\r\nmy last message"), before_eof)
        after_fin = yield app.fin
        self.assertEqual(after_fin, b"still talking after your FIN")

    @inlineCallbacks
    def test_101_to_a_plain_request_is_502(self):
        """
        An app server that switches protocols unasked gets its client a
        502, not a tunnel.
        """
        app_port = listen(self, Factory.forProtocol(_Always101))
        proxy_port, _, _ = start_proxy(self, [app_port])
        response = yield get(proxy_port)
        self.assertEqual(response.status, 502)

    @inlineCallbacks
    def test_h2c_is_not_tunnelled(self):
        """
        The corpus's h2c upgrade reaches the app server as a plain request
        without C{Upgrade} or C{HTTP2-Settings}, and its answer is plain.
        """
        app, _, app_port = start_app(self, "A")
        proxy_port, _, _ = start_proxy(self, [app_port])
        [case] = [case for case in CASES if case.name == "upgrade-h2c"]
        _, done = raw_request(proxy_port, case.render(b"test.example"))
        [response] = parse_responses((yield done))
        self.assertEqual((response.status, response.body), (200, b"PORT A"))
        [seen] = app.requests
        self.assertNotIn(b"upgrade", seen.headers)
        self.assertNotIn(b"http2-settings", seen.headers)
