"""
The twistd plugin for lbproxy: makes C{twistd lbproxy} exist.

Only the L{ServiceMaker} lives here; everything else is imported lazily from
L{lbproxy.tap} so that C{twistd --help} stays fast.
"""

from twisted.application.service import ServiceMaker

lbproxy = ServiceMaker(
    "lbproxy",
    "lbproxy.tap",
    "An HTTP reverse proxy and load balancer (round robin over --upstream servers).",
    "lbproxy",
)
