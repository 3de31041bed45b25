"""The workers, memory, idle, scaling and balance suites of ``bench/run`` (issues #4, #13, #15).

Each ``run_SUITE(ctx)`` gets a ``bench.Context`` (options, the two running
node backends, lists to register services and notes in) and returns
``(title, markdown body)``; ``bench.run_suite`` adds the date, command,
notes and machine and writes the section into RESULTS.md.

- memory: lbproxy's (and nginx's) peak RSS while relaying a big download to
  a client reading at a paced rate, then a big upload sent at a paced rate,
  with how early the app server saw the upload's first byte.
- idle: RSS with 100, 1,000 and 10,000 idle keep-alive clients, then
  whether idle clients are closed after the client timeout.
- scaling: wrk req/s and latency at growing concurrency, lbproxy beside nginx.
- workers: wrk req/s with 1 and 2 processes, lbproxy ``--workers N`` beside
  nginx ``worker_processes N``.
- balance: one backend answering in 1 ms and one in 50 ms; the slow one's
  share of the requests and the client's p99 per ``--balance`` strategy.
"""

import json
import os
import resource
import statistics
import subprocess
import sys
import time

from clients import IdleClients

import bench

CLIENTS = os.path.join(bench.BENCH_DIR, "clients.py")
MIB = 1024 * 1024
RSS_SAMPLE_S = 0.05

# nginx set up to stream both ways, as lbproxy should: no request body
# buffering, no response temp file (only its small in-memory buffers), any
# body size.
NGINX_STREAMING = """    proxy_request_buffering off;
    proxy_max_temp_file_size 0;
"""

RSS_TARGET_MEMORY_MIB = 120
RSS_TARGET_IDLE_MIB = 300
KIB_PER_IDLE_TARGET = 3.0  # issue #13: KiB of RSS per idle keep-alive client
P99_OF_NGINX_TARGET = 1.5  # issue #13: lbproxy p99 / nginx's at c=1024
P99_TARGET_CONNECTIONS = 1024
WORKERS_GAIN_TARGET = 1.3  # issue #13: lbproxy req/s with 2 workers / 1 worker
# Issue #15: the strategies compared, the two backends' delays, wrk's
# connections, and the slow server's share each strategy should give.
BALANCE_STRATEGIES = ("roundrobin", "leastconn", "random2", "ewma")
BALANCE_DELAYS_MS = (("fast", 1), ("slow", 50))
BALANCE_CONNECTIONS = 16
BALANCE_HALF = (0.4, 0.6)  # roundrobin: about half
BALANCE_QUARTER = 0.25  # leastconn and ewma: under a quarter
UPLOAD_LEAD_TARGET_S = 0.5


def mib(kib):
    """KiB -> MiB text."""
    return "-" if kib is None else f"{kib / 1024:.1f}"


def seconds(value, spec=".2f"):
    """Format seconds, '-' for None."""
    return "-" if value is None else format(value, spec)


class CpuMeter:
    """CPU % (of one core) of a service and of the whole machine over a span."""

    def __init__(self, service):
        self.service = service
        self.tick = os.sysconf("SC_CLK_TCK")
        self.start = time.monotonic()
        self.proc0 = service.cpu_ticks() if service else 0
        self.machine0 = bench.machine_busy_ticks()

    def stop(self):
        """Return (proxy CPU %, machine CPU %) since creation."""
        wall = max(time.monotonic() - self.start, 1e-6)
        proc = (self.service.cpu_ticks() - self.proc0) if self.service else 0
        machine = bench.machine_busy_ticks() - self.machine0
        return 100.0 * proc / self.tick / wall, 100.0 * machine / self.tick / wall


# ------------------------------------------------------------------ memory


def run_client_phase(target, kind, size, rate):
    """Run one paced download or upload and watch the target's memory.

    Returns a dict: the client's JSON result plus RSS figures (KiB) and CPU.
    """
    service = target.service
    pids = service.pids()
    hwm_reset = bench.reset_peak_rss(pids)
    before = bench.rss_kib(pids)
    argv = [sys.executable, CLIENTS, kind, "--port", str(target.port), "--rate", str(rate)]
    if kind == "download":
        argv += ["--path", f"/stream/{size}"]
    else:
        argv += ["--path", "/upload-timed", "--bytes", str(size)]
    limit = 4 * size / rate + 30
    meter = CpuMeter(service)
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = before
    killed = False
    while proc.poll() is None:
        peak = max(peak, bench.rss_kib(pids))
        if time.monotonic() - started > limit:
            proc.kill()
            killed = True
            break
        time.sleep(RSS_SAMPLE_S)
    out, err = proc.communicate()
    proxy_cpu, machine_cpu = meter.stop()
    peak = max(peak, bench.rss_kib(pids))
    hwm = sum(bench.proc_status_kib(pid, "VmHWM") for pid in pids) if hwm_reset else None
    try:
        result = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        result = {"error": f"client printed no result: {(out + err).strip()[-300:]}"}
    if killed:
        result["error"] = f"client killed after {limit:.0f} s"
    time.sleep(0.5)
    result.update(
        kind=kind,
        size=size,
        rss_before=before,
        rss_peak=peak,
        hwm=hwm,
        rss_after=bench.rss_kib(pids),
        proxy_cpu=proxy_cpu,
        machine_cpu=machine_cpu,
        alive=service.alive(),
    )
    return result


