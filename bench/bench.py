"""Benchmark harness for lbproxy (run it through ``bench/run``).

What it does:

1. installs nginx, haproxy and wrk with apt-get when they are missing;
2. starts two node backends (``bench/backend.js``) on free loopback ports;
3. starts every proxy under test on its own free loopback port, all in front
   of the same two backends: nginx, haproxy, stock Twisted
   (``bench/stock_proxy.py``) and lbproxy; "direct" is wrk straight to
   backend A, as a reference;
4. runs ``wrk -t1 --latency`` over every (target, scenario), interleaved
   over several rounds, each run preceded by an uncounted 1 s warm-up;
5. prints the medians and ratios and writes them to ``bench/RESULTS.md``.

Only 127.0.0.1 is ever targeted. Every process the harness starts is
stopped at the end, also on errors and Ctrl-C. Python stdlib only.
"""

import argparse
import datetime
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
HOST = "127.0.0.1"
VENV_PYTHON = "/work/venv/bin/python"
NODE = shutil.which("node") or "/usr/bin/node"
SBIN_PATH = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"

ALL_TARGETS = ["direct", "nginx", "haproxy", "stock", "lbproxy"]

# name -> (path, connections, extra wrk arguments)
SCENARIOS = {
    "small_c32": ("/", 32, []),
    "small_c256": ("/", 256, []),
    "64k_c32": ("/64k", 32, []),
    "post1m_c32": ("/upload", 32, ["-s", os.path.join(BENCH_DIR, "post1m.lua")]),
}

START_DEADLINE = 20.0  # seconds for a process to accept connections
STOP_DEADLINE = 5.0  # seconds between SIGTERM and SIGKILL


# ---------------------------------------------------------------- utilities


def log(message):
    """Print a progress line to stderr."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def free_port():
    """Return a currently free TCP port on 127.0.0.1 (bind port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_for_port(port, proc, deadline_s=START_DEADLINE):
    """Poll 127.0.0.1:port until it accepts a connection.

    Returns True once it does; False if ``proc`` exits or the deadline
    passes first.
    """
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def which(name):
    """Find an executable, looking in the sbin directories as well."""
    return shutil.which(name, path=SBIN_PATH)


def ensure_tools():
    """Install nginx, haproxy and wrk with apt-get if any is missing."""
    missing = [name for name in ("nginx", "haproxy", "wrk") if not which(name)]
    if not missing:
        return
    log(f"installing missing packages: {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", *missing], check=True, env=env)
    still = [name for name in missing if not which(name)]
    if still:
        raise SystemExit(f"could not install: {' '.join(still)}")


def has_twisted(python):
    """Tell whether ``python`` can import Twisted's web proxy.

    Runs outside the repo: its ``twisted/plugins`` folder would otherwise
    pass for a (namespace) ``twisted`` package.
    """
    try:
        result = subprocess.run(
            [python, "-c", "import twisted.web.proxy"],
            check=False,
            capture_output=True,
            timeout=30,
            cwd=tempfile.gettempdir(),
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def pick_python(option):
    """Choose the Python that runs the Twisted proxies.

    ``--python``, then $LBPROXY_BENCH_PYTHON, then the Python running the
    harness if it has Twisted, then /work/venv/bin/python.
    """
    chosen = option or os.environ.get("LBPROXY_BENCH_PYTHON")
    if chosen:
        return chosen
    if has_twisted(sys.executable):
        return sys.executable
    return VENV_PYTHON


def command_output(argv, env=None):
    """Run a short command and return its stripped stdout+stderr, or '?'."""
    try:
        result = subprocess.run(
            argv,
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
            cwd=tempfile.gettempdir(),
        )
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return (result.stdout + result.stderr).strip() or "?"


# -------------------------------------------------------- process handling


def session_cpu_ticks(sid):
    """Sum utime+stime (clock ticks) of all live processes in session sid.

    Each process the harness starts is a session leader (start_new_session),
    so this covers e.g. nginx's master and worker together.
    """
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                data = stat.read()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2 :].split()
        if int(fields[3]) == sid:
            total += int(fields[11]) + int(fields[12])
    return total


