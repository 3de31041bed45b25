# -*- test-case-name: tests.admin.test_gather -*-
"""
The supervisor's admin under C{--workers}: its state is its workers'.

Each worker serves its own admin (the same L{lbproxy.admin.resource}) on
a unix socket in a directory only the supervisor's user can enter; the
supervisor serves the admin listener the operator gave, and for each read
asks every ready worker for C{GET /api/status} (L{WorkersCore.gather}),
then answers from their snapshots combined (L{lbproxy.admin.combine}).
An action (drain, maint, enable) is sent to every ready worker, and
answered once all have answered.  Workers take snapshots only when asked:
nothing of this runs per proxied request.

Why a worker's own admin over HTTP rather than a new control channel
(a socketpair with framed JSON): the worker side is the admin that
exists, tested, with its snapshot, actions and errors; the supervisor side
is twisted.web's C{Agent} over a unix endpoint.  A new channel would need
a protocol, framing and a dispatcher on both sides.

A worker that has not said it is ready, or is being started again, or
does not answer within C{timeout} seconds is listed as missing in
C{lbproxy.workers}, and the numbers are those of the others.  The last
action on each server is kept and sent again to a worker once it is
ready (one started again after a crash drains what the others drain).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, readBody
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from lbproxy.admin.combine import Answers, combine, combine_actions, readiness
from lbproxy.admin.core import ACTIONS, Snapshot

__all__ = ["WorkerAdmin", "WorkersCore"]

#: Seconds a worker has to answer the supervisor's admin.
TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class WorkerAdmin:
    """
    A worker's private admin, as the supervisor sees it.

    @ivar path: its unix socket.
    @ivar status: C{ready} (serving, asked), else why it is not asked
        (C{starting}, C{restarting}).
    """

    path: str
    status: str


@implementer(IAgentEndpointFactory)
class _Socket:
    """
    An C{Agent}'s endpoints, all to one unix socket.
    """

    def __init__(self, reactor: Any, path: str, timeout: float) -> None:
        self._reactor = reactor
        self._path = path
        self._timeout = timeout

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        return UNIXClientEndpoint(self._reactor, self._path, timeout=self._timeout)


class WorkersCore:
    """
    The workers' state and actions, combined: what the supervisor's
    L{lbproxy.admin.resource.WorkersAdminResource} serves.

    @ivar stopping: the supervisor is stopping (C{/healthz} says 503).
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        workers: Callable[[], Mapping[int, WorkerAdmin]],
        timeout: float = TIMEOUT,
    ) -> None:
        """
        @param reactor: connects and tells the time.
        @param workers: the supervisor's workers now, by index.
        @param timeout: seconds a worker has to answer.
        """
        self._reactor = reactor
        self._workers = workers
        self._timeout = timeout
        self._answers: Answers = {}
        self._combined = combine({}, os.getpid(), reactor.seconds())
        self._actions: dict[tuple[str, str], str] = {}
        self.stopping = False

    def _request(self, path: str, method: bytes, url: str) -> Deferred[tuple[int, Any]]:
        """
        Ask the admin on unix socket C{path}: its status and JSON answer.
        """
        agent = Agent.usingEndpointFactory(
            self._reactor, _Socket(self._reactor, path, self._timeout)
        )
        # Host: localhost, which the worker's admin wants of a POST without
        # a token (it has none: the socket's directory keeps others out).
        asked = agent.request(method, b"http://localhost" + url.encode("ascii"))

        async def answer() -> tuple[int, Any]:
            response = await asked
            body = await readBody(response)
            return response.code, json.loads(body)

        return Deferred.fromCoroutine(answer()).addTimeout(self._timeout, self._reactor)

    def _each(self, method: bytes, url: str) -> Deferred[dict[int, tuple[int, Any] | str]]:
        """
        Send one request to every ready worker.

        @return: fires with, by worker index, its status and JSON answer
            (504 if it did not answer), or why it was not asked
            (L{WorkerAdmin.status}).
        """
        results: dict[int, tuple[int, Any] | str] = {}
        asked = []
        for index, worker in sorted(self._workers().items()):
            if worker.status != "ready":
                results[index] = worker.status
                continue

            def missing(reason: Failure) -> tuple[int, Any]:
                # 504, as a proxy says of an app server that did not answer.
                why = reason.getErrorMessage() or getattr(reason.type, "__name__", "")
                return 504, {"error": f"did not answer: {why}"}

            def keep(result: tuple[int, Any] | str, index: int = index) -> None:
                results[index] = result

            asked.append(
                self._request(worker.path, method, url).addErrback(missing).addCallback(keep)
            )
        return gatherResults(asked).addCallback(lambda _: dict(sorted(results.items())))

    def gather(self) -> Deferred[None]:
        """
        Ask every ready worker for its snapshot; L{snapshot},
        L{upstreams} and L{readiness} then answer from them.
        """

        def combined(results: dict[int, tuple[int, Any] | str]) -> None:
            answers: dict[int, Snapshot | str] = {}
            for index, result in results.items():
                if isinstance(result, str):
                    answers[index] = result
                elif result[0] == 200:
                    answers[index] = result[1]
                elif result[0] == 504:
                    answers[index] = result[1]["error"]
                else:
                    answers[index] = f"answered {result[0]}: {result[1].get('error')}"
            self._answers = answers
            self._combined = combine(answers, os.getpid(), self._reactor.seconds(), self.stopping)

        return self._each(b"GET", "/api/status").addCallback(combined)

    def snapshot(self) -> Snapshot:
        """
        The workers' snapshots combined, as last gathered.
        """
        return self._combined

    def upstreams(self) -> dict[str, Any]:
        """
        The combined pools, as last gathered.
        """
        upstreams: dict[str, Any] = self._combined["upstreams"]
        return upstreams

    def readiness(self) -> tuple[bool, str]:
        """
        Whether some worker serves with a server in rotation, as last
        gathered (L{lbproxy.admin.combine.readiness}).
        """
        return readiness(self._answers, self.stopping)

    def act(self, pool: str, address: str, action: str) -> Deferred[tuple[int, dict[str, Any]]]:
        """
        Do an operator's action in every ready worker.

        @return: fires with the answer's status and data
            (L{lbproxy.admin.combine.combine_actions}), once every worker
            has answered or timed out.
        """
        url = "/api/upstreams/{}/servers/{}/{}".format(
            *(quote(part, safe="") for part in (pool, address, action))
        )

        def done(results: dict[int, tuple[int, Any] | str]) -> tuple[int, dict[str, Any]]:
            status, answer = combine_actions(results)
            if status == 200 and action in ACTIONS:
                self._actions[(pool, address)] = action
            return status, answer

        return self._each(b"POST", url).addCallback(done)

    def worker_ready(self, index: int, path: str) -> Deferred[None]:
        """
        Send a worker that has just become ready the last action done on
        each server (it starts with every server in its normal state).
        """
        replays = []
        for (pool, address), action in self._actions.items():
            if action == "enable":
                continue
            url = "/api/upstreams/{}/servers/{}/{}".format(
                *(quote(part, safe="") for part in (pool, address, action))
            )

            def said(
                result: tuple[int, Any],
                pool: str = pool,
                address: str = address,
                action: str = action,
            ) -> None:
                if result[0] != 200:
                    self._log.warn(
                        "worker {index}: {action} {pool} {address} again: {error}",
                        index=index,
                        action=action,
                        pool=pool,
                        address=address,
                        error=result[1].get("error"),
                    )

            def failed(reason: Failure) -> None:
                self._log.warn(
                    "worker {index}: could not send its servers' states: {error}",
                    index=index,
                    error=reason.getErrorMessage(),
                )

            replays.append(self._request(path, b"POST", url).addCallbacks(said, failed))

        def sent(_: object) -> None:
            if replays:
                self._log.info(
                    "worker {index}: the operator's drain or maint applied again "
                    "to {count} server(s)",
                    index=index,
                    count=len(replays),
                )

        return gatherResults(replays).addCallback(sent)
