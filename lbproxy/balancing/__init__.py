"""
Balancing: pools and their servers' state, the strategies that pick a
server, active health checks, and routes from a request to its pool.
"""