def machine_busy_ticks():
    """Busy CPU time of the whole machine so far (all cores), in clock ticks.

    user + nice + system + irq + softirq + steal from /proc/stat.
    """
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return user + nice + system + irq + softirq + steal


@dataclass
class Service:
    """A background process started by the harness."""

    name: str
    port: int
    proc: subprocess.Popen
    logfile: str

    def alive(self):
        """Tell whether the process is still running."""
        return self.proc.poll() is None

    def cpu_ticks(self):
        """CPU time used so far by the process and its children, in ticks."""
        return session_cpu_ticks(self.proc.pid)

    def log_tail(self, lines=15):
        """Return the last lines of the process's output file."""
        try:
            with open(self.logfile, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def stop(self):
        """SIGTERM the process group, then SIGKILL it after a deadline."""
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=STOP_DEADLINE)


def start_service(name, argv, port, tmpdir, env=None, cwd=None):
    """Start ``argv`` in its own session, output to ``<tmpdir>/<name>.out``.

    Waits for it to accept connections on ``port``; returns the Service
    (check ``ok`` on the result with wait_for_port separately).
    """
    logfile = os.path.join(tmpdir, f"{name}.out")
    with open(logfile, "wb") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            cwd=cwd or tmpdir,
        )
    return Service(name, port, proc, logfile)


# ------------------------------------------------------------ proxy configs


def nginx_conf(tmpdir, port, backends):
    """Write an nginx config (1 worker, keepalive upstream) and return it."""
    user = "user root;\n" if os.geteuid() == 0 else ""
    servers = "".join(f"        server {HOST}:{p};\n" for p in backends)
    conf = f"""{user}worker_processes 1;
pid {tmpdir}/nginx.pid;
error_log {tmpdir}/nginx-error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log {tmpdir}/nginx-access.log;
    client_body_temp_path {tmpdir}/nginx-client-body;
    proxy_temp_path {tmpdir}/nginx-proxy;
    fastcgi_temp_path {tmpdir}/nginx-fastcgi;
    uwsgi_temp_path {tmpdir}/nginx-uwsgi;
    scgi_temp_path {tmpdir}/nginx-scgi;
    keepalive_timeout 65s;
    keepalive_requests 100000;
    client_max_body_size 8m;
    client_body_buffer_size 2m;
    upstream backends {{
{servers}        keepalive 32;
        keepalive_requests 100000;
    }}
    server {{
        listen {HOST}:{port};
        location / {{
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""
    path = os.path.join(tmpdir, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    return path


def haproxy_conf(tmpdir, port, backends):
    """Write a haproxy config (1 thread, roundrobin, http-reuse safe)."""
    servers = "".join(f"    server b{i} {HOST}:{p}\n" for i, p in enumerate(backends))
    conf = f"""global
    nbthread 1
    maxconn 4096
    log stdout format raw local0

defaults
    mode http
    log global
    option httplog
    timeout connect 5s
    timeout client 65s
    timeout server 65s
    timeout http-keep-alive 65s
    http-reuse safe

frontend bench
    bind {HOST}:{port}
    default_backend backends

backend backends
    balance roundrobin
{servers}"""
    path = os.path.join(tmpdir, "haproxy.cfg")
    with open(path, "w") as f:
        f.write(conf)
    return path


def lbproxy_env():
    """Environment for the lbproxy process: the repo's tree on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [REPO_DIR, env.get("PYTHONPATH", "")] if p)
    return env


