"""Load-generating clients for the memory and idle suites of ``bench/run``.

These are load generators, not tests: pacing is done with ``time.sleep``.
Python stdlib only; 127.0.0.1 only.

As a command (run by the harness in a subprocess, prints one JSON line)::

    python3 clients.py download --port P --path /stream/N --rate BYTES_PER_S
    python3 clients.py upload --port P --path /upload-timed --bytes N --rate BYTES_PER_S

- ``download`` sends one ``GET``, then ``recv()``s the body and sleeps as
  needed so that it never reads faster than ``--rate``; it reports the
  status, the body bytes received, the Content-Length and the time taken.
- ``upload`` sends a ``POST`` with a Content-Length of ``--bytes``, the body
  paced at ``--rate``, records the wall-clock time (epoch seconds) it handed
  its first and last body byte to the kernel, then reads the answer (the
  backend's JSON from ``POST /upload-timed``).

As a module: :class:`IdleClients`, many keep-alive connections in one
process (``selectors``), each sending one ``GET /`` and then staying idle,
with the time each was closed by the server.
"""

import argparse
import errno
import json
import selectors
import socket
import sys
import time

HOST = "127.0.0.1"
CHUNK = 256 * 1024


# ------------------------------------------------------------- HTTP helpers


def read_head(sock, limit=65536):
    """Read up to the end of a response head; return (status, headers, rest).

    ``headers`` maps lower-case names to the last value; ``rest`` holds the
    body bytes read past the head. Raises ValueError on EOF or garbage.
    """
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ValueError(f"connection closed after {len(buf)} bytes of response head")
        buf += chunk
        if len(buf) > limit:
            raise ValueError("response head too long")
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise ValueError(f"bad status line {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers, rest


def read_body(sock, headers, rest, limit=1 << 20):
    """Read a small response body (Content-Length, or until EOF)."""
    body = rest
    length = headers.get("content-length")
    want = int(length) if length is not None else limit
    while len(body) < want:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return body[:want]


# ----------------------------------------------------------------- download


def download(port, path, rate, timeout):
    """GET ``path`` and read the body at no more than ``rate`` bytes/s."""
    result = {"status": None, "content_length": None, "body_bytes": 0, "error": None}
    try:
        sock = socket.create_connection((HOST, port), timeout=timeout)
    except OSError as exc:
        result["error"] = f"connect: {exc}"
        return result
    with sock:
        request = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n"
        start_wall = time.time()
        try:
            sock.sendall(request.encode())
            status, headers, rest = read_head(sock)
            result["status"] = status
            length = headers.get("content-length")
            if length is None:
                encoding = headers.get("transfer-encoding", "?")
                result["error"] = f"no Content-Length in the response ({encoding})"
                return result
            length = int(length)
            result["content_length"] = length
            received = len(rest)
            start = time.monotonic()
            buf = memoryview(bytearray(CHUNK))
            while received < length:
                n = sock.recv_into(buf, min(CHUNK, length - received))
                if n == 0:
                    result["error"] = "connection closed before the end of the body"
                    break
                received += n
                delay = start + received / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            result["body_bytes"] = received
            result["seconds"] = time.monotonic() - start
        except (OSError, ValueError) as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"
        result["start_wall"] = start_wall
    return result


# ------------------------------------------------------------------- upload


def upload(port, path, size, rate, timeout):
    """POST ``size`` bytes to ``path`` at no more than ``rate`` bytes/s."""
    result = {"status": None, "sent": 0, "response": None, "error": None}
    try:
        sock = socket.create_connection((HOST, port), timeout=timeout)
    except OSError as exc:
        result["error"] = f"connect: {exc}"
        return result
    with sock:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n"
            "Connection: close\r\n\r\n"
        )
        chunk = memoryview(b"x" * CHUNK)
        try:
            sock.sendall(head.encode())
            start = time.monotonic()
            result["first_sent_wall"] = time.time()
            sent = 0
            while sent < size:
                n = min(CHUNK, size - sent)
                sock.sendall(chunk[:n])
                sent += n
                result["sent"] = sent
                if sent < size:
                    delay = start + sent / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
            result["last_sent_wall"] = time.time()
            result["seconds"] = time.monotonic() - start
        except OSError as exc:
            result["error"] = f"while sending: {type(exc).__name__}: {exc}"
        try:
            status, headers, rest = read_head(sock)
            result["status"] = status
            body = read_body(sock, headers, rest)
            result["response_wall"] = time.time()
            try:
                result["response"] = json.loads(body)
            except ValueError:
                result["response"] = body[:200].decode("latin-1")
        except (OSError, ValueError) as exc:
            if result["error"] is None:
                result["error"] = f"reading the answer: {type(exc).__name__}: {exc}"
    return result


# ------------------------------------------------------------- idle clients

CONNECTING, WAITING, IDLE, CLOSED, FAILED = "connecting", "waiting", "idle", "closed", "failed"


class Conn:
    """One idle keep-alive client connection and what happened to it."""

    __slots__ = ("sock", "state", "buf", "idle_since", "closed_at", "error")

    def __init__(self, sock):
        self.sock = sock
        self.state = CONNECTING
        self.buf = b""
        self.idle_since = None  # monotonic time its answer was complete
        self.closed_at = None  # monotonic time the server closed it
        self.error = None


