# -*- test-case-name: tests.simulation.test_compare -*-
"""
Every strategy of a scenario simulated and summarized: L{compare}, in
worker processes when there are CPUs to spare.

The runs share nothing, so each may have a CPU of its own and gives the
same figures wherever it runs; a worker also ranks its own latencies (a
sort of a million), and sends back the latencies themselves only when a
plot needs them.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

from lbproxy.simulation.driver import Run, simulate
from lbproxy.simulation.report import Summary, summarize
from lbproxy.simulation.scenario import Contender, ServerModel

__all__ = ["compare"]


def compare(
    contenders: Sequence[Contender],
    models: Sequence[ServerModel],
    arrivals: Sequence[float],
    seed: int,
    jobs: int = 1,
    keep_runs: bool = False,
) -> tuple[list[Summary], list[Run]]:
    """
    Simulate and summarize each contender, in up to C{jobs} processes.

    @param keep_runs: return the runs too (their latencies, for a plot).
    @return: the summaries, in the contenders' order, and the runs if
        kept (else an empty list).
    """
    if jobs <= 1 or len(contenders) <= 1:
        done = [_one(c, models, arrivals, seed, keep_runs) for c in contenders]
    else:
        # Forked workers inherit the plugins found (and sys.path) as they
        # are; elsewhere they import them again.
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else None)
        with ProcessPoolExecutor(min(jobs, len(contenders)), mp_context=context) as executor:
            futures = [
                executor.submit(_one, c, models, arrivals, seed, keep_runs) for c in contenders
            ]
            done = [future.result() for future in futures]
    summaries = [summary for summary, _ in done]
    runs = [replace(run, arrivals=arrivals) for _, run in done if run is not None]
    return summaries, runs


def _one(
    contender: Contender,
    models: Sequence[ServerModel],
    arrivals: Sequence[float],
    seed: int,
    keep_run: bool,
) -> tuple[Summary, Run | None]:
    """
    One contender's summary, and its run without the arrivals (the caller
    has them) if C{keep_run}.
    """
    run = simulate(contender, models, arrivals, seed)
    return summarize(run), replace(run, arrivals=()) if keep_run else None
