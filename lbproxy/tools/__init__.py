"""
Tools around the proxy: the malformed-input corpus and C{lbproxy
selftest}, and the C{--demo} app servers.
"""
