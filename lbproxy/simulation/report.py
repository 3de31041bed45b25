# -*- test-case-name: tests.simulation.test_report -*-
"""
What C{lbproxy simulate} prints: per strategy, the p50, p99 and p99.9 of
response times, the error rate, the retries and each server's share of
attempts, as a table (L{format_table}), one JSON object (L{to_json}), or
a plot of latency over time (L{plot}, with matplotlib if installed).

Percentiles are of the requests that got an answer (in milliseconds);
errors (502, 503, 504) are counted apart.  A percentile is the nearest
rank: the value below which that fraction of answers fall.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from lbproxy.simulation.driver import Run

__all__ = [
    "MissingPlotter",
    "Summary",
    "format_table",
    "plot",
    "pyplot",
    "summarize",
    "to_json",
]


@dataclass(frozen=True, slots=True)
class Summary:
    """
    One strategy's figures.

    @ivar share: each server's fraction of the attempts, by name.
    """

    name: str
    requests: int
    p50_ms: float
    p99_ms: float
    p999_ms: float
    errors: int
    retries: int
    share: dict[str, float]

    @property
    def error_rate(self) -> float:
        """
        The fraction of requests answered with an error.
        """
        return self.errors / self.requests if self.requests else 0.0


def _rank(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def summarize(run: Run) -> Summary:
    """
    The figures of one run.
    """
    ordered = sorted(run.latencies)
    # Errors' entries are infinite: the last ones.
    del ordered[len(ordered) - run.errors :]
    attempts = sum(run.attempts.values())
    return Summary(
        name=run.name,
        requests=len(run.latencies),
        p50_ms=_rank(ordered, 0.5) * 1000,
        p99_ms=_rank(ordered, 0.99) * 1000,
        p999_ms=_rank(ordered, 0.999) * 1000,
        errors=run.errors,
        retries=run.retries,
        share={name: count / attempts if attempts else 0.0 for name, count in run.attempts.items()},
    )


def format_table(summaries: list[Summary]) -> str:
    """
    A text table, a line per strategy.
    """
    names = list(summaries[0].share) if summaries else []
    header = ["strategy", "p50 ms", "p99 ms", "p99.9 ms", "errors", "retries"]
    header += [f"{name} share" for name in names]
    rows = [header]
    for s in summaries:
        rows.append(
            [
                s.name,
                f"{s.p50_ms:.1f}",
                f"{s.p99_ms:.1f}",
                f"{s.p999_ms:.1f}",
                f"{s.error_rate:.2%}",
                str(s.retries),
                *(f"{s.share.get(name, 0.0):.1%}" for name in names),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _number(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 3)


def to_json(requests: int, summaries: list[Summary]) -> str:
    """
    The figures as one JSON object: C{{"requests": N, "strategies":
    {NAME: {"p50_ms", "p99_ms", "p999_ms", "errors", "retries",
    "share": {SERVER: FRACTION}}}}} (a percentile with no answer to rank
    is C{null}).
    """
    strategies: dict[str, Any] = {}
    for s in summaries:
        strategies[s.name] = {
            "p50_ms": _number(s.p50_ms),
            "p99_ms": _number(s.p99_ms),
            "p999_ms": _number(s.p999_ms),
            "errors": s.errors,
            "retries": s.retries,
            "share": {name: round(share, 6) for name, share in s.share.items()},
        }
    return json.dumps({"requests": requests, "strategies": strategies}, indent=2)


class MissingPlotter(Exception):
    """
    matplotlib is not installed.
    """


def _per_second(run: Run, fraction: float) -> tuple[list[float], list[float]]:
    """
    The C{fraction} percentile of the answers to the requests that arrived
    in each second of the run, in milliseconds.
    """
    seconds: list[float] = []
    values: list[float] = []
    arrivals, latencies = run.arrivals, run.latencies
    start = 0
    count = len(arrivals)
    while start < count:
        second = int(arrivals[start])
        end = start
        while end < count and int(arrivals[end]) == second:
            end += 1
        answered = sorted(latencies[start:end])
        while answered and answered[-1] == math.inf:
            answered.pop()
        if answered:
            seconds.append(second)
            values.append(_rank(answered, fraction) * 1000)
        start = end
    return seconds, values


def pyplot() -> Any:
    """
    matplotlib's C{pyplot}, drawing to files (no display needed).

    @raise MissingPlotter: if matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot
    except ImportError:
        raise MissingPlotter(
            "--plot needs matplotlib, which is not installed (pip install 'lbproxy[plot]')"
        ) from None
    return matplotlib.pyplot


def plot(runs: list[Run], path: str, title: str) -> None:
    """
    Draw each run's p99 latency per second of the run into a PNG at
    C{path}.

    @raise MissingPlotter: if matplotlib is not installed.
    @raise OSError: if the file cannot be written.
    """
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(9, 4.5))
    for run in runs:
        seconds, values = _per_second(run, 0.99)
        axes.plot(seconds, values, label=run.name, linewidth=1.2)
    axes.set_yscale("log")
    axes.set_xlabel("seconds of the run (by arrival)")
    axes.set_ylabel("p99 latency per second (ms)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
