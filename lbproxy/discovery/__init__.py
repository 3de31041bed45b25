"""
Service discovery: pools whose servers are DNS records, kept in step as
the records change.

  - L{lbproxy.discovery.lookup}: one lookup of a C{dns+a://} or
    C{dns+srv://} source, its records turned into servers;
  - L{lbproxy.discovery.resolver}: who answers (the system's resolver, or
    the C{resolver} setting's DNS server);
  - L{lbproxy.discovery.watcher}: L{DnsWatcher}, one source feeding one
    pool on the records' TTL;
  - L{lbproxy.discovery.service}: L{DiscoveryService}, every source of the
    configuration, across reloads.

It sits beside L{lbproxy.balancing} and changes pools only through
L{lbproxy.balancing.pool.Pool.update_servers}; L{lbproxy.service} wires it.
"""
