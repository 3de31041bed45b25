"""
The client side: the framing gate (the one authority on where a request
ends), HTTP/1.1 and HTTP/2 connections, client timeouts, the access log.
"""
