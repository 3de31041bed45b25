# -*- test-case-name: tests.tools.test_selftest -*-
"""
C{lbproxy selftest URL}: send the malformed-input corpus to a running
proxy chain and report, case by case, whether it answered as lbproxy
should.

Each case (L{lbproxy.tools.corpus}) goes over a fresh connection; the answers are
read until the server closes the connection (every case ends with a
refusal or C{Connection: close}) or the timeout passes.  A case passes when
the statuses match (for an answer from the app server: any status that is
not one of lbproxy's refusals), no extra answer came back (an extra answer
means a request was smuggled through), and the connection was closed.

What the app servers saw cannot be checked from outside; the test suite
checks that with a recording app server (C{tests/test_corpus.py}).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITCPTransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from lbproxy.tools.corpus import APP, CASES, Case

__all__ = [
    "REFUSALS",
    "Outcome",
    "Target",
    "format_table",
    "judge",
    "parse_target",
    "run_case",
    "run_selftest",
    "split_statuses",
]

#: Statuses that mean the request did not get to the app server and back:
#: an answer the app server was meant to give must not be one of these.
REFUSALS = frozenset({400, 408, 411, 413, 414, 431, 501, 502, 503, 504, 505})

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})[^\r\n]*")


@dataclass(frozen=True, slots=True)
class Target:
    """
    Where to send the corpus.

    @ivar host: the host name or address to connect to.
    @ivar port: the TCP port.
    @ivar tls: whether to speak TLS (an C{https} URL).
    @ivar authority: the C{Host} value (C{host[:port]} as in the URL).
    @ivar path: the path the cases' targets start with.
    """

    host: str
    port: int
    tls: bool
    authority: bytes
    path: bytes


def parse_target(url: str) -> Target:
    """
    Parse an C{http://} or C{https://} URL.

    @raise ValueError: for any other URL.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    path = parts.path or "/"
    if not path.endswith("/"):
        path += "/"
    return Target(parts.hostname, port, tls, parts.netloc.encode("idna"), path.encode("ascii"))


@dataclass(frozen=True, slots=True)
class Outcome:
    """
    What one case got.

    @ivar case: the case.
    @ivar statuses: the statuses of the final answers, in order.
    @ivar closed: whether the server closed the connection in time.
    @ivar passed: whether that is what lbproxy gives.
    @ivar note: why it failed, or C{""}.
    """

    case: Case
    statuses: tuple[int, ...]
    closed: bool
    passed: bool
    note: str


def split_statuses(data: bytes) -> tuple[list[int], bool]:
    """
    The statuses of the HTTP/1.x answers in C{data} (interim 1xx answers
    left out), and whether all of C{data} was understood.
    """
    statuses: list[int] = []
    while data:
        head, found, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        match = _STATUS_LINE.fullmatch(lines[0])
        if not found or match is None:
            return statuses, False
        status = int(match.group(1))
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            fields[name.strip().lower()] = value.strip().lower()
        if status < 200:
            data = rest
            continue
        statuses.append(status)
        if status in (204, 304):
            data = rest
        elif b"transfer-encoding" in fields:
            after = _skip_chunked(rest)
            if after is None:
                return statuses, False
            data = after
        elif b"content-length" in fields and fields[b"content-length"].isdigit():
            data = rest[int(fields[b"content-length"]) :]
        else:
            data = b""  # delimited by the end of the connection
    return statuses, True


def _skip_chunked(data: bytes) -> bytes | None:
    """
    What follows a chunked body at the start of C{data}; L{None} if the
    body is not complete or not valid.
    """
    while True:
        line, found, data = data.partition(b"\r\n")
        try:
            size = int(line.split(b";")[0], 16)
        except ValueError:
            return None
        if not found:
            return None
        if size == 0:
            while True:
                trailer, found, data = data.partition(b"\r\n")
                if not found:
                    return None
                if not trailer:
                    return data
        data = data[size + 2 :]


def judge(case: Case, statuses: Sequence[int], closed: bool, understood: bool = True) -> str:
    """
    Why C{statuses} are not what lbproxy answers to C{case}, or C{""}.
    """
    expected = case.expect
    if len(statuses) > len(expected):
        return "more answers than requests: a request got through on its own"
    for want, got in zip(expected, statuses, strict=False):
        if want == APP and got in REFUSALS:
            return f"refused with {got}; the app server should have answered"
        if want != APP and got != want:
            return f"expected {want}, got {got}"
    if len(statuses) < len(expected):
        return "no answer" if not statuses else "missing answers"
    if not understood:
        return "an answer that is not valid HTTP/1.1"
    if not closed:
        return "the connection was left open"
    return ""


class _Exchange(Protocol):
    """
    Sends one case and collects every byte until the server closes.
    """

    # Set by makeConnection before connectionMade (Twisted types it as an
    # optional ITransport); a TCP or TLS client transport.
    transport: ITCPTransport

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.received = b""
        self.done: Deferred[bool] = Deferred()
        self.timer: IDelayedCall | None = None
        self.timed_out = False

    def connectionMade(self) -> None:
        self.transport.write(self.payload)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.done.callback(not self.timed_out)

    def give_up(self) -> None:
        self.timed_out = True
        self.transport.abortConnection()


async def run_case(reactor: Any, target: Target, case: Case, timeout: float = 5.0) -> Outcome:
    """
    Send C{case} to C{target} over a new connection and judge the answer.

    @param reactor: connects and times (C{IReactorTCP}, C{IReactorTime}).
    @param target: where to send it.
    @param case: the case.
    @param timeout: seconds to wait for the server to close.
    @return: the outcome.
    """
    exchange = _Exchange(case.render(target.authority, target.path))
    endpoint: Any = HostnameEndpoint(reactor, target.host, target.port, timeout=timeout)
    if target.tls:
        from twisted.internet.ssl import optionsForClientTLS

        endpoint = wrapClientTLS(optionsForClientTLS(target.host), endpoint)
    try:
        await endpoint.connect(Factory.forProtocol(lambda: exchange))
    except Exception as e:
        return Outcome(case, (), False, False, f"cannot connect: {e}")
    clock: IReactorTime = reactor
    exchange.timer = clock.callLater(timeout, exchange.give_up)
    closed = await exchange.done
    statuses, understood = split_statuses(exchange.received)
    note = judge(case, statuses, closed, understood)
    return Outcome(case, tuple(statuses), closed, not note, note)


async def run_selftest(
    reactor: Any, url: str, timeout: float = 5.0, cases: Iterable[Case] = CASES
) -> list[Outcome]:
    """
    Run every case against C{url}, one after another.

    @raise ValueError: if C{url} is not an http(s) URL.
    """
    target = parse_target(url)
    return [await run_case(reactor, target, case, timeout) for case in cases]


def _statuses(statuses: Iterable[int]) -> str:
    return ",".join("app" if status == APP else str(status) for status in statuses) or "-"


def format_table(url: str, outcomes: Sequence[Outcome]) -> str:
    """
    The report: one line per case, then a summary line.
    """
    width = max(len(outcome.case.name) for outcome in outcomes)
    lines = [f"lbproxy selftest {url}: {len(outcomes)} cases", ""]
    lines.append(f"{'':4}  {'case':<{width}}  {'expected':<8}  {'got':<8}  source")
    for outcome in outcomes:
        case = outcome.case
        mark = "PASS" if outcome.passed else "FAIL"
        line = (
            f"{mark}  {case.name:<{width}}  {_statuses(case.expect):<8}  "
            f"{_statuses(outcome.statuses):<8}  {case.source}"
        )
        if outcome.note:
            line += f"\n      -> {outcome.note}"
        lines.append(line)
    failed = sum(not outcome.passed for outcome in outcomes)
    lines += ["", f"{len(outcomes) - failed} passed, {failed} failed"]
    return "\n".join(lines)
