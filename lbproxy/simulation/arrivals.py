# -*- test-case-name: tests.simulation.test_arrivals -*-
"""
When simulated requests arrive, in seconds from the start of the run:
a Poisson process at a rate (L{poisson_times}), or the times of an access
log (L{log_times}) in the combined format or lbproxy's JSON format (one
object a line, its C{time} field; see L{lbproxy.http.accesslog}).

Access logs stamp whole seconds, so the requests logged in one second are
spread evenly over it.
"""

from __future__ import annotations

import json
import re
from array import array
from collections import Counter
from datetime import datetime
from itertools import accumulate
from random import Random

from lbproxy.errors import ConfigError

__all__ = ["log_times", "parse_log_time", "poisson_times"]

#: The bracketed time of a combined (or common) log line.
_COMBINED_TIME = re.compile(r"\[(\d{2}/[A-Za-z]{3}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4})\]")


def poisson_times(count: int, rate: float, rng: Random) -> array[float]:
    """
    C{count} arrival times of a Poisson process of C{rate} a second: gaps
    drawn from the exponential distribution.
    """
    expovariate = rng.expovariate
    return array("d", accumulate(expovariate(rate) for _ in range(count)))


def parse_log_time(line: str) -> str | None:
    """
    The time stamp of one access log line, as written (the key to parse
    it once per second, not once per line); L{None} if it has none.
    """
    if line.startswith("{"):
        try:
            record = json.loads(line)
        except ValueError:
            return None
        stamp = record.get("time") if isinstance(record, dict) else None
        return stamp if isinstance(stamp, str) else None
    found = _COMBINED_TIME.search(line)
    return found.group(1) if found else None


def _seconds(stamp: str) -> float:
    """
    A time stamp (combined or ISO 8601) as seconds since the epoch.
    """
    if "/" in stamp:
        return datetime.strptime(stamp, "%d/%b/%Y:%H:%M:%S %z").timestamp()
    return datetime.fromisoformat(stamp).timestamp()


def log_times(path: str, limit: int = 0) -> array[float]:
    """
    The arrival times of an access log's requests, from its first second.

    @param limit: the most to read; 0 for all.
    @raise ConfigError: if the file cannot be read, a line has no time
        stamp, or there is no line.
    """
    stamps: list[str] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                stamp = parse_log_time(line)
                if stamp is None:
                    raise ConfigError(
                        f"{path}:{number}: not an access log line (combined or JSON with a time)"
                    )
                stamps.append(stamp)
                if limit and len(stamps) == limit:
                    break
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    if not stamps:
        raise ConfigError(f"{path}: no requests in the access log")
    per_stamp = Counter(stamps)
    try:
        seconds = {stamp: _seconds(stamp) for stamp in per_stamp}
    except ValueError as e:
        raise ConfigError(f"{path}: bad time stamp: {e}") from None
    start = min(seconds.values())
    times = array("d")
    for stamp in sorted(per_stamp, key=seconds.__getitem__):
        count = per_stamp[stamp]
        second = seconds[stamp] - start
        times.extend(second + k / count for k in range(count))
    return times
