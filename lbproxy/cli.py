# -*- test-case-name: tests.test_cli -*-
"""
The C{lbproxy} console script.

C{lbproxy --version} prints the version; the proxy itself runs under
C{twistd lbproxy} (see README.rst).  Later subcommands (C{lbproxy check})
join here.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lbproxy import __version__

__all__ = ["main"]


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
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