def download_verdict(r):
    """'ok' or what went wrong with a download."""
    if r.get("error"):
        return f"ERROR: {r['error']}"
    if r.get("status") != 200:
        return f"status {r.get('status')}"
    if r.get("body_bytes") != r["size"]:
        return f"got {r.get('body_bytes')} of {r['size']} bytes"
    return "ok, all bytes"


def upload_verdict(r):
    """'ok' or what went wrong with an upload."""
    resp = r.get("response")
    if r.get("status") != 200 or not isinstance(resp, dict):
        return f"status {r.get('status')} {resp!r:.80} {r.get('error') or ''}".strip()
    if resp.get("length") != r["size"]:
        return f"app got {resp.get('length')} of {r['size']} bytes"
    if r.get("error"):
        return f"ERROR: {r['error']}"
    return "ok, app got all bytes"


def run_memory(ctx):
    """The memory suite; returns (title, section body)."""
    args = ctx.args
    rate = args.rate_mb * 1e6
    downloads, uploads, rss_lines = [], [], []
    for name in ctx.targets_for("memory"):
        options = {}
        if name == "nginx":
            options["nginx_options"] = {"client_max_body_size": "0", "extra": NGINX_STREAMING}
        target = ctx.start(name, tag=f"memory-{name}", **options)
        if target.status != "ok":
            downloads.append((name, None))
            continue
        idle_start = target.service.rss_kib()
        for size_mib in args.download_mib:
            size = int(size_mib * MIB)
            log_phase(name, "download", size_mib)
            r = run_client_phase(target, "download", size, rate)
            downloads.append((name, r))
            log_result(name, r, download_verdict(r))
        for size_mib in args.upload_mib:
            size = int(size_mib * MIB)
            log_phase(name, "upload", size_mib)
            r = run_client_phase(target, "upload", size, rate)
            uploads.append((name, r))
            log_result(name, r, upload_verdict(r))
        rss_lines.append(
            f"- {name}: RSS {mib(idle_start)} MiB idle after start and sanity check, "
            f"{mib(target.service.rss_kib())} MiB after all transfers"
        )
        if not target.service.alive():
            ctx.notes.append(f"{name}: process exited during the memory suite")
        ctx.stop(target)
    return "Memory while streaming", memory_body(args, rate, downloads, uploads, rss_lines)


def log_phase(name, kind, size_mib):
    """Progress line before a transfer."""
    bench.log(f"{name}: paced {kind} of {size_mib:g} MiB")


def log_result(name, r, verdict):
    """Progress line after a transfer."""
    bench.log(
        f"{name}: {r['kind']} {r['size'] / MIB:g} MiB: {verdict}; peak RSS "
        f"{mib(r['rss_peak'])} MiB (VmHWM {mib(r['hwm'])}), proxy CPU {r['proxy_cpu']:.0f}%"
    )


