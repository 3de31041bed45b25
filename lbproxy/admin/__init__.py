"""
lbproxy's admin side: what C{--admin ENDPOINT} serves.

  - L{lbproxy.admin.core}: the state of the running proxy as plain data
    (L{AdminCore.snapshot}) and the operator's actions on servers
    (L{AdminCore.act}), with no HTTP in them;
  - L{lbproxy.admin.metrics}: that data as Prometheus metric families,
    made only when scraped;
  - L{lbproxy.admin.page}: the status page, served with the servers of
    the moment written in it, redrawn by its own script;
  - L{lbproxy.admin.resource}: the thin HTTP side over them (status page,
    JSON API, C{/metrics}, C{/healthz}), behind the admin token.

The admin listener itself (bound at start, replaced on reload, kept open
while requests drain on stop) belongs to L{lbproxy.service.service}.
"""
