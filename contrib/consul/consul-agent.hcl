# Part of a Consul agent's configuration for lbproxy's DNS lookups: answers
# that may be kept 5 s (Consul's default TTL is 0), so lbproxy asks every
# 5 s rather than every second. web.json registers an app server (one per
# app host: consul services register web.json, or put it in the agent's
# config directory).
ports {
  dns = 8600
}
dns_config {
  service_ttl {
    "*" = "5s"
  }
  node_ttl = "5s"
}
