# -*- test-case-name: tests.discovery.test_watcher -*-
"""
Where a pool's servers come from besides its configuration: a
L{SourceStatus} per DNS name, as the admin page and metrics read it.

L{lbproxy.discovery} fills these in; they live here, beside the pool,
so that the pool and everything that reads pools can name them.  Plain
attributes, no behaviour; times are the pool clock's (C{seconds()}).
"""

from __future__ import annotations

__all__ = ["SourceStatus"]


class SourceStatus:
    """
    What is known of one DNS source of a pool (C{pool.discovery[url]}).

    @ivar url: the source as written: C{dns+a://app.internal:3000}.
    @ivar kind: C{"dns+a"} or C{"dns+srv"}.
    @ivar name: the name looked up: C{app.internal}.
    @ivar resolver: who answers: C{"127.0.0.1:8600"}, or C{"system"}
        (C{/etc/resolv.conf} and C{/etc/hosts}).
    @ivar last_lookup: when the last lookup ended, or L{None} before the
        first.
    @ivar last_outcome: how it ended: C{"ok"}, C{"empty"} (the name has no
        such records) or C{"failed"}; C{""} before the first.
    @ivar last_error: why it failed or was empty, for people
        (C{"name not found"}); after a good one, a question of it that went
        unanswered (C{"AAAA: refused (REFUSED)"}), else C{""}.
    @ivar last_records: how many records it gave (SRV records for
        C{dns+srv}, addresses for C{dns+a}).
    @ivar ttl: the smallest TTL of the last good answer, in seconds.
    @ivar next_lookup: when the next lookup is due, or L{None} while one
        runs or the source is stopped.
    @ivar failing_since: when the current outage (failed or empty
        lookups in a row) began, or L{None}.
    @ivar servers: the addresses (C{host:port}) of the servers it gives
        the pool now: the last good answer's.
    """

    __slots__ = (
        "url",
        "kind",
        "name",
        "resolver",
        "last_lookup",
        "last_outcome",
        "last_error",
        "last_records",
        "ttl",
        "next_lookup",
        "failing_since",
        "servers",
    )

    def __init__(self, url: str, kind: str, name: str, resolver: str) -> None:
        self.url = url
        self.kind = kind
        self.name = name
        self.resolver = resolver
        self.last_lookup: float | None = None
        self.last_outcome = ""
        self.last_error = ""
        self.last_records = 0
        self.ttl: float | None = None
        self.next_lookup: float | None = None
        self.failing_since: float | None = None
        self.servers: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"<SourceStatus {self.url} {self.last_outcome or 'not looked up'}>"
