# -*- test-case-name: tests.test_cli -*-
"""
The C{lbproxy} console script.

  - C{lbproxy --version}: the version;
  - C{lbproxy check FILE}: check a configuration file, as C{nginx -t} does:
    a one-line summary and exit status 0, or every problem and status 1.

The proxy itself runs under C{twistd lbproxy} (see README.rst).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lbproxy import __version__

__all__ = ["check", "main"]


def check(path: str) -> int:
    """
    Check the configuration file at C{path}, printing the result.

    @return: the exit status: 0 if it is valid, 1 if not.
    """
    from lbproxy.configfile import ConfigFileError, load_config
    from lbproxy.service import summary

    try:
        config = load_config(path)
    except ConfigFileError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        return 1
    print(f"{path}: ok: {summary(config)}")
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
    arguments = parser.parse_args(argv)
    if arguments.command == "check":
        return check(arguments.file)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