def lbproxy_importable(python):
    """Tell whether ``python`` can import lbproxy (from the repo or installed)."""
    try:
        result = subprocess.run(
            [python, "-c", "import lbproxy"],
            check=False,
            capture_output=True,
            timeout=30,
            env=lbproxy_env(),
            cwd=tempfile.gettempdir(),
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


@dataclass
class Target:
    """One thing wrk is pointed at, and whether it could be used."""

    name: str
    port: int = 0
    service: Service | None = None
    status: str = "ok"  # "ok", or why it was left out


def start_target(name, tmpdir, backends, python):
    """Start the proxy called ``name``; return a Target (status says if not)."""
    port = free_port()
    upstream = ",".join(f"{HOST}:{p}" for p in backends)
    if name == "nginx":
        conf = nginx_conf(tmpdir, port, backends)
        argv = [
            which("nginx"),
            "-p",
            tmpdir,
            "-e",
            f"{tmpdir}/nginx-error.log",
            "-c",
            conf,
            "-g",
            "daemon off;",
        ]
        service = start_service(name, argv, port, tmpdir)
    elif name == "haproxy":
        conf = haproxy_conf(tmpdir, port, backends)
        argv = [which("haproxy"), "-db", "-f", conf]
        service = start_service(name, argv, port, tmpdir)
    elif name == "stock":
        argv = [
            python,
            os.path.join(BENCH_DIR, "stock_proxy.py"),
            "--port",
            str(port),
            "--upstream",
            upstream,
            "--access-log",
            os.path.join(tmpdir, "stock-access.log"),
        ]
        service = start_service(name, argv, port, tmpdir)
    elif name == "lbproxy":
        if not lbproxy_importable(python):
            return Target(name, status=f"not available (cannot import lbproxy with {python})")
        # twistd (not "python -m twisted", which is `twist` and has no -n).
        argv = [
            python,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile",
            os.path.join(tmpdir, "lbproxy.pid"),
            "--logfile",
            os.path.join(tmpdir, "lbproxy.log"),
            "lbproxy",
            # An access log file, as nginx and the stock proxy write.
            "--access-log",
            os.path.join(tmpdir, "lbproxy-access.log"),
            "--upstream",
            upstream,
            "--listen",
            f"tcp:{port}:interface={HOST}",
        ]
        service = start_service(name, argv, port, tmpdir, env=lbproxy_env())
    else:
        raise ValueError(name)
    target = Target(name, port, service)
    if not wait_for_port(port, service.proc):
        state = "exited" if not service.alive() else "not listening"
        target.status = f"failed to start ({state}); see {service.logfile}"
        log(f"{name} failed to start; last output:\n{service.log_tail()}")
        if name == "lbproxy":
            lbproxy_log = os.path.join(tmpdir, "lbproxy.log")
            if os.path.exists(lbproxy_log):
                with open(lbproxy_log, errors="replace") as f:
                    log("lbproxy.log:\n" + "".join(f.readlines()[-15:]))
    return target


def sanity_check(port):
    """Check a target answers GET /, GET /64k and POST /upload correctly.

    Returns (problem or None, set of backend names seen on GET /).
    """
    import http.client

    seen = set()
    try:
        conn = http.client.HTTPConnection(HOST, port, timeout=10)
        for _ in range(4):
            conn.request("GET", "/")
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200 or not body.startswith(b"PORT "):
                return f"GET / -> {resp.status} {body[:60]!r}", seen
            seen.add(body.decode().split()[1])
        conn.request("GET", "/64k")
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200 or len(body) != 65536:
            return f"GET /64k -> {resp.status}, {len(body)} bytes", seen
        payload = b"x" * (1024 * 1024)
        conn.request(
            "POST", "/upload", body=payload, headers={"Content-Type": "application/octet-stream"}
        )
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200 or body.strip() != str(len(payload)).encode():
            return f"POST /upload -> {resp.status} {body[:60]!r}", seen
        conn.close()
    except (OSError, http.client.HTTPException) as exc:
        return f"{type(exc).__name__}: {exc}", seen
    return None, seen


# --------------------------------------------------------------------- wrk


UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def parse_time_ms(text):
    """Convert a wrk duration such as '1.23ms' or '850.00us' to milliseconds."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not match:
        return None
    return float(match.group(1)) * UNITS_MS[match.group(2)]


@dataclass
class WrkResult:
    """The numbers taken from one wrk run."""

    rps: float = 0.0
    requests: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    non2xx: int = 0
    socket_errors: dict = field(default_factory=dict)
    failed: str = ""  # set if wrk itself failed or printed nothing usable
    proxy_cpu: float | None = None  # % of one core, proxy process(es)
    backend_cpu: float | None = None  # % of one core, both backends together
    wrk_cpu: float | None = None  # % of one core, wrk
    other_cpu: float | None = None  # % of one core, rest of the machine

    def error_count(self):
        """Total of non-2xx/3xx responses and socket errors."""
        return self.non2xx + sum(self.socket_errors.values())


def parse_wrk(output):
    """Parse wrk --latency output into a WrkResult."""
    result = WrkResult()
    match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if match:
        result.rps = float(match.group(1))
    else:
        result.failed = "no Requests/sec in wrk output"
    match = re.search(r"(\d+) requests in", output)
    if match:
        result.requests = int(match.group(1))
    for pct, attr in (("50", "p50_ms"), ("99", "p99_ms")):
        match = re.search(rf"^\s+{pct}%\s+(\S+)", output, re.MULTILINE)
        if match:
            setattr(result, attr, parse_time_ms(match.group(1)))
    match = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    if match:
        result.non2xx = int(match.group(1))
    match = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if match:
        result.socket_errors = {
            kind: int(n)
            for kind, n in zip(("connect", "read", "write", "timeout"), match.groups(), strict=True)
            if int(n)
        }
    return result


def wrk_argv(port, scenario, duration, timeout):
    """Build the wrk command line for one run."""
    path, connections, extra = SCENARIOS[scenario]
    return [
        which("wrk"),
        "-t1",
        f"-c{connections}",
        f"-d{duration}s",
        f"--timeout={timeout}s",
        "--latency",
        *extra,
        f"http://{HOST}:{port}{path}",
    ]


def run_wrk(argv, duration):
    """Run wrk (bounded by a timeout) and return (exit code, output)."""
    try:
        proc = subprocess.run(
            argv, check=False, capture_output=True, text=True, timeout=duration + 30
        )
    except subprocess.TimeoutExpired:
        return -1, "wrk timed out"
    return proc.returncode, proc.stdout + proc.stderr


def measure(target, scenario, args, backends):
    """Warm up, then run wrk once for (target, scenario) and return a WrkResult.

    Also samples the CPU used by the proxy, the backends and wrk during the
    measured run, to show which of them was the bottleneck, and the rest of
    the machine's busy CPU ("other": idle proxies, the harness, anything else
    running on the machine), to show noise.
    """
    run_wrk(wrk_argv(target.port, scenario, 1, args.wrk_timeout), 1)
    argv = wrk_argv(target.port, scenario, args.duration, args.wrk_timeout)
    proxy_before = target.service.cpu_ticks() if target.service else 0
    backend_before = sum(b.cpu_ticks() for b in backends)
    wrk_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    machine_before = machine_busy_ticks()
    start = time.monotonic()
    code, output = run_wrk(argv, args.duration)
    wall = time.monotonic() - start
    machine_after = machine_busy_ticks()
    wrk_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    backend_after = sum(b.cpu_ticks() for b in backends)
    proxy_after = target.service.cpu_ticks() if target.service else 0

    result = parse_wrk(output)
    if code != 0 and not result.failed:
        result.failed = f"wrk exited {code}"
    if result.failed:
        result.failed += ": " + output.strip().replace("\n", " ")[:200]
    tick = os.sysconf("SC_CLK_TCK")
    if target.service:
        result.proxy_cpu = 100.0 * (proxy_after - proxy_before) / tick / wall
    result.backend_cpu = 100.0 * (backend_after - backend_before) / tick / wall
    wrk_cpu_s = (wrk_after.ru_utime - wrk_before.ru_utime) + (
        wrk_after.ru_stime - wrk_before.ru_stime
    )
    result.wrk_cpu = 100.0 * wrk_cpu_s / wall
    machine_cpu = 100.0 * (machine_after - machine_before) / tick / wall
    result.other_cpu = max(
        0.0, machine_cpu - (result.proxy_cpu or 0.0) - result.backend_cpu - result.wrk_cpu
    )
    return result


# ----------------------------------------------------------------- report


def median(values):
    """Median of the non-None values, or None."""
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, spec, missing="-"):
    """Format ``value`` with ``spec``, or ``missing`` when it is None."""
    return missing if value is None else format(value, spec)


def error_text(results):
    """Summarise the errors of several runs: '0' or e.g. 'non2xx 3, timeout 12'."""
    totals = {}
    for r in results:
        if r.non2xx:
            totals["non2xx"] = totals.get("non2xx", 0) + r.non2xx
        for kind, n in r.socket_errors.items():
            totals[kind] = totals.get(kind, 0) + n
    failed = sum(1 for r in results if r.failed)
    parts = [f"{k} {v}" for k, v in totals.items()]
    if failed:
        parts.append(f"{failed} run(s) FAILED")
    return ", ".join(parts) if parts else "0"


def build_tables(scenarios, targets, results):
    """Return the markdown result tables, one per scenario, as a string.

    ``results`` maps (target, scenario) to the list of WrkResult of its rounds.
    """
    lines = []
    for scenario in scenarios:
        path, connections, _ = SCENARIOS[scenario]
        method = "POST 1 MiB" if path == "/upload" else "GET"
        lines.append(f"### {scenario}: {method} {path}, {connections} connections\n")
        lines.append(
            "| target | req/s (median) | × stock | % of nginx | p50 ms | p99 ms "
            "| errors (all rounds) | proxy CPU % | backends CPU % | wrk CPU % | other CPU % "
            "| req/s per round |"
        )
        lines.append("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|")

        def rps_of(name, scenario=scenario):
            runs = results.get((name, scenario))
            return median([r.rps for r in runs if not r.failed]) if runs else None

        stock, nginx = rps_of("stock"), rps_of("nginx")
        for target in targets:
            if target.status != "ok":
                lines.append(f"| {target.name} | {target.status} |  |  |  |  |  |  |  |  |  |  |")
                continue
            runs = results.get((target.name, scenario), [])
            if not runs:
                continue
            rps = rps_of(target.name)
            x_stock = f"{rps / stock:.2f}×" if rps and stock else "-"
            of_nginx = f"{100 * rps / nginx:.0f}%" if rps and nginx else "-"
            per_round = ", ".join("FAIL" if r.failed else f"{r.rps:.0f}" for r in runs)
            lines.append(
                f"| {target.name} | {fmt(rps, '.0f')} | {x_stock} | {of_nginx} "
                f"| {fmt(median([r.p50_ms for r in runs]), '.2f')} "
                f"| {fmt(median([r.p99_ms for r in runs]), '.2f')} "
                f"| {error_text(runs)} "
                f"| {fmt(median([r.proxy_cpu for r in runs]), '.0f')} "
                f"| {fmt(median([r.backend_cpu for r in runs]), '.0f')} "
                f"| {fmt(median([r.wrk_cpu for r in runs]), '.0f')} "
                f"| {fmt(median([r.other_cpu for r in runs]), '.0f')} "
                f"| {per_round} |"
            )
        lines.append("")
    return "\n".join(lines)


def machine_info(python):
    """Collect a description of the machine and the tool versions."""
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/loadavg") as f:
            loadavg = " ".join(f.read().split()[:3])
    except OSError:
        loadavg = "?"
    proxy_python = command_output(
        [
            python,
            "-c",
            "import sys, twisted; print(sys.version.split()[0], 'Twisted', twisted.__version__)",
        ]
    )
    wrk_version = command_output([which("wrk"), "--version"]).splitlines()[0]
    git_rev = command_output(["git", "-C", REPO_DIR, "rev-parse", "--short", "HEAD"])
    if " " in git_rev:
        git_rev = "(no commit)"
    return [
        ("nproc", str(os.cpu_count())),
        ("CPU", cpu),
        ("kernel", f"{platform.system()} {platform.release()}"),
        ("load average at start", loadavg),
        ("proxy python", f"{python}: Python {proxy_python}"),
        ("nginx", command_output([which("nginx"), "-v"])),
        ("haproxy", command_output([which("haproxy"), "-v"]).splitlines()[0]),
        ("node", command_output([NODE, "--version"])),
        ("wrk", wrk_version),
        ("repo HEAD", git_rev),
    ]


def write_report(path, command, started, args, info, notes, tables):
    """Write RESULTS.md with the tables, command, machine and date."""
    scenario_lines = "\n".join(
        f"- `{name}`: {'POST 1 MiB body to' if p == '/upload' else 'GET'} `{p}`, {c} connections"
        for name, (p, c, _) in SCENARIOS.items()
        if name in args.scenarios
    )
    machine = "\n".join(f"| {k} | {v} |" for k, v in info)
    note_lines = "\n".join(f"- {n}" for n in notes) or "- none"
    text = f"""# lbproxy benchmark results