class IdleClients:
    """Many keep-alive connections to 127.0.0.1:port, driven by selectors.

    Each connection sends ``GET /`` (HTTP/1.1, keep-alive), reads the answer
    and then stays idle, watched for the server closing it. At most
    ``max_pending`` connections are being set up at once, so the server's
    listen backlog is never flooded.
    """

    def __init__(self, port, max_pending=32):
        self.port = port
        self.max_pending = max_pending
        self.request = f"GET / HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()
        self.selector = selectors.DefaultSelector()
        self.conns = []
        self.pending = 0
        self.counts = {CONNECTING: 0, WAITING: 0, IDLE: 0, CLOSED: 0, FAILED: 0}
        self.errors = {}

    # state bookkeeping
    def _set(self, conn, state):
        self.counts[conn.state] -= 1
        self.counts[state] += 1
        conn.state = state

    def _fail(self, conn, why):
        conn.error = why
        self.errors[why] = self.errors.get(why, 0) + 1
        self.pending -= 1
        self._drop(conn)
        self._set(conn, FAILED)

    def _drop(self, conn):
        try:
            self.selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    @property
    def idle(self):
        """Connections answered and still open."""
        return self.counts[IDLE]

    @property
    def closed(self):
        """Connections answered, then closed by the server."""
        return self.counts[CLOSED]

    @property
    def failed(self):
        """Connections that never got a complete answer."""
        return self.counts[FAILED]

    def _open_one(self):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        conn = Conn(sock)
        self.conns.append(conn)
        self.counts[CONNECTING] += 1
        self.pending += 1
        code = sock.connect_ex((HOST, self.port))
        if code not in (0, errno.EINPROGRESS):
            self._fail(conn, f"connect: {errno.errorcode.get(code, code)}")
            return
        self.selector.register(sock, selectors.EVENT_WRITE, conn)

    def _event(self, conn, now):
        sock = conn.sock
        if conn.state == CONNECTING:
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self._fail(conn, f"connect: {errno.errorcode.get(code, code)}")
                return
            try:
                sock.send(self.request)  # tiny: goes out whole
            except OSError as exc:
                self._fail(conn, f"send: {type(exc).__name__}")
                return
            self._set(conn, WAITING)
            self.selector.modify(sock, selectors.EVENT_READ, conn)
            return
        try:
            data = sock.recv(65536)
        except OSError as exc:
            data = None
            error = type(exc).__name__
        if conn.state == WAITING:
            if not data:
                self._fail(conn, "closed before the answer" if data == b"" else error)
                return
            conn.buf += data
            if self._answer_complete(conn):
                conn.buf = b""
                conn.idle_since = now
                self.pending -= 1
                self._set(conn, IDLE)
            return
        # IDLE: the only thing expected is the server closing the connection.
        if data:
            self.errors["unexpected data while idle"] = (
                self.errors.get("unexpected data while idle", 0) + 1
            )
            return
        conn.closed_at = now
        if data is None:
            conn.error = error
        self._drop(conn)
        self._set(conn, CLOSED)

    def _answer_complete(self, conn):
        head, sep, body = conn.buf.partition(b"\r\n\r\n")
        if not sep:
            return False
        status = head.split(b" ", 2)[1:2]
        if status != [b"200"]:
            self.errors[f"status {status}"] = self.errors.get(f"status {status}", 0) + 1
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                return len(body) >= int(value)
        return True  # no Content-Length: assume the (small) head was all

    def pump(self, timeout):
        """Wait up to ``timeout`` s for events and handle them."""
        events = self.selector.select(timeout)
        now = time.monotonic()
        for key, _mask in events:
            conn = key.data
            if conn.state in (CLOSED, FAILED):
                continue
            self._event(conn, now)
        return len(events)

    def grow_to(self, total, deadline):
        """Open connections until ``total`` were answered (or failed).

        Returns False if ``deadline`` (monotonic) passed first.
        """
        while self.idle + self.closed + self.failed < total:
            if time.monotonic() > deadline:
                return False
            while self.pending < self.max_pending and len(self.conns) < total:
                self._open_one()
            self.pump(0.05)
        return True

    def run_for(self, seconds):
        """Keep handling events for ``seconds``."""
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return
            self.pump(min(left, 0.1))

    def close_all(self):
        """Close every connection still open."""
        for conn in self.conns:
            if conn.state not in (CLOSED, FAILED):
                self._drop(conn)
        self.selector.close()
        self.conns = []


# --------------------------------------------------------------------- main


def main(argv=None):
    """Command line: run one paced download or upload, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    for mode in ("download", "upload"):
        p = sub.add_parser(mode)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--path", required=True)
        p.add_argument("--rate", type=float, required=True, help="bytes per second")
        p.add_argument("--timeout", type=float, default=60.0, help="socket timeout, s")
        if mode == "upload":
            p.add_argument("--bytes", type=int, required=True)
    args = parser.parse_args(argv)
    if args.mode == "download":
        result = download(args.port, args.path, args.rate, args.timeout)
    else:
        result = upload(args.port, args.path, args.bytes, args.rate, args.timeout)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
