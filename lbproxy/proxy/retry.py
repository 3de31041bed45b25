# -*- test-case-name: tests.proxy.test_retry -*-
"""
What happens after an attempt fails: a pure decision, from the failure
kind and what the exchange has done so far.

  - nothing reached the server (connection refused, connect timeout, TLS
    handshake failed): try the next server of the pool, for every method
    (nginx's C{proxy_next_upstream error timeout});
  - a reused keep-alive connection closed before any byte of the answer:
    an idempotent request whose body did not go out is sent again on a
    fresh connection, once; otherwise 502, as in nginx, since the server
    may have seen it (lbproxy's idle timeout, below Node's, makes this
    rare);
  - anything else before the answer started: 502, or 504 for the read
    timeout;
  - anything after the answer started: the client is aborted, so that a
    truncated answer never looks complete.
"""

from __future__ import annotations

import enum

from lbproxy.errors import ConnectFailed, StaleConnection, UpstreamError

__all__ = ["IDEMPOTENT_METHODS", "Next", "after_failure"]

#: RFC 9110 section 9.2.2.
IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})


class Next(enum.Enum):
    """
    What an exchange does after a failed attempt.
    """

    #: Try the next server the pool picks (its retry budget allowing).
    NEXT_SERVER = "next server"
    #: Send the request again to the same server on a new connection.
    FRESH_CONNECTION = "fresh connection"
    #: Answer 502 Bad Gateway.
    BAD_GATEWAY = 502
    #: Answer 504 Gateway Timeout.
    GATEWAY_TIMEOUT = 504
    #: Reset the client: its answer had begun.
    ABORT_CLIENT = "abort client"


def after_failure(
    error: UpstreamError,
    *,
    answer_started: bool,
    method: bytes,
    body_sent: bool,
    resent: bool,
) -> Next:
    """
    Decide what follows a failed attempt; see the module docstring.

    @param error: why the attempt failed.
    @param answer_started: the answer's head already went to the client.
    @param method: the request's method.
    @param body_sent: some of a streamed body already went out.
    @param resent: the request was already sent again after a stale
        connection (it is done once at most).
    """
    if answer_started:
        return Next.ABORT_CLIENT
    if isinstance(error, ConnectFailed):
        return Next.NEXT_SERVER
    if (
        isinstance(error, StaleConnection)
        and not resent
        and method in IDEMPOTENT_METHODS
        and not body_sent
    ):
        return Next.FRESH_CONNECTION
    if error.status == 504:
        return Next.GATEWAY_TIMEOUT
    return Next.BAD_GATEWAY
