"""
The upstream side: pooled keep-alive HTTP/1.1 connections to app servers,
request bodies on their way to them, and upstream TLS.
"""