Date: {started.strftime("%Y-%m-%d %H:%M:%S %Z").strip()}

Command: `{command}`

{args.rounds} round(s) × {args.duration} s per (target, scenario), interleaved,
each run after an uncounted 1 s warm-up; `wrk -t1 --latency --timeout={args.wrk_timeout}s`.
Figures are medians over the rounds. Errors are non-2xx/3xx responses plus wrk
socket errors (connect/read/write/timeout), summed over all rounds. CPU % is
percent of one core (200 = both cores) during the measured run: proxy = all
its processes, backends = both node backends together, other = the rest of
the machine's busy time (idle proxies, the harness, anything else running).

These are ratios within one run on a shared, noisy 2-core machine where wrk,
the proxy and the backends compete for the same cores: compare rows within a
table, not with other machines or other runs.

Scenarios:
{scenario_lines}

## Results

{tables}
## Notes

{note_lines}

## Machine

| | |
|---|---|
{machine}
"""
    with open(path, "w") as f:
        f.write(text)


# -------------------------------------------------------------------- main


def raise_interrupt(signum, frame):
    """Signal handler turning SIGTERM into KeyboardInterrupt."""
    raise KeyboardInterrupt


def parse_args(argv):
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="bench/run",
        description="Benchmark lbproxy against nginx, haproxy and stock Twisted.",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument(
        "--duration", type=int, default=5, help="seconds per measured wrk run (default 5)"
    )
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help=f"comma list of {','.join(SCENARIOS)}"
    )
    parser.add_argument(
        "--targets", default=",".join(ALL_TARGETS), help=f"comma list of {','.join(ALL_TARGETS)}"
    )
    parser.add_argument(
        "--out",
        default=os.path.join(BENCH_DIR, "RESULTS.md"),
        help="report file (default bench/RESULTS.md)",
    )
    parser.add_argument(
        "--python",
        default=None,
        help="python with Twisted for the stock proxy and lbproxy "
        "(default $LBPROXY_BENCH_PYTHON, this python, /work/venv)",
    )
    parser.add_argument(
        "--wrk-timeout", type=int, default=5, help="wrk --timeout in seconds (default 5)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 round of 2 s")
    parser.add_argument(
        "--keep-tmp", action="store_true", help="keep the temp dir with configs and logs"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration = 1, 2
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    args.targets = [t for t in args.targets.split(",") if t]
    for s in args.scenarios:
        if s not in SCENARIOS:
            parser.error(f"unknown scenario {s!r}; choose from {', '.join(SCENARIOS)}")
    for t in args.targets:
        if t not in ALL_TARGETS:
            parser.error(f"unknown target {t!r}; choose from {', '.join(ALL_TARGETS)}")
    if args.rounds < 1 or args.duration < 1:
        parser.error("--rounds and --duration must be at least 1")
    return args


def main(argv=None):
    """Run the whole benchmark; return the exit code."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    argv0 = os.environ.get("LBPROXY_BENCH_ARGV0", "bench/run")
    command = " ".join(shlex.quote(a) for a in [argv0, *sys.argv[1:]])
    started = datetime.datetime.now().astimezone()
    ensure_tools()
    python = pick_python(args.python)
    if any(t in ("stock", "lbproxy") for t in args.targets) and not has_twisted(python):
        raise SystemExit(f"{python} cannot import twisted; use --python")

    # Turn SIGTERM into an exception so the finally block below cleans up.
    signal.signal(signal.SIGTERM, raise_interrupt)

    tmpdir = tempfile.mkdtemp(prefix="lbproxy-bench-")
    keep_tmp = args.keep_tmp
    services = []
    notes = []
    try:
        backends = []
        for name in ("A", "B"):
            port = free_port()
            service = start_service(
                f"backend-{name}",
                [NODE, os.path.join(BENCH_DIR, "backend.js"), str(port), name],
                port,
                tmpdir,
            )
            services.append(service)
            if not wait_for_port(port, service.proc):
                raise SystemExit(f"backend {name} did not start:\n{service.log_tail()}")
            backends.append(service)
        backend_ports = [b.port for b in backends]
        log(f"backends on {HOST}:{backend_ports[0]} and {HOST}:{backend_ports[1]}")

        targets = []
        for name in args.targets:
            if name == "direct":
                targets.append(Target(name, backend_ports[0]))
                continue
            target = start_target(name, tmpdir, backend_ports, python)
            if target.service:
                services.append(target.service)
            targets.append(target)
        for target in targets:
            if target.status != "ok":
                keep_tmp = keep_tmp or target.status.startswith("failed")
                notes.append(f"{target.name}: {target.status}")
                continue
            problem, seen = sanity_check(target.port)
            if problem:
                target.status = f"failed sanity check: {problem}"
                notes.append(f"{target.name}: {target.status}")
                keep_tmp = True
            elif target.name != "direct" and len(seen) < 2:
                notes.append(
                    f"{target.name}: GET / only reached backend(s) "
                    f"{sorted(seen)} in 4 requests (round robin expected)"
                )
            log(f"{target.name}: port {target.port}, {target.status}")

        active = [t for t in targets if t.status == "ok"]
        total = len(active) * len(args.scenarios) * args.rounds
        log(
            f"{total} runs of {args.duration}s (+1s warm-up) each, "
            f"about {total * (args.duration + 1.5) / 60:.1f} min"
        )
        results = {}
        done = 0
        for round_no in range(args.rounds):
            for scenario in args.scenarios:
                # Rotate the order every round so no target always goes first.
                shift = round_no % len(active) if active else 0
                for target in active[shift:] + active[:shift]:
                    if target.service and not target.service.alive():
                        result = WrkResult(failed="process died")
                    else:
                        result = measure(target, scenario, args, backends)
                    results.setdefault((target.name, scenario), []).append(result)
                    done += 1
                    log(
                        f"[{done}/{total}] round {round_no + 1} {scenario:<10} "
                        f"{target.name:<8} {result.rps:10.0f} req/s  "
                        f"p99 {fmt(result.p99_ms, '.2f')} ms  "
                        f"errors {error_text([result])}  "
                        f"other CPU {fmt(result.other_cpu, '.0f')}%"
                        + (f"  ({result.failed})" if result.failed else "")
                    )
        for target in active:
            if target.service and not target.service.alive():
                notes.append(
                    f"{target.name}: process exited during the run "
                    f"(code {target.service.proc.returncode})"
                )
                keep_tmp = True

        tables = build_tables(args.scenarios, targets, results)
        print()
        print(tables)
        info = machine_info(python)
        write_report(args.out, command, started, args, info, notes, tables)
        for n in notes:
            log(f"note: {n}")
        log(f"wrote {args.out}")
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        for service in reversed(services):
            service.stop()
        if keep_tmp:
            log(f"kept configs and logs in {tmpdir}")
        else:
            shutil.rmtree(tmpdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
