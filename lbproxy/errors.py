"""
The kinds of failure lbproxy names; this module imports nothing of lbproxy.

  - L{ConfigError}: a bad option or configuration value, as one line that
    names it (the command line, the file reader and reload all raise it).
  - L{UpstreamError} and its subclasses: why an exchange with an app server
    failed, and so what happens next (another server, a 502 or 504, an
    aborted client; see L{lbproxy.proxy.retry}).
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ConnectFailed",
    "InternalError",
    "InvalidResponse",
    "ReadTimeout",
    "ResponseTruncated",
    "StaleConnection",
    "UpstreamError",
]


class ConfigError(ValueError):
    """
    A configuration value is wrong; the message is one line naming it.
    """


class UpstreamError(Exception):
    """
    An exchange with an app server failed.

    @cvar status: the status the client gets if no answer was relayed yet.
    @cvar nothing_sent: C{True} when the app server cannot have seen the
        request, so sending it to another server is safe for every method.
    @cvar server_fault: C{True} when the failure is the server's and counts
        towards its C{max-fails} (nginx's C{max_fails} counts errors,
        timeouts and invalid answers); C{False} when lbproxy or the
        connection's age is to blame.
    """

    status = 502
    nothing_sent = False
    server_fault = True


class ConnectFailed(UpstreamError):
    """
    No connection could be made (refused, timed out, name not found).
    """

    nothing_sent = True


class StaleConnection(UpstreamError):
    """
    A reused keep-alive connection closed before any byte of an answer.

    The app server closed it while idle (Node closes idle keep-alive
    connections after 5 s) as the request was on its way: a race of
    lbproxy's pooling, not a fault of the server.
    """

    server_fault = False


class ReadTimeout(UpstreamError):
    """
    The app server was silent for longer than the read timeout.
    """

    status = 504


class InvalidResponse(UpstreamError):
    """
    The app server answered something that is not valid HTTP/1.x.
    """


class ResponseTruncated(UpstreamError):
    """
    The connection closed before the answer was complete.
    """


class InternalError(UpstreamError):
    """
    A bug in lbproxy while sending a request or handling its answer.

    The client gets 502 and the traceback is logged, but the server stays
    in rotation: with C{max-fails 1} one bug would otherwise take a healthy
    server out for C{fail-timeout}.
    """

    server_fault = False
