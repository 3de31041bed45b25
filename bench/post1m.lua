-- wrk script: POST a 1 MiB body to the URL's path (built once per thread).
wrk.method = "POST"
wrk.body = string.rep("x", 1024 * 1024)
wrk.headers["Content-Type"] = "application/octet-stream"
