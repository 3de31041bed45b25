"""
The built-in balancing strategies, registered as plugins the way a
user's are (L{lbproxy.balancing.registry}).
"""

from lbproxy.balancing.registry import BalancerPlugin
from lbproxy.balancing.strategies import (
    ConsistentHash,
    LeastConn,
    PeakEwma,
    RandomTwo,
    RoundRobin,
)

roundrobin = BalancerPlugin(
    "roundrobin",
    "smooth weighted round robin (nginx's default)",
    RoundRobin.from_config,
)
leastconn = BalancerPlugin(
    "leastconn",
    "fewest requests in flight for its weight (nginx: least_conn, HAProxy: leastconn)",
    LeastConn.from_config,
)
random2 = BalancerPlugin(
    "random2",
    "the less busy of two random servers (nginx: random two least_conn)",
    RandomTwo.from_config,
)
ewma = BalancerPlugin(
    "ewma",
    "the cheaper of two random servers by peak-EWMA response time (Finagle, Linkerd)",
    PeakEwma.from_config,
)
hash = BalancerPlugin(
    "hash",
    "consistent hashing of --hash-key (nginx: hash ... consistent)",
    ConsistentHash.from_config,
)
