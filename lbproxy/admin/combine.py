# -*- test-case-name: tests.admin.test_combine -*-
"""
The snapshots of the workers of C{--workers} combined into one, as the
supervisor's admin serves it: pure functions over plain data
(L{lbproxy.admin.core.AdminCore.snapshot}'s shape), no I/O.

  - Counts (requests, answers by class, failures, retries, checks,
    refusals, latency buckets and their sum) and gauges (client
    connections, requests in flight, active requests, idle connections,
    queued requests) are summed; p50 and p99 are worked out again from the
    summed buckets of the last minute.
  - A server's state is C{up} only if it is up in every worker that has
    it; otherwise the gravest of its states (maintenance, draining, down),
    and, when only some workers took it out, its C{down_reason} says so
    (C{down in 1 of 2 workers: ...}).  Its C{workers} lists its state in
    each worker.  Its last check is the latest of any worker's.
  - Whatever else a pool or a server holds (settings such as C{balance},
    C{weight}; keys this module does not know) is the first worker's.
  - C{lbproxy.workers} lists every worker the supervisor keeps: its
    C{pid}, whether it C{answered}, and if not, why (C{error}).

A worker restarted after a crash counts from zero again: summed counters
then go down, which Prometheus's C{rate()} takes as a counter reset.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from lbproxy import __version__
from lbproxy.admin.core import Snapshot, json_seconds
from lbproxy.balancing.server import BOUNDS, bucket_percentiles

__all__ = ["Answers", "combine", "combine_actions", "combine_servers", "readiness"]

#: What each worker answered, by its index: its snapshot, or one line
#: saying why there is none (C{"starting"}, C{"did not answer: ..."}).
Answers = Mapping[int, Snapshot | str]

#: A server's states, gravest first: the combined state of one whose
#: workers disagree.
_GRAVEST = ("maintenance", "draining", "down", "up")
#: A server's counts and gauges, summed across workers.
_SUMMED = ("active", "idle_connections", "requests", "failures", "retries")


def _snapshots(answers: Answers) -> dict[int, Snapshot]:
    return {index: answer for index, answer in answers.items() if not isinstance(answer, str)}


def _sum_keys(dicts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """
    Counts by key summed, keys in the order first seen.
    """
    total: dict[str, int] = {}
    for each in dicts:
        for key, count in each.items():
            total[key] = total.get(key, 0) + count
    return total


def _sum_lists(lists: Iterable[list[int]]) -> list[int]:
    """
    Counts per bucket summed, bucket by bucket.
    """
    total: list[int] = []
    for each in lists:
        if len(total) < len(each):
            total.extend([0] * (len(each) - len(total)))
        for i, count in enumerate(each):
            total[i] += count
    return total


def _state(servers: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """
    A server's state, rotation and health across the workers that have it.
    """
    states = [server["state"] for _, server in servers]
    state = next(each for each in _GRAVEST if each in states)
    unhealthy = [server for _, server in servers if not server["healthy"]]
    reason = None
    if unhealthy:
        reason = unhealthy[0]["down_reason"]
        if len(unhealthy) < len(servers):
            reason = f"down in {len(unhealthy)} of {len(servers)} workers: {reason}"
    return {
        "state": state,
        "in_rotation": all(server["in_rotation"] for _, server in servers),
        "healthy": not unhealthy,
        "down_reason": reason,
        "workers": [
            {
                "worker": index,
                "state": server["state"],
                "in_rotation": server["in_rotation"],
                "down_reason": server["down_reason"],
                "active": server["active"],
            }
            for index, server in servers
        ],
    }


def combine_servers(servers: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """
    One server as each worker sees it, combined (see the module docstring).

    @param servers: the worker's index and the server's data
        (L{lbproxy.admin.core.server_data}), for every worker that has it;
        at least one.
    """
    first = servers[0][1]
    datas = [server for _, server in servers]
    combined = dict(first)
    for key in _SUMMED:
        combined[key] = sum(server[key] for server in datas)
    combined["responses"] = _sum_keys(server["responses"] for server in datas)
    combined["checks"] = _sum_keys(server["checks"] for server in datas)
    times = [server["response_times"] for server in datas]
    last_minute = _sum_lists(each["last_minute"] for each in times)
    combined["response_times"] = {
        **first["response_times"],
        "counts": _sum_lists(each["counts"] for each in times),
        "sum": sum(each["sum"] for each in times),
        "last_minute": last_minute,
    }
    p50, p99 = bucket_percentiles(last_minute, (0.5, 0.99))
    combined["p50"], combined["p99"] = json_seconds(p50), json_seconds(p99)
    checks = [server["last_check"] for server in datas if server["last_check"] is not None]
    combined["last_check"] = max(checks, key=lambda check: check["time"], default=None)
    combined.update(_state(servers))
    return combined


def _combine_upstreams(snapshots: Mapping[int, Snapshot]) -> dict[str, Any]:
    """
    The pools of every worker's snapshot combined, in the order first seen;
    servers matched by address.
    """
    pools: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for index, snapshot in snapshots.items():
        for name, pool in snapshot["upstreams"].items():
            pools.setdefault(name, []).append((index, pool))
    upstreams = {}
    for name, each in pools.items():
        combined = dict(each[0][1])
        combined["waiting"] = sum(pool["waiting"] for _, pool in each)
        servers: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        for index, pool in each:
            for server in pool["servers"]:
                servers.setdefault(server["address"], []).append((index, server))
        combined["servers"] = [combine_servers(found) for found in servers.values()]
        upstreams[name] = combined
    return upstreams


def _worker_line(index: int, answer: Snapshot | str) -> dict[str, Any]:
    if isinstance(answer, str):
        return {"worker": index, "pid": None, "answered": False, "error": answer}
    process = answer["lbproxy"]
    return {
        "worker": index,
        "pid": process["pid"],
        "answered": True,
        "serving": process["serving"],
        "error": None,
    }


def combine(answers: Answers, pid: int, now: float, stopping: bool = False) -> Snapshot:
    """
    The workers' snapshots as one (see the module docstring).

    @param answers: what each worker answered, by index.
    @param pid: the supervisor's process id (the pidfile's).
    @param now: the supervisor's clock's seconds.
    @param stopping: the supervisor is stopping: not serving.
    """
    snapshots = _snapshots(answers)
    processes = [snapshot["lbproxy"] for snapshot in snapshots.values()]
    process: dict[str, Any] = {"version": __version__, "latency_bounds": list(BOUNDS)}
    if processes:
        process.update(processes[0])
    process.update(
        {
            "pid": pid,
            "time": now,
            "started": min((each["started"] for each in processes), default=now),
            "serving": not stopping and any(each["serving"] for each in processes),
            "client_connections": sum(each["client_connections"] for each in processes),
            "requests_in_flight": sum(each["requests_in_flight"] for each in processes),
            "refused": dict(sorted(_sum_keys(each["refused"] for each in processes).items())),
            "workers": [_worker_line(index, answer) for index, answer in sorted(answers.items())],
        }
    )
    return {"lbproxy": process, "upstreams": _combine_upstreams(snapshots)}


def readiness(answers: Answers, stopping: bool = False) -> tuple[bool, str]:
    """
    Whether the workers together are ready for traffic (C{/healthz}): the
    supervisor is not stopping, and at least one worker serves with a
    server of some pool in rotation.

    @return: the verdict, and one line saying why.
    """
    if stopping:
        return False, "stopping: requests in flight are draining"
    snapshots = _snapshots(answers)
    serving = {
        index: snapshot for index, snapshot in snapshots.items() if snapshot["lbproxy"]["serving"]
    }
    workers = f"{len(serving)} of {len(answers)} workers serving"
    if not serving:
        return False, f"no worker serving ({len(snapshots)} of {len(answers)} answered)"
    in_rotation = set()
    total = set()
    for snapshot in serving.values():
        for name, pool in snapshot["upstreams"].items():
            for server in pool["servers"]:
                total.add((name, server["address"]))
                if server["in_rotation"]:
                    in_rotation.add((name, server["address"]))
    if not in_rotation:
        return False, f"{workers}, no server in rotation (of {len(total)})"
    return True, f"ok: {workers}, {len(in_rotation)} of {len(total)} servers in rotation"


def combine_actions(results: Mapping[int, tuple[int, Any] | str]) -> tuple[int, dict[str, Any]]:
    """
    The answer to an action sent to every ready worker.

    @param results: by worker index, its status and JSON answer
        (L{lbproxy.admin.core.AdminCore.act}'s, or C{{"error": ...}}), or
        why it was not asked (C{starting}: it gets the action once ready).
    @return: the status and data to answer: 200 and the first worker's
        answer if every worker asked did it; otherwise the first failing
        status, and an C{error} naming each worker that failed (or the one
        error all gave).  Either way C{workers} lists each worker's outcome.
    """
    lines: list[dict[str, Any]] = []
    failed: list[tuple[int, int, str]] = []
    done: list[dict[str, Any]] = []
    for index, result in results.items():
        if isinstance(result, str):
            lines.append({"worker": index, "done": False, "error": f"not asked: {result}"})
            continue
        status, answer = result
        if status == 200:
            done.append(answer)
            lines.append(
                {
                    "worker": index,
                    "done": True,
                    "previous": answer.get("previous"),
                    "state": answer.get("state"),
                }
            )
        else:
            error = answer.get("error") or f"status {status}"
            failed.append((index, status, error))
            lines.append({"worker": index, "done": False, "error": error})
    if not done and not failed:
        return 503, {"error": "no worker is ready to act", "workers": lines}
    if not failed:
        return 200, {**done[0], "workers": lines}
    errors = {error for _, _, error in failed}
    if not done and len(errors) == 1:
        error = errors.pop()
    else:
        error = "; ".join(f"worker {index}: {error}" for index, _, error in failed)
        if done:
            error += f" (done in {len(done)} of {len(done) + len(failed)} workers)"
    return failed[0][1], {"error": error, "workers": lines}
