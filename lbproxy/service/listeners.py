# -*- test-case-name: tests.service.test_service -*-
"""
Listener endpoints: nginx's accept backlog, and one readable line for a
listener that cannot listen.
"""

from __future__ import annotations

from OpenSSL import SSL, crypto
from twisted.internet.error import CannotListenError

__all__ = ["DEFAULT_BACKLOG", "error_text", "listen_error", "with_default_backlog"]


def listen_error(description: str, error: Exception) -> str:
    """
    One line saying why lbproxy cannot listen on C{description}: the
    socket's error for a port in use, the parser's for a bad string.
    """
    if isinstance(error, CannotListenError):
        return f"cannot listen on {description}: {error.socketError}"
    return f"cannot listen on {description}: {error_text(error)}"


#: nginx's listen backlog on Linux.  Twisted's default, 50, makes a burst
#: of new clients (wrk -c256) wait for SYN retransmits: p99 632 ms against
#: 56 ms with 511 on this machine.
DEFAULT_BACKLOG = 511


def with_default_backlog(description: str) -> str:
    """
    A listening endpoint description with nginx's backlog unless it names
    one: C{tcp:8080} becomes C{tcp:8080:backlog=511}.
    """
    kind = description.split(":", 1)[0]
    if kind in ("tcp", "tcp6", "ssl", "unix") and "backlog=" not in description:
        return f"{description}:backlog={DEFAULT_BACKLOG}"
    return description


def error_text(error: Exception) -> str:
    """
    One readable line for an exception of Twisted's endpoint parser or of
    OpenSSL.
    """
    if isinstance(error, OSError) and error.strerror:
        if error.filename:
            return f"{error.filename!r}: {error.strerror}"
        return error.strerror
    if isinstance(error, (crypto.Error, SSL.Error)):
        reasons = [item[-1] for item in (error.args[0] if error.args else []) if item]
        return "OpenSSL: " + (", ".join(r for r in reasons if r) or "error")
    return str(error) or type(error).__name__