def memory_body(args, rate, downloads, uploads, rss_lines):
    """Markdown for the memory suite."""
    lines = [
        f"A client on a raw socket reads a `GET /stream/N` body (node backend, "
        f"64 KiB writes, waits for 'drain') at a paced {args.rate_mb:g} MB/s "
        f"(10^6 bytes/s; `recv_into` 256 KiB then sleep to hold the rate), then sends "
        f"`POST /upload-timed` bodies (Content-Length set) paced the same way. "
        f"The proxy's RSS (VmRSS of all its processes, summed) is sampled every "
        f"{RSS_SAMPLE_S * 1000:.0f} ms; VmHWM is the kernel's peak, reset "
        f"(`clear_refs` 5) before each transfer. The app server notes the "
        f'wall-clock time of the first and last body byte it receives; "lead" is '
        f"how long before the client sent its last byte the app saw the first one "
        f"(negative: the proxy held the body until it was complete). nginx: "
        f"`proxy_request_buffering off; proxy_max_temp_file_size 0;` (streams both "
        f"ways, no temp files), 1 worker. Targets: peak RSS < "
        f"{RSS_TARGET_MEMORY_MIB} MiB, upload lead ≥ {UPLOAD_LEAD_TARGET_S} s.",
        "",
        "### Download (proxy relays to a slow reader)",
        "",
        "| target | size MiB | result | client s | client MB/s | RSS before MiB "
        "| peak RSS MiB | VmHWM MiB | RSS after MiB | proxy CPU % | machine CPU % |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in downloads:
        if r is None:
            lines.append(f"| {name} | not run (see notes) |  |  |  |  |  |  |  |  |  |")
            continue
        secs = r.get("seconds")
        speed = r.get("body_bytes", 0) / secs / 1e6 if secs else None
        lines.append(
            f"| {name} | {r['size'] / MIB:g} | {download_verdict(r)} | {seconds(secs)} "
            f"| {seconds(speed, '.0f')} | {mib(r['rss_before'])} | **{mib(r['rss_peak'])}** "
            f"| {mib(r['hwm'])} | {mib(r['rss_after'])} | {r['proxy_cpu']:.0f} "
            f"| {r['machine_cpu']:.0f} |"
        )
    lines += [
        "",
        "### Upload (client sends at a paced rate)",
        "",
        "| target | size MiB | result | client send s | client MB/s "
        "| lead: app's 1st byte before client's last, s | app's last byte after client's "
        "last, s | answer after client's last, s | RSS before MiB | peak RSS MiB "
        "| VmHWM MiB | RSS after MiB | proxy CPU % | machine CPU % |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    verdicts = []
    for name, r in uploads:
        secs = r.get("seconds")
        speed = r.get("sent", 0) / secs / 1e6 if secs else None
        resp = r.get("response") if isinstance(r.get("response"), dict) else {}
        last = r.get("last_sent_wall")
        lead = last_after = answer_after = None
        if last and resp.get("first_byte_ms") is not None:
            lead = last - resp["first_byte_ms"] / 1000
            last_after = resp["last_byte_ms"] / 1000 - last
        if last and r.get("response_wall"):
            answer_after = r["response_wall"] - last
        r["lead"] = lead
        lines.append(
            f"| {name} | {r['size'] / MIB:g} | {upload_verdict(r)} | {seconds(secs)} "
            f"| {seconds(speed, '.0f')} | **{seconds(lead)}** | {seconds(last_after)} "
            f"| {seconds(answer_after)} | {mib(r['rss_before'])} | **{mib(r['rss_peak'])}** "
            f"| {mib(r['hwm'])} | {mib(r['rss_after'])} | {r['proxy_cpu']:.0f} "
            f"| {r['machine_cpu']:.0f} |"
        )
    lb = [r for n, r in downloads + uploads if n == "lbproxy" and r]
    if lb:
        peak = max(r["rss_peak"] for r in lb)
        met = "met" if peak < RSS_TARGET_MEMORY_MIB * 1024 else "NOT met"
        verdicts.append(
            f"- lbproxy peak RSS over all transfers: **{mib(peak)} MiB** "
            f"(target < {RSS_TARGET_MEMORY_MIB} MiB: {met})"
        )
        by_size = sorted((r["kind"] == "upload", r["size"], r["kind"], r["rss_peak"]) for r in lb)
        growth = [f"{kind} {size / MIB:g} MiB → {mib(p)} MiB" for _up, size, kind, p in by_size]
        verdicts.append("- lbproxy peak RSS by transfer: " + ", ".join(growth))
    lb_up = [r for n, r in uploads if n == "lbproxy"]
    if lb_up:
        biggest = max(lb_up, key=lambda r: r["size"])
        lead = biggest.get("lead")
        met = "met" if lead is not None and lead >= UPLOAD_LEAD_TARGET_S else "NOT met"
        verdicts.append(
            f"- lbproxy, {biggest['size'] / MIB:g} MiB upload: the app server saw the first "
            f"byte {seconds(lead)} s before the client sent its last "
            f"(target ≥ {UPLOAD_LEAD_TARGET_S} s: {met})"
        )
    lines += ["", "### Summary", "", *verdicts, *rss_lines, ""]
    return "\n".join(lines)


# -------------------------------------------------------------------- idle


def checkpoints_for(total):
    """The connection counts RSS is reported at."""
    return sorted({c for c in (100, 1000, total) if c <= total})


def timed_get(port):
    """Milliseconds for one GET / on a new connection, or an error text."""
    import http.client

    start = time.monotonic()
    try:
        conn = http.client.HTTPConnection(bench.HOST, port, timeout=10)
        conn.request("GET", "/")
        resp = conn.getresponse()
        resp.read()
        conn.close()
    except (OSError, http.client.HTTPException) as exc:
        return f"failed: {type(exc).__name__}"
    if resp.status != 200:
        return f"status {resp.status}"
    return f"{(time.monotonic() - start) * 1000:.1f} ms"


def idle_nginx_options(total, keepalive_timeout="65s"):
    """nginx options with room for ``total`` client connections.

    ``worker_connections`` 20000 (more for more clients), but not above the
    open-file limit nginx inherits from the harness.
    """
    connections = max(20000, total + 4096)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY:
        connections = min(connections, hard)
    return {"worker_connections": connections, "keepalive_timeout": keepalive_timeout}


def open_deadline(total):
    """Seconds allowed to open ``total`` connections."""
    return 60 + total / 50


def idle_rss(ctx, name, total):
    """Open idle clients to target ``name``, RSS at each checkpoint.

    Returns (table rows, extra lines, RSS in KiB at the last checkpoint,
    KiB per idle client there: RSS growth since start / clients idle).
    """
    options = {"nginx_options": idle_nginx_options(total)} if name == "nginx" else {}
    target = ctx.start(name, tag=f"idle-{name}", **options)
    if target.status != "ok":
        return [f"| {name} | not run (see notes) |  |  |  |  |  |  |  |"], [], None, None
    service = target.service
    limits = ", ".join(f"pid {p}: {bench.proc_nofile(p)}" for p in service.pids())
    extra = [f"- {name}: open files limit {limits}"]
    clients = IdleClients(target.port)
    time.sleep(0.5)
    base = service.rss_kib()
    rows = [f"| {name} | 0 | 0 | 0 | 0 | {mib(base)} | - | - | - |"]
    rss = per_conn = None
    open_time = 0.0
    try:
        for count in checkpoints_for(total):
            t0 = time.monotonic()
            done = clients.grow_to(count, t0 + open_deadline(count))
            took = time.monotonic() - t0
            open_time += took
            meter = CpuMeter(service)
            clients.run_for(1.0)
            proxy_cpu, _machine = meter.stop()
            rss = service.rss_kib()
            per_conn = (rss - base) / clients.idle if clients.idle else None
            rows.append(
                f"| {name} | {count} | {clients.idle} | {clients.closed} | {clients.failed} "
                f"| **{mib(rss)}** | {seconds(per_conn, '.1f')} | {took:.1f}"
                f"{'' if done else ' (deadline)'} | {proxy_cpu:.0f} |"
            )
            bench.log(
                f"{name}: {clients.idle} idle clients open ({clients.closed} closed, "
                f"{clients.failed} failed), RSS {mib(rss)} MiB, idle CPU {proxy_cpu:.0f}%"
            )
        extra.append(
            f"- {name}: with {clients.idle} idle clients, GET / on a new connection "
            f"took {timed_get(target.port)}; opening them all took {open_time:.1f} s"
        )
        if clients.errors:
            extra.append(f"- {name}: client errors {clients.errors}")
    finally:
        clients.close_all()
    time.sleep(1.0)
    extra.append(
        f"- {name}: RSS {mib(service.rss_kib())} MiB 1 s after the clients closed "
        f"their connections (from {mib(base)} MiB before)"
    )
    if not service.alive():
        ctx.notes.append(f"{name}: process exited during the idle suite")
    ctx.stop(target)
    return rows, extra, rss, per_conn


def idle_timeout(ctx, name, total, timeout):
    """Open ``total`` idle clients to a target with a ``timeout`` s idle timeout.

    Returns a markdown table row: how many the server closed, and when.
    """
    if name == "nginx":
        options = {"nginx_options": idle_nginx_options(total, f"{int(timeout * 1000)}ms")}
    else:
        options = {"lbproxy_args": ["--client-timeout", f"{timeout:g}"]}
    target = ctx.start(name, tag=f"timeout-{name}", **options)
    if target.status != "ok":
        return f"| {name} | not run (see notes) |  |  |  |  |  |  |"
    clients = IdleClients(target.port)
    grace = 3.0
    try:
        t0 = time.monotonic()
        clients.grow_to(total, t0 + open_deadline(total))
        opened = time.monotonic() - t0
        answered = [c for c in clients.conns if c.idle_since is not None]
        last_idle = max((c.idle_since for c in answered), default=time.monotonic())
        deadline = last_idle + timeout + grace
        while clients.idle and time.monotonic() < deadline:
            clients.pump(0.1)
        ages = sorted(c.closed_at - c.idle_since for c in answered if c.closed_at is not None)
        in_window = sum(1 for a in ages if timeout - 0.5 <= a <= timeout + grace)
        early = sum(1 for a in ages if a < timeout - 0.5)
        still_open = clients.idle
        resets = sum(1 for c in answered if c.closed_at is not None and c.error)
    finally:
        clients.close_all()
    bench.log(
        f"{name}: timeout {timeout:g}s: {len(ages)}/{len(answered)} closed by the server, "
        f"{in_window} within [{timeout - 0.5:g}, {timeout + grace:g}] s idle, "
        f"{still_open} still open"
    )
    if ages:
        dist = (
            f"{ages[0]:.2f} / {statistics.median(ages):.2f} / "
            f"{ages[min(len(ages) - 1, int(0.99 * len(ages)))]:.2f} / {ages[-1]:.2f}"
        )
    else:
        dist = "-"
    if not target.service.alive():
        ctx.notes.append(f"{name}: process exited during the idle timeout check")
    ctx.stop(target)
    return (
        f"| {name} | {len(answered)} | {opened:.1f} | **{in_window}** | {early} "
        f"| **{still_open}** | {resets} | {dist} |"
    )


def run_idle(ctx):
    """The idle suite; returns (title, section body)."""
    args = ctx.args
    total = args.connections
    names = ctx.targets_for("idle")
    rows, extra, summary = [], [], []
    for name in names:
        r, e, rss, per_conn = idle_rss(ctx, name, total)
        rows += r
        extra += e
        if name == "lbproxy" and rss is not None:
            met = "met" if rss < RSS_TARGET_IDLE_MIB * 1024 else "NOT met"
            summary.append(
                f"- lbproxy RSS with {total} idle clients asked for: **{mib(rss)} MiB** "
                f"(target < {RSS_TARGET_IDLE_MIB} MiB at 10,000: {met})"
            )
        if per_conn is not None:
            target = ""
            if name == "lbproxy":
                ok = per_conn <= KIB_PER_IDLE_TARGET
                target = f" (issue #13: at most {KIB_PER_IDLE_TARGET:g} KiB: {bench.met(ok)})"
            summary.append(
                f"- {name}: **{per_conn:.2f} KiB per idle keep-alive client** at {total} "
                f"clients (RSS growth since start / clients open){target}"
            )
    timeout_rows = [idle_timeout(ctx, name, total, args.client_timeout) for name in names]
    t = args.client_timeout
    rss_head = (
        "| target | clients asked | open (answered, idle) | closed by server | failed "
        "| RSS MiB | KiB per idle client | s to open this step | idle CPU % |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    timeout_head = (
        f"| target | clients answered | s to open all | closed at idle age "
        f"{t - 0.5:g}–{t + 3:g} s | closed before {t - 0.5:g} s | still open at the end "
        "| closed by reset | idle age at close: min / median / p99 / max s |\n"
        "|---|---:|---:|---:|---:|---:|---:|---|"
    )
    body = f"""One process of the harness (`selectors`, non-blocking sockets, at most
32 connections being set up at once, below Twisted's listen backlog of 50)
opens keep-alive connections to the proxy; each sends one `GET /`
(HTTP/1.1), reads the answer and then stays idle. RSS is the VmRSS of all
the proxy's processes, summed, read after 1 s of quiet at each count ("idle
CPU" is the proxy's CPU during that second). Default timeouts (lbproxy
`--client-timeout` 60, nginx `keepalive_timeout 65s`); nginx
`worker_connections` {idle_nginx_options(total)["worker_connections"]} and
`worker_rlimit_nofile` to match (capped at the hard open-file limit). The
harness raises its open-file limit and the proxies inherit it (see the
summary and the machine table).

### RSS with idle keep-alive clients

{rss_head}
{chr(10).join(rows)}

### Idle clients closed after the client timeout

Proxies restarted with lbproxy `--client-timeout {t:g}` / nginx
`keepalive_timeout {t:g}s`; {total} clients opened as above, then watched
until {t + 3:g} s after the last one went idle. "Idle age" is the time
from a client's complete answer to the server closing its connection
(EOF or reset).

{timeout_head}
{chr(10).join(timeout_rows)}

### Summary

{chr(10).join(summary + extra)}
"""
    return "Idle keep-alive clients", body


# ----------------------------------------------------------------- scaling


def run_scaling(ctx):
    """The scaling suite; returns (title, section body)."""
    args = ctx.args
    biggest = max(args.concurrency)
    targets = []
    names = ctx.targets_for(
        "scaling", allowed=("lbproxy", "nginx", "lbproxy-nolog"), default=("lbproxy", "nginx")
    )
    for name in names:
        options = {}
        if name == "nginx":
            options["nginx_options"] = {"worker_connections": max(4096, 2 * biggest + 1024)}
        target = ctx.start(name, tag=f"scaling-{name}", **options)
        targets.append(target)
    bench.check_access_logs(ctx, targets)
    active = [t for t in targets if t.status == "ok"]
    scenarios = [f"small_c{c}" for c in args.concurrency]
    results = bench.run_rounds(ctx, active, scenarios)
    lines = [
        f"`wrk -t1 -cN -d{args.duration}s --latency --timeout={args.wrk_timeout}s` "
        f"GET / (small answer), same two node backends; {args.rounds} round(s), "
        f"targets and connection counts interleaved, each run after an uncounted 1 s "
        f"warm-up; medians over the rounds. CPU % as in the throughput suite "
        f"(percent of one core, the proxy's whole process tree). wrk opens its N "
        f"connections at the start of each run. lbproxy runs with its default options "
        f"(access log to the twistd log, stdout, into a file), nginx with its default "
        f"combined access log to a file. \"p99 / nginx's\" is the target's median p99 "
        f"over nginx's at the same N.",
        "",
        "| connections | target | req/s (median) | % of nginx | p50 ms | p99 ms "
        "| p99 / nginx's | errors (all rounds) | proxy CPU % | backends CPU % | wrk CPU % "
        "| other CPU % | req/s per round |",
        "|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    med = bench.median
    p99_ratios = []
    for c, scenario in zip(args.concurrency, scenarios, strict=True):
        nginx_rps = bench.rps_median(results, "nginx", scenario)
        nginx_p99 = bench.p99_median(results, "nginx", scenario)
        for target in targets:
            if target.status != "ok":
                lines.append(f"| {c} | {target.name} | {target.status} |" + "  |" * 10)
                continue
            runs = results.get((target.name, scenario), [])
            rps = bench.rps_median(results, target.name, scenario)
            p99 = bench.p99_median(results, target.name, scenario)
            if target.name == "lbproxy" and p99 is not None and nginx_p99:
                p99_ratios.append((c, p99, nginx_p99))
            per_round = ", ".join("FAIL" if r.failed else f"{r.rps:.0f}" for r in runs)
            lines.append(
                f"| {c} | {target.name} | {bench.fmt(rps, '.0f')} "
                f"| {bench.ratio(100 * rps if rps else None, nginx_rps, '.0f', '%')} "
                f"| {bench.fmt(med([r.p50_ms for r in runs]), '.2f')} "
                f"| **{bench.fmt(p99, '.2f')}** | {bench.ratio(p99, nginx_p99)} "
                f"| {bench.error_text(runs)} "
                f"| {bench.fmt(med([r.proxy_cpu for r in runs]), '.0f')} "
                f"| {bench.fmt(med([r.backend_cpu for r in runs]), '.0f')} "
                f"| {bench.fmt(med([r.wrk_cpu for r in runs]), '.0f')} "
                f"| {bench.fmt(med([r.other_cpu for r in runs]), '.0f')} "
                f"| {per_round} |"
            )
    failures = [
        f"{name} {scenario}: {r.failed}"
        for (name, scenario), runs in results.items()
        for r in runs
        if r.failed
    ]
    ctx.notes.extend(failures[:10])
    summary = []
    for c, p99, nginx_p99 in p99_ratios:
        line = (
            f"- c={c}: lbproxy p99 {p99:.2f} ms / nginx p99 {nginx_p99:.2f} ms = "
            f"**{p99 / nginx_p99:.2f}×**"
        )
        if c == P99_TARGET_CONNECTIONS:
            ok = p99 / nginx_p99 <= P99_OF_NGINX_TARGET
            line += f" (issue #13: at most {P99_OF_NGINX_TARGET:g}×: {bench.met(ok)})"
        summary.append(line)
    table = "\n".join(lines) + "\n"
    if summary:
        table += "\n### lbproxy p99 against nginx's\n\n" + "\n".join(summary) + "\n"
    print()
    print(table)
    return "How cost grows with concurrency", table


# ----------------------------------------------------------------- workers


def run_workers(ctx):
    """The workers suite: 1 and 2 processes of lbproxy and of nginx.

    lbproxy gets ``--workers N``, nginx ``worker_processes N``; GET / at the
    ``--worker-scenarios`` concurrencies, interleaved over the rounds. An
    lbproxy that refuses ``--workers`` (not written yet) is reported as not
    available and nginx still runs. Returns (title, section body).
    """
    args = ctx.args
    fronts = ctx.targets_for("workers")
    biggest = max(bench.scenario_spec(s)[1] for s in args.worker_scenarios)
    entries = []  # (front, workers, Target)
    for n in args.worker_counts:
        for front in fronts:
            label = f"{front}-w{n}"
            if front == "nginx":
                options = {
                    "nginx_options": {
                        "worker_processes": n,
                        "worker_connections": max(4096, 2 * biggest + 1024),
                    }
                }
            else:
                options = {"lbproxy_args": ["--workers", str(n)]}
            target = ctx.start(label, kind=front, tag=f"workers-{label}", **options)
            entries.append((front, n, target))
    targets = [t for _f, _n, t in entries]
    bench.check_access_logs(ctx, targets)
    active = [t for t in targets if t.status == "ok"]
    for t in active:
        bench.log(f"{t.name}: {len(t.service.pids())} process(es) {t.service.pids()}")
    results = bench.run_rounds(ctx, active, args.worker_scenarios)
    base_n = 1 if 1 in args.worker_counts else min(args.worker_counts)
    med = bench.median
    lines = [
        f"`wrk -t1 -cN -d{args.duration}s --latency --timeout={args.wrk_timeout}s` GET / "
        f"(small answer), same two node backends; {args.rounds} round(s), targets and "
        f"scenarios interleaved, each run after an uncounted 1 s warm-up; medians over the "
        f"rounds. `lbproxy-wN` is lbproxy with its default options plus `--workers N` "
        f"(access log to the twistd log, stdout, into a file); `nginx-wN` is nginx with "
        f"`worker_processes N` (default accept, no `reuseport`), its default combined "
        f'access log to a file, upstream keepalive 32 per worker. "processes" counts the '
        f"front's whole process tree (nginx: master + workers); proxy CPU % is summed over "
        f'it, "CPU % by process" shows each process\'s share, busiest first (medians '
        f'per rank). "× {base_n} worker(s)" is the req/s over the same front\'s with '
        f"{base_n}. On this 2-core machine wrk (one thread) and the two node backends use "
        f"the same cores, so a second worker cannot double anything: compare the two "
        f"fronts' ratios.",
        "",
    ]
    gains = {}
    for scenario in args.worker_scenarios:
        _path, connections, _extra = bench.scenario_spec(scenario)
        lines += [
            f"#### {scenario}: GET /, {connections} connections",
            "",
            f"| target | workers | processes | req/s (median) | × {base_n} worker(s) "
            "| % of nginx (same workers) | p50 ms | p99 ms | errors (all rounds) "
            "| proxy CPU % | CPU % by process | backends CPU % | wrk CPU % | other CPU % "
            "| req/s per round |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|---:|---:|---:|---|",
        ]
        for front, n, target in entries:
            if target.status != "ok":
                lines.append(f"| {target.name} | {n} | {target.status} |" + "  |" * 12)
                continue
            runs = results.get((target.name, scenario), [])
            rps = bench.rps_median(results, target.name, scenario)
            base = bench.rps_median(results, f"{front}-w{base_n}", scenario)
            nginx = bench.rps_median(results, f"nginx-w{n}", scenario)
            if n != base_n and rps and base:
                gains.setdefault(front, []).append((scenario, n, rps, base))
            ranks = max((len(r.proxy_procs) for r in runs), default=0)
            by_process = " + ".join(
                bench.fmt(med([r.proxy_procs[i] for r in runs if i < len(r.proxy_procs)]), ".0f")
                for i in range(ranks)
            )
            per_round = ", ".join("FAIL" if r.failed else f"{r.rps:.0f}" for r in runs)
            lines.append(
                f"| {target.name} | {n} | {ranks or '-'} | {bench.fmt(rps, '.0f')} "
                f"| {bench.ratio(rps, base)} "
                f"| {bench.ratio(100 * rps if rps else None, nginx, '.0f', '%')} "
                f"| {bench.fmt(med([r.p50_ms for r in runs]), '.2f')} "
                f"| {bench.fmt(med([r.p99_ms for r in runs]), '.2f')} "
                f"| {bench.error_text(runs)} "
                f"| {bench.fmt(med([r.proxy_cpu for r in runs]), '.0f')} "
                f"| {by_process or '-'} "
                f"| {bench.fmt(med([r.backend_cpu for r in runs]), '.0f')} "
                f"| {bench.fmt(med([r.wrk_cpu for r in runs]), '.0f')} "
                f"| {bench.fmt(med([r.other_cpu for r in runs]), '.0f')} "
                f"| {per_round} |"
            )
        lines.append("")
    summary = []
    for front in fronts:
        for scenario, n, rps, base in gains.get(front, []):
            line = (
                f"- {front}, {scenario}: {n} workers / {base_n}: {rps:.0f} / {base:.0f} req/s "
                f"= **{rps / base:.2f}×**"
            )
            if front == "lbproxy" and n == 2 and base_n == 1:
                ok = rps / base >= WORKERS_GAIN_TARGET
                line += f" (issue #13: at least {WORKERS_GAIN_TARGET:g}×: {bench.met(ok)})"
            summary.append(line)
        missing = [t.status for f, _n, t in entries if f == front and t.status != "ok"]
        if missing and not gains.get(front):
            summary.append(f"- {front}: {missing[0]}")
    failures = [
        f"{name} {scenario}: {r.failed}"
        for (name, scenario), runs in results.items()
        for r in runs
        if r.failed
    ]
    ctx.notes.extend(failures[:10])
    body = (
        "\n".join(lines)
        + "\n### Workers against one\n\n"
        + ("\n".join(summary) or "- (nothing to compare)")
    )
    print()
    print(body)
    return "Workers: one process against two", body + "\n"


# ----------------------------------------------------------------- balance


def backend_count(port):
    """How many GET / the backend on ``port`` has answered (its /count)."""
    import http.client

    conn = http.client.HTTPConnection(bench.HOST, port, timeout=10)
    try:
        conn.request("GET", "/count")
        return int(conn.getresponse().read())
    finally:
        conn.close()


def start_delayed_backends(ctx):
    """The balance suite's two node backends: answering GET / after 1 and 50 ms."""
    services = []
    for name, delay in BALANCE_DELAYS_MS:
        port = bench.free_port()
        argv = [bench.NODE, os.path.join(bench.BENCH_DIR, "backend.js"), str(port), name]
        service = bench.start_service(f"backend-{name}", [*argv, str(delay)], port, ctx.tmpdir)
        ctx.services.append(service)
        if not bench.wait_for_port(port, service.proc):
            raise SystemExit(f"backend {name} did not start:\n{service.log_tail()}")
        services.append(service)
    return services


def balance_run(target, backends, args):
    """One measured wrk run through ``target`` after a 1 s warm-up.

    Returns (WrkResult, the slow backend's share of the GET / answered
    during the measured run, or None).
    """
    fast, slow = backends
    scenario = f"small_c{BALANCE_CONNECTIONS}"
    bench.run_wrk(bench.wrk_argv(target.port, scenario, 1, args.wrk_timeout), 1)
    before = backend_count(fast.port), backend_count(slow.port)
    meter = CpuMeter(target.service)
    code, output = bench.run_wrk(
        bench.wrk_argv(target.port, scenario, args.duration, args.wrk_timeout), args.duration
    )
    result = bench.parse_wrk(output)
    result.proxy_cpu, _machine = meter.stop()
    if code != 0 and not result.failed:
        result.failed = f"wrk exited {code}"
    fast_n = backend_count(fast.port) - before[0]
    slow_n = backend_count(slow.port) - before[1]
    share = slow_n / (fast_n + slow_n) if fast_n + slow_n else None
    return result, share


def run_balance(ctx):
    """The balance suite (issue #15); returns (title, section body).

    Two node backends, one answering GET / in 1 ms and one in 50 ms; an
    lbproxy per strategy in front of them (its default options otherwise);
    ``wrk -t1 -c16`` through each in turn, interleaved over the rounds. The
    slow backend's share is read from the backends' own counts (GET
    /count) around each measured run.
    """
    args = ctx.args
    backends = start_delayed_backends(ctx)
    ports = [b.port for b in backends]
    bench.log(f"balance backends: fast on {ports[0]}, slow on {ports[1]}")
    targets = []
    for strategy in BALANCE_STRATEGIES:
        name = f"lbproxy-{strategy}"
        target = bench.start_target(
            name,
            ctx.tmpdir,
            ports,
            ctx.python,
            lbproxy_args=["--balance", strategy],
            tag=f"balance-{strategy}",
            kind="lbproxy",
        )
        if target.service:
            ctx.services.append(target.service)
        if target.status == "ok":
            problem, _seen = bench.sanity_check(target.port)
            if problem:
                target.status = f"failed sanity check: {problem}"
        if target.status != "ok":
            ctx.notes.append(f"{name}: {target.status}")
        bench.log(f"{name}: port {target.port}, {target.status}")
        targets.append((strategy, target))
    active = [(s, t) for s, t in targets if t.status == "ok"]
    runs = {}
    for round_no in range(args.rounds):
        shift = round_no % len(active) if active else 0
        for strategy, target in active[shift:] + active[:shift]:
            result, share = balance_run(target, backends, args)
            runs.setdefault(strategy, []).append((result, share))
            bench.log(
                f"round {round_no + 1} {strategy:<10} slow share "
                f"{bench.fmt(share, '.1%')}  {result.rps:8.0f} req/s  "
                f"p99 {bench.fmt(result.p99_ms, '.2f')} ms  errors {bench.error_text([result])}"
                + (f"  ({result.failed})" if result.failed else "")
            )
    med = bench.median
    lines = [
        f"Two node backends (`bench/backend.js PORT NAME DELAY_MS`): GET / answered "
        f"after {BALANCE_DELAYS_MS[0][1]} ms by one and {BALANCE_DELAYS_MS[1][1]} ms by "
        f"the other. One lbproxy per strategy (`--balance NAME`, default options "
        f"otherwise, access log on) in front of both; `wrk -t1 -c{BALANCE_CONNECTIONS} "
        f"-d{args.duration}s --latency --timeout={args.wrk_timeout}s` GET / through each in "
        f"turn, {args.rounds} round(s) interleaved, each run after an uncounted 1 s "
        f"warm-up. The slow server's share is counted by the backends themselves (GET "
        f"/count before and after each measured run). Medians over the rounds.",
        "",
        "| strategy | slow server's share | share per round | req/s | p50 ms | p99 ms "
        "| errors (all rounds) | proxy CPU % |",
        "|---|---:|---|---:|---:|---:|---|---:|",
    ]
    summary = []
    for strategy, target in targets:
        if target.status != "ok":
            lines.append(f"| {strategy} | {target.status} |" + "  |" * 6)
            continue
        measured = runs.get(strategy, [])
        results = [r for r, _ in measured]
        shares = [s for _, s in measured]
        share = med(shares)
        lines.append(
            f"| {strategy} | **{bench.fmt(share, '.1%')}** "
            f"| {', '.join(bench.fmt(s, '.1%') for s in shares)} "
            f"| {bench.fmt(med([r.rps for r in results if not r.failed]), '.0f')} "
            f"| {bench.fmt(med([r.p50_ms for r in results]), '.2f')} "
            f"| **{bench.fmt(med([r.p99_ms for r in results]), '.2f')}** "
            f"| {bench.error_text(results)} "
            f"| {bench.fmt(med([r.proxy_cpu for r in results]), '.0f')} |"
        )
        errors = bench.error_text(results)
        if share is None:
            continue
        if strategy == "roundrobin":
            low, high = BALANCE_HALF
            verdict = f"about half ({low:.0%}–{high:.0%}): {bench.met(low <= share <= high)}"
        elif strategy in ("leastconn", "ewma"):
            verdict = f"under {BALANCE_QUARTER:.0%}: {bench.met(share < BALANCE_QUARTER)}"
        else:
            verdict = "no target"
        summary.append(
            f"- {strategy}: slow server's share **{share:.1%}** ({verdict}); errors "
            f"{errors} (target 0: {bench.met(errors == '0')})"
        )
    failures = [
        f"{strategy}: {r.failed}" for strategy, rs in runs.items() for r, _ in rs if r.failed
    ]
    ctx.notes.extend(failures[:10])
    body = "\n".join(lines) + "\n\n### Issue #15 targets\n\n" + "\n".join(summary) + "\n"
    print()
    print(body)
    return "Balancing: a slow server's share by strategy", body
