"""Stock Twisted reverse proxy used as the baseline in the lbproxy benchmark.

Serves a single-process twisted.web Site on 127.0.0.1 whose root alternates,
request by request, between two ``twisted.web.proxy.ReverseProxyResource``
instances (one per backend): plain round robin with nothing but stock Twisted.

Usage::

    python stock_proxy.py --port P --upstream 127.0.0.1:A,127.0.0.1:B \
        [--access-log PATH]
"""

import argparse
import itertools
import sys

from twisted.internet import reactor
from twisted.web.proxy import ReverseProxyResource
from twisted.web.resource import Resource
from twisted.web.server import Site


class RoundRobinRoot(Resource):
    """Root resource handing each request to the next backend in turn."""

    def __init__(self, backends):
        """Build one ReverseProxyResource per ``(host, port)`` backend."""
        super().__init__()
        self._proxies = itertools.cycle(
            [ReverseProxyResource(host, port, b"") for host, port in backends]
        )

    def getChild(self, path, request):
        """Delegate traversal of this request to the next backend's proxy."""
        return next(self._proxies).getChild(path, request)


def parse_upstreams(text):
    """Parse ``host:port,host:port`` into a list of ``(host, port)``."""
    backends = []
    for item in text.split(","):
        host, _, port = item.strip().rpartition(":")
        backends.append((host, int(port)))
    return backends


def main(argv=None):
    """Parse arguments, listen on 127.0.0.1 and run the reactor."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="host:port,host:port")
    parser.add_argument("--access-log", default=None, help="access log file")
    args = parser.parse_args(argv)

    site = Site(RoundRobinRoot(parse_upstreams(args.upstream)), logPath=args.access_log)
    reactor.listenTCP(args.port, site, interface="127.0.0.1")
    print(f"stock proxy listening on 127.0.0.1:{args.port}", flush=True)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
