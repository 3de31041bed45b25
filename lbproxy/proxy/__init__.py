"""
The proxy: the resource that takes each request, the exchange that
carries it to an app server and back, and the header rewriting.
"""
