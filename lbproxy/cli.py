# -*- test-case-name: tests.test_cli -*-
"""
The C{lbproxy} console script.

  - C{lbproxy --version}: the version;
  - C{lbproxy check FILE}: check a configuration file, as C{nginx -t} does
    (endpoint strings, certificate and key files included): a one-line
    summary and exit status 0, or every problem and status 1;
  - C{lbproxy selftest URL}: send the malformed-input corpus to a running
    proxy chain and print what passed (status 0 if everything did, 1 if
    not; see L{lbproxy.tools.selftest}).
  - C{lbproxy balancers}: the installed balancing strategies (plugins;
    see L{lbproxy.balancing.registry});
  - C{lbproxy simulate SCENARIO [--json] [--plot FILE.png]}: compare
    strategies and settings on a modelled workload on a virtual clock
    (L{lbproxy.simulation}).

The proxy itself runs under C{twistd lbproxy} (see README.rst).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from random import Random

from lbproxy import __version__

__all__ = ["balancers", "check", "main", "selftest", "simulate"]


def check(path: str) -> int:
    """
    Check the configuration file at C{path}, printing the result: the same
    checks as at start and on reload (L{lbproxy.service.validate.load_checked}),
    so a file that passes can be put in force.

    @return: the exit status: 0 if it is valid, 1 if not.
    """
    from twisted.internet import reactor

    from lbproxy.config.file import ConfigFileError
    from lbproxy.service.service import summary
    from lbproxy.service.validate import load_checked

    try:
        config = load_checked(path, reactor)
    except ConfigFileError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        return 1
    print(f"{path}: ok: {summary(config)}")
    return 0


def selftest(url: str, timeout: float = 5.0) -> int:
    """
    Send the corpus to C{url}, print the table of outcomes.

    It runs the global reactor, so it can be called once per process.

    @return: the exit status: 0 if every case passed, 1 if not, 2 for a
        bad URL.
    """
    from twisted.internet.defer import Deferred
    from twisted.internet.task import react

    from lbproxy.tools.selftest import format_table, parse_target, run_selftest

    try:
        parse_target(url)
    except ValueError as e:
        print(f"lbproxy selftest: {e}", file=sys.stderr)
        return 2

    async def run(reactor: object) -> None:
        outcomes = await run_selftest(reactor, url, timeout)
        print(format_table(url, outcomes))
        if not all(outcome.passed for outcome in outcomes):
            raise SystemExit(1)

    try:
        # react always ends with SystemExit, whatever the coroutine does.
        react(lambda reactor: Deferred.fromCoroutine(run(reactor)))
    except SystemExit as e:
        return int(e.code or 0)


def balancers() -> int:
    """
    Print the installed strategies, a line each: name and description.

    @return: the exit status, 0.
    """
    from lbproxy.balancing.registry import installed_strategies

    strategies = installed_strategies()
    width = max(len(name) for name in strategies)
    for name, factory in strategies.items():
        print(f"{name.ljust(width)}  {factory.description}")
    return 0


def simulate(path: str, as_json: bool = False, plot_path: str | None = None, jobs: int = 1) -> int:
    """
    Simulate the scenario at C{path} (L{lbproxy.simulation.scenario}) with
    each of its strategies and print the figures: a table, or JSON.

    @param plot_path: where to draw latency over time (PNG), if anywhere.
    @param jobs: how many strategies to simulate at once (processes).
    @return: the exit status: 0, or 1 for a bad scenario, a missing
        matplotlib or a plot that cannot be written (one line on standard
        error).
    """
    from lbproxy.errors import ConfigError
    from lbproxy.simulation.arrivals import log_times, poisson_times
    from lbproxy.simulation.compare import compare
    from lbproxy.simulation.report import (
        MissingPlotter,
        format_table,
        plot,
        pyplot,
        to_json,
    )
    from lbproxy.simulation.scenario import load_scenario

    try:
        if plot_path is not None:
            # Before minutes of simulation, not after.
            pyplot()
        scenario = load_scenario(path)
        if scenario.log:
            arrivals = log_times(scenario.log, scenario.requests)
        else:
            arrivals = poisson_times(scenario.requests, scenario.rate, Random(scenario.seed))
    except (ConfigError, MissingPlotter) as e:
        print(f"lbproxy simulate: {e}", file=sys.stderr)
        return 1
    summaries, runs = compare(
        scenario.contenders,
        scenario.servers,
        arrivals,
        scenario.seed,
        jobs,
        keep_runs=plot_path is not None,
    )
    print(to_json(len(arrivals), summaries) if as_json else format_table(summaries))
    if plot_path is not None:
        try:
            plot(runs, plot_path, f"{os.path.basename(path)}: {len(arrivals):,} requests")
        except OSError as e:
            print(f"lbproxy simulate: cannot write {plot_path}: {e.strerror}", file=sys.stderr)
            return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the console script.

    @param argv: the arguments after the program name; C{sys.argv[1:]} if
        L{None}.
    @return: the exit status.
    """
    parser = argparse.ArgumentParser(
        prog="lbproxy",
        description="lbproxy: an HTTP reverse proxy and load balancer. "
        "Run the proxy with: twistd -n lbproxy --upstream HOST:PORT,HOST:PORT",
    )
    parser.add_argument("--version", action="version", version=f"lbproxy {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    check_parser = commands.add_parser("check", help="check a configuration file (like nginx -t)")
    check_parser.add_argument("file", help="the TOML configuration file")
    selftest_parser = commands.add_parser(
        "selftest", help="send the malformed-input corpus to a running proxy and report"
    )
    selftest_parser.add_argument("url", help="the proxy chain's URL, e.g. http://127.0.0.1:8080/")
    selftest_parser.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for each answer (default 5)"
    )
    commands.add_parser("balancers", help="list the installed balancing strategies")
    simulate_parser = commands.add_parser(
        "simulate", help="compare strategies on a modelled workload (a scenario file)"
    )
    simulate_parser.add_argument("scenario", help="the TOML scenario file")
    simulate_parser.add_argument(
        "--json", action="store_true", help="print the figures as one JSON object"
    )
    simulate_parser.add_argument(
        "--plot", metavar="FILE.png", help="draw p99 latency over time (needs matplotlib)"
    )
    simulate_parser.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="strategies simulated at once, a process each (default: the CPUs)",
    )
    arguments = parser.parse_args(argv)
    if arguments.command == "balancers":
        return balancers()
    if arguments.command == "simulate":
        return simulate(arguments.scenario, arguments.json, arguments.plot, arguments.jobs)
    if arguments.command == "check":
        return check(arguments.file)
    if arguments.command == "selftest":
        return selftest(arguments.url, arguments.timeout)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
