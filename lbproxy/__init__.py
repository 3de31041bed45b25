"""
lbproxy: an HTTP reverse proxy and load balancer built on Twisted.

Run it with C{twistd -n lbproxy --upstream localhost:3000,localhost:3001}.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
