"""Benchmark harness for lbproxy (run it through ``bench/run``).

``--suite throughput`` (the default) is described below; ``workers``,
``memory``, ``idle``, ``scaling`` and ``balance`` live in ``suites.py`` and
``all`` runs the six in turn. Each suite writes its own section of ``bench/RESULTS.md`` (between
``<!-- suite:NAME -->`` markers), leaving the other sections alone.

What the throughput suite does:

1. installs nginx, haproxy and wrk with apt-get when they are missing;
2. starts two node backends (``bench/backend.js``) on free loopback ports;
3. starts every proxy under test on its own free loopback port, all in front
   of the same two backends: nginx, haproxy, stock Twisted
   (``bench/stock_proxy.py``), lbproxy with its default options (access
   log to the twistd log, i.e. stdout) and lbproxy with ``--access-log
   off``; "direct" is wrk straight to backend A, as a reference;
4. runs ``wrk -t1 --latency`` over every (target, scenario), interleaved
   over several rounds, each run preceded by an uncounted 1 s warm-up;
5. prints the medians and ratios and writes them to ``bench/RESULTS.md``.

Only 127.0.0.1 is ever targeted. Every process the harness starts is
stopped at the end, also on errors and Ctrl-C. Python stdlib only.
"""

import argparse
import datetime
import glob
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

ALL_TARGETS = ["direct", "nginx", "haproxy", "stock", "lbproxy", "lbproxy-nolog"]
SUITES = ["throughput", "workers", "memory", "idle", "scaling", "balance"]
# Open-file limit the harness asks for (inherited by every process it starts:
# lbproxy, nginx, wrk); 10,000 idle clients need more than the usual 1024.
NOFILE_WANTED = 65536

# name -> (path, connections, extra wrk arguments)
SCENARIOS = {
    "small_c32": ("/", 32, []),
    "small_c256": ("/", 256, []),
    "64k_c32": ("/64k", 32, []),
    "post1m_c32": ("/upload", 32, ["-s", os.path.join(BENCH_DIR, "post1m.lua")]),
}

# From --lbproxy-args: added to every lbproxy command line (all suites).
LBPROXY_EXTRA_ARGS = []
# From --lbproxy-tree: the source tree lbproxy runs from (PYTHONPATH).
LBPROXY_TREE = [REPO_DIR]

START_DEADLINE = 20.0  # seconds for a process to accept connections
STOP_DEADLINE = 5.0  # seconds between SIGTERM and SIGKILL
NOISY_OTHER_CPU = 25  # % of a core used by the rest of the machine: note it

# Issue #13's targets, printed as "met"/"NOT met" beside the figures.
X_STOCK_TARGET = 4.0  # lbproxy req/s (default options) / stock's, small_c32
P99_OF_STOCK_TARGET = 0.25  # lbproxy p99 / stock's, small_c32
LOG_COST_TARGET = 10  # % of req/s the default access log may cost


# ---------------------------------------------------------------- utilities


def log(message):
    """Print a progress line to stderr."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def free_port():
    """Return a currently free TCP port on 127.0.0.1 (bind port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def scenario_spec(name):
    """Return (path, connections, extra wrk args) of a scenario.

    Besides the named SCENARIOS, ``small_cN`` is GET / with N connections
    (used by the scaling suite).
    """
    if name in SCENARIOS:
        return SCENARIOS[name]
    match = re.fullmatch(r"small_c(\d+)", name)
    if match:
        return ("/", int(match.group(1)), [])
    raise KeyError(name)


def raise_nofile(wanted=NOFILE_WANTED):
    """Raise this process's open-file limit (children inherit it).

    The soft limit goes up to ``wanted``, and the hard limit too when the
    harness may (root). Returns the resulting (soft, hard).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return resource.getrlimit(resource.RLIMIT_NOFILE)
        except (ValueError, OSError):
            pass
    new_soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft == resource.RLIM_INFINITY or soft >= new_soft:
        return soft, hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


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


@dataclass
class ProcInfo:
    """What the harness reads of one process in /proc/PID/stat."""

    state: str  # R, S, D, Z (zombie: exited, not yet reaped), ...
    ppid: int
    pgid: int
    sid: int
    ticks: int  # utime + stime, clock ticks
    child_ticks: int  # cutime + cstime: children it has waited for
    start: int  # start time since boot, clock ticks (tells a reused pid apart)


def proc_table():
    """{pid: ProcInfo} of every live process (those that vanish are skipped)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                data = stat.read()
        except OSError:
            continue
        # Fields after "(comm)": state ppid pgrp session ... utime(11) stime
        # cutime cstime ... starttime(19), counted from state = 0.
        f = data[data.rfind(b")") + 2 :].split()
        table[int(entry)] = ProcInfo(
            state=f[0].decode(),
            ppid=int(f[1]),
            pgid=int(f[2]),
            sid=int(f[3]),
            ticks=int(f[11]) + int(f[12]),
            child_ticks=int(f[13]) + int(f[14]),
            start=int(f[19]),
        )
    return table


def tree_pids(leader, table=None):
    """The pids of ``leader``'s whole process tree, sorted.

    Every process the harness starts leads its own session
    (start_new_session), so this is the session and process group led by
    ``leader`` plus every descendant by parent pid, wherever it went (a
    worker that called setsid is still found through its parent). This
    covers nginx's master and workers, and lbproxy's ``--workers``.
    """
    table = proc_table() if table is None else table
    found = {pid for pid, p in table.items() if leader in (pid, p.sid, p.pgid)}
    children = {}
    for pid, p in table.items():
        children.setdefault(p.ppid, []).append(pid)
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return sorted(found)


def tree_cpu(leader):
    """CPU ticks of ``leader``'s process tree so far, and per process.

    Returns (total, {pid: own ticks}). The total also counts each process's
    waited-for children (cutime + cstime), so a worker that exits and is
    reaped by its parent keeps counting: the difference of two totals is the
    CPU the whole tree used in between.
    """
    table = proc_table()
    own = {pid: table[pid].ticks for pid in tree_pids(leader, table)}
    total = sum(own.values()) + sum(table[pid].child_ticks for pid in own)
    return total, own


def proc_status_kib(pid, field_name):
    """A ``kB`` field (VmRSS, VmHWM, ...) of /proc/PID/status, or 0."""
    prefix = field_name.encode() + b":"
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(prefix):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kib(pids):
    """Sum of VmRSS (KiB) over ``pids``."""
    return sum(proc_status_kib(pid, "VmRSS") for pid in pids)


def reset_peak_rss(pids):
    """Reset VmHWM to the current RSS (``echo 5 > clear_refs``); True if done."""
    done = True
    for pid in pids:
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            done = False
    return done


def proc_nofile(pid):
    """The soft 'Max open files' limit of a process, as text."""
    try:
        with open(f"/proc/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    return line.split()[3]
    except OSError:
        pass
    return "?"


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
    # Its process tree when stop() began, and the pids stop() had to kill
    # after the leader was gone.
    _tree: dict = field(default_factory=dict)
    leftovers: list = field(default_factory=list)

    def alive(self):
        """Tell whether the process is still running."""
        return self.proc.poll() is None

    def cpu_ticks(self):
        """CPU time used so far by its whole process tree, in ticks."""
        return tree_cpu(self.proc.pid)[0]

    def cpu_snapshot(self):
        """(total ticks, {pid: ticks}) of its process tree: see tree_cpu."""
        return tree_cpu(self.proc.pid)

    def pids(self):
        """The pids of its process tree (e.g. nginx's master and workers)."""
        return tree_pids(self.proc.pid)

    def rss_kib(self):
        """Sum of the current RSS of the process and its children, KiB."""
        return rss_kib(self.pids())

    def log_tail(self, lines=15):
        """Return the last lines of the process's output file."""
        try:
            with open(self.logfile, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def stop(self):
        """SIGTERM the process group, then SIGKILL it after a deadline.

        The process tree is noted first; whatever of it is still alive once
        the leader is gone (a worker in another process group, or one the
        service left behind) is killed too, and listed in ``leftovers``.
        """
        if self.proc.poll() is not None:
            # The leader is gone (it died, or stop() ran before): what is
            # left of its session or process group.
            leader = self.proc.pid
            table = proc_table()
            self._tree.update(
                (pid, p.start)
                for pid, p in table.items()
                if pid != leader and leader in (p.sid, p.pgid)
            )
            self._kill_leftovers(self._tree)
            return
        self._tree = self._tree_with_starts()
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=STOP_DEADLINE)
        # Give the rest of the tree the same deadline to follow the leader.
        deadline = time.monotonic() + STOP_DEADLINE
        while self._alive_of(self._tree) and time.monotonic() < deadline:
            time.sleep(0.1)
        self._kill_leftovers(self._tree)

    def _tree_with_starts(self):
        """{pid: start time} of its process tree, other than the leader."""
        table = proc_table()
        return {
            pid: table[pid].start for pid in tree_pids(self.proc.pid, table) if pid != self.proc.pid
        }

    @staticmethod
    def _alive_of(tree):
        """The pids of ``tree`` still running (same pid and start time, not a zombie)."""
        table = proc_table()
        return [
            pid
            for pid, start in tree.items()
            if pid in table and table[pid].start == start and table[pid].state not in "ZX"
        ]

    def _kill_leftovers(self, tree):
        """SIGKILL what is left of ``tree``; note it in ``leftovers``."""
        for pid in self._alive_of(tree):
            self.leftovers.append(pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        tree.clear()


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


def nginx_conf(
    tmpdir,
    port,
    backends,
    worker_processes=1,
    worker_connections=4096,
    keepalive_timeout="65s",
    client_max_body_size="8m",
    extra="",
):
    """Write an nginx config (1 worker by default, keepalive upstream); return it.

    The access log is nginx's default: ``combined`` format, one ``write`` per
    request (no ``buffer=``), to ``nginx-access.log`` in ``tmpdir``.
    ``extra`` is added to the ``http`` block (e.g. the memory suite's
    ``proxy_request_buffering off;``).
    """
    user = "user root;\n" if os.geteuid() == 0 else ""
    servers = "".join(f"        server {HOST}:{p};\n" for p in backends)
    # Not above the hard limit nginx inherits (it warns, and keeps that one).
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = worker_connections + 1024
    if hard != resource.RLIM_INFINITY:
        nofile = min(nofile, hard)
    conf = f"""{user}worker_processes {worker_processes};
worker_rlimit_nofile {nofile};
pid {tmpdir}/nginx.pid;
error_log {tmpdir}/nginx-error.log warn;
events {{
    worker_connections {worker_connections};
}}
http {{
    access_log {tmpdir}/nginx-access.log;
    client_body_temp_path {tmpdir}/nginx-client-body;
    proxy_temp_path {tmpdir}/nginx-proxy;
    fastcgi_temp_path {tmpdir}/nginx-fastcgi;
    uwsgi_temp_path {tmpdir}/nginx-uwsgi;
    scgi_temp_path {tmpdir}/nginx-scgi;
    keepalive_timeout {keepalive_timeout};
    keepalive_requests 100000;
    client_max_body_size {client_max_body_size};
    client_body_buffer_size 2m;
{extra}    upstream backends {{
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


# HAProxy's access line made as close to nginx's "combined" as its log-format
# allows: %B counts the response's header bytes too (nginx's
# $body_bytes_sent does not). One line per request, written to stdout (one
# write each), which the harness sends to haproxy.out.
HAPROXY_COMBINED = (
    '"%ci - - [%[date,ltime(%d/%b/%Y:%H:%M:%S %z)]] \\"%HM %HU %HV\\" %ST %B '
    '\\"%[capture.req.hdr(0)]\\" \\"%[capture.req.hdr(1)]\\""'
)


def haproxy_conf(tmpdir, port, backends):
    """Write a haproxy config (1 thread, roundrobin, http-reuse safe).

    Access lines in a combined-like format go to stdout (HAPROXY_COMBINED).
    """
    servers = "".join(f"    server b{i} {HOST}:{p}\n" for i, p in enumerate(backends))
    conf = f"""global
    nbthread 1
    maxconn 4096
    log stdout format raw local0

defaults
    mode http
    log global
    timeout connect 5s
    timeout client 65s
    timeout server 65s
    timeout http-keep-alive 65s
    http-reuse safe

frontend bench
    bind {HOST}:{port}
    http-request capture req.hdr(Referer) len 128
    http-request capture req.hdr(User-Agent) len 128
    log-format {HAPROXY_COMBINED}
    default_backend backends

backend backends
    balance roundrobin
{servers}"""
    path = os.path.join(tmpdir, "haproxy.cfg")
    with open(path, "w") as f:
        f.write(conf)
    return path


def lbproxy_tree():
    """The source tree lbproxy runs from (``--lbproxy-tree``, default this repo)."""
    return LBPROXY_TREE[0]


def lbproxy_env():
    """Environment for the lbproxy process: its tree first on PYTHONPATH.

    twistd finds the ``lbproxy`` plugin in that tree's ``twisted/plugins``.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [lbproxy_tree(), env.get("PYTHONPATH", "")] if p)
    return env


def lbproxy_problem(python):
    """Why ``python`` cannot run lbproxy from its tree, or None if it can.

    lbproxy must import, and from ``lbproxy_tree()`` (not an installed copy).
    """
    try:
        result = subprocess.run(
            [python, "-c", "import os, lbproxy; print(os.path.realpath(lbproxy.__file__))"],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
            env=lbproxy_env(),
            cwd=tempfile.gettempdir(),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run {python}: {exc}"
    if result.returncode != 0:
        return f"cannot import lbproxy with {python} from {lbproxy_tree()}"
    where = result.stdout.strip()
    package = os.path.realpath(os.path.join(lbproxy_tree(), "lbproxy"))
    if not where.startswith(package + os.sep):
        return f"lbproxy imports from {where}, not from {package}"
    return None


def lbproxy_tree_info():
    """The lbproxy tree's path, commit and whether lbproxy/ has local changes."""
    tree = lbproxy_tree()
    rev = command_output(["git", "-C", tree, "rev-parse", "--short", "HEAD"])
    if " " in rev:
        return f"{tree} (not a git checkout)"
    status = command_output(["git", "-C", tree, "status", "--porcelain", "--", "lbproxy"])
    changed = "" if status == "?" else ", lbproxy/ has uncommitted changes"
    return f"{tree} at {rev}{changed}"


# lbproxy targets of the throughput suite: name -> lbproxy options. "lbproxy"
# is the defaults a new user runs (access log to the twistd log, which with
# twistd -n is stdout, which the harness sends to lbproxy.out).
LBPROXY_VARIANTS = {
    "lbproxy": [],
    "lbproxy-nolog": ["--access-log", "off"],
}

# What twistd prints when lbproxy does not know an option (e.g. --workers
# before it exists): "twistd lbproxy: option --workers not recognized".
REFUSED_OPTION = re.compile(r"^.*(not recognized|unknown option|no such option).*$", re.M | re.I)


def option_value(args, name):
    """The last value of option ``name`` in ``args`` (``--x V`` or ``--x=V``), or None."""
    value = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(name + "="):
            value = arg[len(name) + 1 :]
    return value


@dataclass
class Target:
    """One thing wrk is pointed at, and whether it could be used."""

    name: str
    port: int = 0
    service: Service | None = None
    status: str = "ok"  # "ok", or why it was left out
    # Where its access lines land (a file in the temp dir), None for none.
    access_log: str | None = None


def start_target(
    name, tmpdir, backends, python, lbproxy_args=(), nginx_options=None, tag="", kind=None
):
    """Start the proxy called ``name``; return a Target (status says if not).

    ``kind`` is what to start (nginx, haproxy, stock, lbproxy); by default
    the one ``name`` says (``lbproxy-nolog`` is lbproxy with ``--access-log
    off``). ``lbproxy_args`` are added to lbproxy's options (e.g.
    ``--client-timeout 5``), ``nginx_options`` are keyword arguments of
    nginx_conf, and ``tag`` makes the temp file names unique when a suite
    starts a target twice.
    """
    kind = kind or ("lbproxy" if name in LBPROXY_VARIANTS else name)
    port = free_port()
    upstream = ",".join(f"{HOST}:{p}" for p in backends)
    if tag:
        tmpdir = os.path.join(tmpdir, tag)
        os.makedirs(tmpdir, exist_ok=True)
    if kind == "nginx":
        conf = nginx_conf(tmpdir, port, backends, **(nginx_options or {}))
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
        access_log = os.path.join(tmpdir, "nginx-access.log")
    elif kind == "haproxy":
        conf = haproxy_conf(tmpdir, port, backends)
        argv = [which("haproxy"), "-db", "-f", conf]
        service = start_service(name, argv, port, tmpdir)
        access_log = service.logfile
    elif kind == "stock":
        access_log = os.path.join(tmpdir, "stock-access.log")
        argv = [
            python,
            os.path.join(BENCH_DIR, "stock_proxy.py"),
            "--port",
            str(port),
            "--upstream",
            upstream,
            "--access-log",
            access_log,
        ]
        service = start_service(name, argv, port, tmpdir)
    elif kind == "lbproxy":
        problem = lbproxy_problem(python)
        if problem:
            return Target(name, status=f"not available ({problem})")
        options = [*LBPROXY_VARIANTS.get(name, []), *LBPROXY_EXTRA_ARGS, *lbproxy_args]
        # twistd (not "python -m twisted", which is `twist` and has no -n),
        # logging to stdout as `twistd -n` does: no --logfile.
        argv = [
            python,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile",
            os.path.join(tmpdir, f"{name}.pid"),
            "lbproxy",
            "--upstream",
            upstream,
            "--listen",
            f"tcp:{port}:interface={HOST}",
            *options,
        ]
        service = start_service(name, argv, port, tmpdir, env=lbproxy_env())
        where = option_value(options, "--access-log")
        if where in (None, "-"):
            access_log = service.logfile
        elif where == "off":
            access_log = None
        else:
            access_log = os.path.join(tmpdir, where)
    else:
        raise ValueError(kind)
    target = Target(name, port, service, access_log=access_log)
    if not wait_for_port(port, service.proc):
        state = "exited" if not service.alive() else "not listening"
        output = service.log_tail(40)
        refused = REFUSED_OPTION.search(output) if kind == "lbproxy" else None
        if refused and not service.alive():
            target.status = f"not available (lbproxy refused an option: {refused.group(0).strip()})"
        else:
            target.status = f"failed to start ({state}); see {service.logfile}"
        log(f"{name} did not start; last output:\n{output}")
    return target


def count_access_lines(path):
    """How many access lines (``HTTP/1.x" STATUS``) a log holds, or None.

    Rotated copies (``PATH.1``, ``PATH.2``: twisted.web's ``Site`` log
    rotates every 1 MB) are counted too.
    """
    if not path:
        return None
    marker = re.compile(rb'HTTP/1\.[01]" \d{3} ')
    count = 0
    for name in [path, *glob.glob(glob.escape(path) + ".[0-9]*")]:
        tail = b""
        try:
            with open(name, "rb") as f:
                while chunk := f.read(1 << 20):
                    data = tail + chunk
                    cut = data.rfind(b"\n") + 1
                    count += len(marker.findall(data, 0, cut))
                    tail = data[cut:]
        except OSError:
            if name == path:
                return None
            continue
        count += len(marker.findall(tail))
    return count


def check_access_logs(ctx, targets, wait_s=1.5):
    """Check each target's access log got the sanity check's ``GET /64k``.

    Waits ``wait_s`` first (lbproxy may write its lines once a second). A
    target that should log and did not, or that logged when it should not
    (``--access-log off``), gets a note: the fronts are meant to log alike.
    """
    proxies = [t for t in targets if t.status == "ok" and t.service]
    if not proxies:
        return
    time.sleep(wait_s)
    marker = b'"GET /64k HTTP/1.1" 200 '
    for t in proxies:
        path = t.access_log
        try:
            with open(path or t.service.logfile, "rb") as f:
                seen = marker in f.read()
        except OSError:
            seen = False
        if path and not seen:
            ctx.notes.append(
                f"{t.name}: no access line for the sanity check's GET /64k in {path} "
                f"after {wait_s:g} s"
            )
        elif not path and seen:
            ctx.notes.append(f"{t.name}: access log meant to be off, yet it logged requests")


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
    # % of one core of each of the proxy's processes, busiest first (only
    # processes alive at both ends of the run).
    proxy_procs: list = field(default_factory=list)

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
    path, connections, extra = scenario_spec(scenario)
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

    Also samples the CPU used by the proxy (its whole process tree, and
    each of its processes), the backends and wrk during the
    measured run, to show which of them was the bottleneck, and the rest of
    the machine's busy CPU ("other": idle proxies, the harness, anything else
    running on the machine), to show noise.
    """
    run_wrk(wrk_argv(target.port, scenario, 1, args.wrk_timeout), 1)
    argv = wrk_argv(target.port, scenario, args.duration, args.wrk_timeout)
    proxy_before, procs_before = target.service.cpu_snapshot() if target.service else (0, {})
    backend_before = sum(b.cpu_ticks() for b in backends)
    wrk_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    machine_before = machine_busy_ticks()
    start = time.monotonic()
    code, output = run_wrk(argv, args.duration)
    wall = time.monotonic() - start
    machine_after = machine_busy_ticks()
    wrk_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    backend_after = sum(b.cpu_ticks() for b in backends)
    proxy_after, procs_after = target.service.cpu_snapshot() if target.service else (0, {})

    result = parse_wrk(output)
    if code != 0 and not result.failed:
        result.failed = f"wrk exited {code}"
    if result.failed:
        result.failed += ": " + output.strip().replace("\n", " ")[:200]
    tick = os.sysconf("SC_CLK_TCK")
    if target.service:
        result.proxy_cpu = 100.0 * (proxy_after - proxy_before) / tick / wall
        result.proxy_procs = sorted(
            (
                100.0 * (ticks - procs_before[pid]) / tick / wall
                for pid, ticks in procs_after.items()
                if pid in procs_before
            ),
            reverse=True,
        )
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


def rps_median(results, name, scenario):
    """Median req/s of a (target, scenario) over its rounds (failed runs left out)."""
    runs = results.get((name, scenario))
    return median([r.rps for r in runs if not r.failed]) if runs else None


def p99_median(results, name, scenario):
    """Median p99 (ms) of a (target, scenario) over its rounds."""
    runs = results.get((name, scenario))
    return median([r.p99_ms for r in runs]) if runs else None


def met(ok):
    """'met' or 'NOT met'."""
    return "met" if ok else "NOT met"


def ratio(a, b, spec=".2f", suffix="×"):
    """``a / b`` formatted, or '-' when either is missing or b is 0."""
    return f"{a / b:{spec}}{suffix}" if a is not None and b else "-"


def build_tables(scenarios, targets, results):
    """Return the markdown result tables, one per scenario, as a string.

    ``results`` maps (target, scenario) to the list of WrkResult of its
    rounds. Under each table, when both ran, the cost of lbproxy's default
    access log: lbproxy's req/s against lbproxy-nolog's.
    """
    lines = []
    for scenario in scenarios:
        path, connections, _ = scenario_spec(scenario)
        method = "POST 1 MiB" if path == "/upload" else "GET"
        lines.append(f"#### {scenario}: {method} {path}, {connections} connections\n")
        lines.append(
            "| target | req/s (median) | × stock | % of nginx | p50 ms | p99 ms | p99 / stock's "
            "| errors (all rounds) | proxy CPU % | backends CPU % | wrk CPU % | other CPU % "
            "| req/s per round |"
        )
        lines.append("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|")
        stock = rps_median(results, "stock", scenario)
        nginx = rps_median(results, "nginx", scenario)
        stock_p99 = p99_median(results, "stock", scenario)
        for target in targets:
            if target.status != "ok":
                lines.append(f"| {target.name} | {target.status} |" + "  |" * 11)
                continue
            runs = results.get((target.name, scenario), [])
            if not runs:
                continue
            rps = rps_median(results, target.name, scenario)
            p99 = p99_median(results, target.name, scenario)
            per_round = ", ".join("FAIL" if r.failed else f"{r.rps:.0f}" for r in runs)
            lines.append(
                f"| {target.name} | {fmt(rps, '.0f')} | {ratio(rps, stock)} "
                f"| {ratio(100 * rps if rps else None, nginx, '.0f', '%')} "
                f"| {fmt(median([r.p50_ms for r in runs]), '.2f')} "
                f"| {fmt(p99, '.2f')} | {ratio(p99, stock_p99)} "
                f"| {error_text(runs)} "
                f"| {fmt(median([r.proxy_cpu for r in runs]), '.0f')} "
                f"| {fmt(median([r.backend_cpu for r in runs]), '.0f')} "
                f"| {fmt(median([r.wrk_cpu for r in runs]), '.0f')} "
                f"| {fmt(median([r.other_cpu for r in runs]), '.0f')} "
                f"| {per_round} |"
            )
        on = rps_median(results, "lbproxy", scenario)
        off = rps_median(results, "lbproxy-nolog", scenario)
        if on and off:
            lines.append(
                f"\nlbproxy with its default access log: {on:.0f} req/s = "
                f"{100 * on / off:.0f}% of lbproxy-nolog's {off:.0f}: the log costs "
                f"**{100 * (1 - on / off):.0f}%** (issue #13: at most {LOG_COST_TARGET}%)."
            )
        lines.append("")
    return "\n".join(lines)


def issue_checks(scenario, results):
    """Issue #13's throughput targets for lbproxy (default options), as lines."""
    runs = results.get(("lbproxy", scenario))
    if not runs:
        return []
    rps = rps_median(results, "lbproxy", scenario)
    stock = rps_median(results, "stock", scenario)
    p99 = p99_median(results, "lbproxy", scenario)
    stock_p99 = p99_median(results, "stock", scenario)
    off = rps_median(results, "lbproxy-nolog", scenario)
    errors = error_text(runs)
    lines = [f"In {scenario}, lbproxy with default options (access log on):", ""]
    if rps and stock:
        lines.append(
            f"- req/s {rps:.0f} = **{rps / stock:.2f}× stock** ({stock:.0f}); "
            f"target ≥ {X_STOCK_TARGET:g}×: {met(rps / stock >= X_STOCK_TARGET)}"
        )
    if p99 is not None and stock_p99:
        lines.append(
            f"- p99 {p99:.2f} ms = **{p99 / stock_p99:.2f}× stock's** ({stock_p99:.2f} ms); "
            f"target ≤ {P99_OF_STOCK_TARGET:g}×: {met(p99 / stock_p99 <= P99_OF_STOCK_TARGET)}"
        )
    lines.append(f"- errors (all rounds): **{errors}**; target 0: {met(errors == '0')}")
    if rps and off:
        cost = 100 * (1 - rps / off)
        lines.append(
            f"- the default access log costs **{cost:.0f}%** of lbproxy-nolog's "
            f"{off:.0f} req/s; target ≤ {LOG_COST_TARGET}%: {met(cost <= LOG_COST_TARGET)}"
        )
    return lines


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
        ("repo HEAD (harness)", git_rev),
        ("lbproxy tree", lbproxy_tree_info()),
    ]


RESULTS_TITLE = "# lbproxy benchmark results"
RESULTS_INTRO = """Each section below is written by one suite of `bench/run --suite NAME`
(throughput, workers, memory, idle, scaling, balance) and replaced in place, between its
`<!-- suite:NAME -->` markers, the next time that suite runs; the other
sections are left as they are, so sections may come from different runs
(see each one's date and command). All figures come from a shared, noisy
2-core machine: compare rows within a section, not with other runs.
"""


def machine_table(info):
    """The machine description as a markdown table."""
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in info)


def section_text(suite, title, command, started, body, notes, info):
    """One suite's section of RESULTS.md, with its markers."""
    note_lines = "\n".join(f"- {n}" for n in notes) or "- none"
    return f"""<!-- suite:{suite} -->
## {title}

Suite `{suite}`. Date: {started.strftime("%Y-%m-%d %H:%M:%S %Z").strip()}

Command: `{command}`

{body.strip()}

### Notes ({suite})

{note_lines}

### Machine ({suite})

{machine_table(info)}
<!-- /suite:{suite} -->
"""


def legacy_throughput(text):
    """Turn a RESULTS.md written before suites existed into a section body.

    Returns the marked throughput section (headings demoted one level), or
    "" if there is nothing to keep.
    """
    lines = text.strip().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    if not "".join(lines).strip():
        return ""
    body = "\n".join("#" + line if line.startswith("##") else line for line in lines)
    return (
        "<!-- suite:throughput -->\n## Throughput (written before suites existed)\n"
        f"{body.rstrip()}\n<!-- /suite:throughput -->\n"
    )


def update_results(path, suite, section):
    """Write ``section`` into the results file, replacing that suite's old one.

    Other suites' sections are kept. A file without markers (the format
    before suites) is kept as the throughput section, unless this is the
    throughput suite.
    """
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    begin, end = f"<!-- suite:{suite} -->", f"<!-- /suite:{suite} -->"
    if "<!-- suite:" not in text:
        kept = "" if suite == "throughput" else legacy_throughput(text)
        text = f"{RESULTS_TITLE}\n\n{RESULTS_INTRO}\n" + (kept + "\n" if kept else "")
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(path, "w") as f:
        f.write(text)


def throughput_body(args, tables, checks, logging):
    """The throughput suite's section body: method, scenarios and tables."""
    scenario_lines = "\n".join(
        f"- `{name}`: {'POST 1 MiB body to' if p == '/upload' else 'GET'} `{p}`, {c} connections"
        for name, (p, c, _) in SCENARIOS.items()
        if name in args.scenarios
    )
    checks_text = "\n".join(checks) or "(small_c32 or lbproxy not run)"
    logging_text = "\n".join(logging) or "- (no proxy ran)"
    return f"""{args.rounds} round(s) × {args.duration} s per (target, scenario), interleaved,
each run after an uncounted 1 s warm-up; `wrk -t1 --latency --timeout={args.wrk_timeout}s`.
Figures are medians over the rounds. Errors are non-2xx/3xx responses plus wrk
socket errors (connect/read/write/timeout), summed over all rounds. CPU % is
percent of one core (200 = both cores) during the measured run: proxy = its
whole process tree, backends = both node backends together, other = the rest of
the machine's busy time (idle proxies, the harness, anything else running).
"p99 / stock's" is the target's p99 over the stock proxy's.

`lbproxy` runs with its default options, as a new user would
(`twistd -n lbproxy --upstream A,B`, plus `--listen` for the port);
`lbproxy-nolog` is the same with `--access-log off`. Every front but
`lbproxy-nolog` writes one access line per request, in nginx's combined
format or as close as it gets, to a file in the temp dir:

{logging_text}

These are ratios within one run on a shared, noisy 2-core machine where wrk,
the proxy and the backends compete for the same cores: compare rows within a
table, not with other machines or other runs.

Scenarios:
{scenario_lines}

### Results

{tables}

### Issue #13 targets

{checks_text}
"""


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
    parser.add_argument(
        "--suite",
        default="throughput",
        choices=[*SUITES, "all"],
        help="throughput (default: wrk req/s table), workers (1 and 2 processes, "
        "lbproxy and nginx), memory (RSS while streaming a big download/upload), idle "
        "(RSS with 10,000 idle keep-alive clients, client timeout), scaling (req/s and "
        "p99 at growing concurrency), balance (the slow server's share and p99 per "
        "--balance strategy, one backend answering in 1 ms and one in 50 ms), or all",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument(
        "--duration", type=int, default=5, help="seconds per measured wrk run (default 5)"
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"throughput suite: comma list of {','.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--targets",
        default=None,
        help=f"comma list of {','.join(ALL_TARGETS)} (default: all for throughput; "
        "nginx,lbproxy for the other suites, which only know those two, and "
        "lbproxy-nolog for scaling)",
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
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 1 round of 2 s (throughput, workers, scaling); 2,000 idle clients",
    )
    parser.add_argument(
        "--keep-tmp", action="store_true", help="keep the temp dir with configs and logs"
    )
    parser.add_argument(
        "--lbproxy-tree",
        default=REPO_DIR,
        metavar="PATH",
        help="source tree lbproxy runs from (put first on PYTHONPATH; default: the "
        f"tree this harness is in, {REPO_DIR}), e.g. another worktree with work in progress",
    )
    parser.add_argument(
        "--lbproxy-args",
        default="",
        help="extra lbproxy options for every suite, one shell-quoted string, "
        "e.g. '--upstream-keepalive 256' (shown in the command line of the report)",
    )
    group = parser.add_argument_group("workers suite")
    group.add_argument(
        "--worker-counts",
        default="1,2",
        help="lbproxy --workers N and nginx worker_processes N, comma list (default 1,2)",
    )
    group.add_argument(
        "--worker-scenarios",
        default="small_c32,small_c256",
        help="GET / scenarios small_cN, comma list (default small_c32,small_c256)",
    )
    group = parser.add_argument_group("memory suite")
    group.add_argument(
        "--download-mib",
        default="64,512",
        help="download sizes in MiB, comma list (default 64,512: two sizes show "
        "whether RSS grows with the body)",
    )
    group.add_argument(
        "--upload-mib", default="32,256", help="upload sizes in MiB, comma list (default 32,256)"
    )
    group.add_argument(
        "--rate-mb",
        type=float,
        default=128.0,
        help="pace of the download reader and the upload sender, MB/s (10^6 bytes; default 128)",
    )
    group = parser.add_argument_group("idle suite")
    group.add_argument(
        "--connections",
        type=int,
        default=10000,
        help="idle keep-alive clients (default 10000; RSS is reported at 100, 1000 and this many)",
    )
    group.add_argument(
        "--client-timeout",
        type=float,
        default=5.0,
        help="lbproxy --client-timeout (and nginx keepalive_timeout) for the "
        "closing check (default 5)",
    )
    group = parser.add_argument_group("scaling suite")
    group.add_argument(
        "--concurrency",
        default="1,32,256,1024",
        help="wrk connection counts, comma list (default 1,32,256,1024)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration = 1, 2
        args.connections = min(args.connections, 2000)
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    LBPROXY_EXTRA_ARGS[:] = shlex.split(args.lbproxy_args)
    args.targets = [t for t in args.targets.split(",") if t] if args.targets else None
    for s in args.scenarios:
        if s not in SCENARIOS:
            parser.error(f"unknown scenario {s!r}; choose from {', '.join(SCENARIOS)}")
    for t in args.targets or []:
        if t not in ALL_TARGETS:
            parser.error(f"unknown target {t!r}; choose from {', '.join(ALL_TARGETS)}")
    if args.rounds < 1 or args.duration < 1:
        parser.error("--rounds and --duration must be at least 1")
    args.worker_scenarios = [s for s in args.worker_scenarios.split(",") if s]
    for s in args.worker_scenarios:
        if not re.fullmatch(r"small_c[1-9]\d*", s):
            parser.error(f"--worker-scenarios: {s!r} is not small_cN")
    if not os.path.isdir(os.path.join(args.lbproxy_tree, "lbproxy")):
        parser.error(f"--lbproxy-tree: no lbproxy/ package in {args.lbproxy_tree}")
    LBPROXY_TREE[0] = os.path.abspath(args.lbproxy_tree)
    try:
        args.worker_counts = [int(v) for v in args.worker_counts.split(",") if v]
        args.download_mib = [float(v) for v in args.download_mib.split(",") if v]
        args.upload_mib = [float(v) for v in args.upload_mib.split(",") if v]
        args.concurrency = [int(v) for v in args.concurrency.split(",") if v]
    except ValueError as exc:
        parser.error(str(exc))
    if not args.worker_counts or min(args.worker_counts) < 1:
        parser.error("--worker-counts must be positive integers")
    if args.rate_mb <= 0 or args.connections < 1 or args.client_timeout <= 0:
        parser.error("--rate-mb, --connections and --client-timeout must be positive")
    return args


@dataclass
class Context:
    """What a suite needs: options, the backends, and where to register things."""

    args: argparse.Namespace
    python: str
    tmpdir: str
    backends: list = field(default_factory=list)
    services: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    keep_tmp: bool = False

    @property
    def backend_ports(self):
        """The two backends' ports."""
        return [b.port for b in self.backends]

    def targets_for(self, suite, allowed=("lbproxy", "nginx"), default=None):
        """The targets a suite should run: --targets filtered, or ``default``.

        ``default`` is ``allowed`` unless given.
        """
        if suite == "throughput":
            return self.args.targets or list(ALL_TARGETS)
        chosen = [t for t in (self.args.targets or default or allowed) if t in allowed]
        for t in self.args.targets or []:
            if t not in allowed:
                self.notes.append(f"target {t} left out: the {suite} suite only runs {allowed}")
        return chosen

    def start(self, name, **kwargs):
        """Start target ``name`` (see start_target) and check it answers.

        Returns the Target; on failure its status says why and a note is added.
        """
        target = start_target(name, self.tmpdir, self.backend_ports, self.python, **kwargs)
        if target.service:
            self.services.append(target.service)
        if target.status == "ok":
            problem, _seen = sanity_check(target.port)
            if problem:
                target.status = f"failed sanity check: {problem}"
        if target.status != "ok":
            self.keep_tmp = self.keep_tmp or not target.status.startswith("not available")
            self.notes.append(f"{name}: {target.status}")
        log(f"{name}: port {target.port}, {target.status}")
        return target

    def stop(self, target):
        """Stop a target's process (if any) before the suite goes on."""
        if target.service:
            target.service.stop()


def start_backends(ctx):
    """Start the two node backends and register them in ``ctx``."""
    for name in ("A", "B"):
        port = free_port()
        service = start_service(
            f"backend-{name}",
            [NODE, os.path.join(BENCH_DIR, "backend.js"), str(port), name],
            port,
            ctx.tmpdir,
        )
        ctx.services.append(service)
        if not wait_for_port(port, service.proc):
            raise SystemExit(f"backend {name} did not start:\n{service.log_tail()}")
        ctx.backends.append(service)
    ports = ctx.backend_ports
    log(f"backends on {HOST}:{ports[0]} and {HOST}:{ports[1]}")


def run_throughput(ctx):
    """The throughput suite; returns (title, section body)."""
    args = ctx.args
    backend_ports = ctx.backend_ports
    targets = []
    for name in ctx.targets_for("throughput"):
        if name == "direct":
            targets.append(Target(name, backend_ports[0]))
            continue
        target = start_target(name, ctx.tmpdir, backend_ports, ctx.python)
        if target.service:
            ctx.services.append(target.service)
        targets.append(target)
    for target in targets:
        if target.status != "ok":
            ctx.keep_tmp = ctx.keep_tmp or target.status.startswith("failed")
            ctx.notes.append(f"{target.name}: {target.status}")
            continue
        problem, seen = sanity_check(target.port)
        if problem:
            target.status = f"failed sanity check: {problem}"
            ctx.notes.append(f"{target.name}: {target.status}")
            ctx.keep_tmp = True
        elif target.name != "direct" and len(seen) < 2:
            ctx.notes.append(
                f"{target.name}: GET / only reached backend(s) "
                f"{sorted(seen)} in 4 requests (round robin expected)"
            )
        log(f"{target.name}: port {target.port}, {target.status}")
    check_access_logs(ctx, targets)

    active = [t for t in targets if t.status == "ok"]
    results = run_rounds(ctx, active, args.scenarios)
    tables = build_tables(args.scenarios, targets, results)
    checks = issue_checks("small_c32", results) if "small_c32" in args.scenarios else []
    logging = access_log_lines(active, results)
    print()
    print(tables)
    print("\n".join(checks))
    return "Throughput", throughput_body(args, tables, checks, logging)


# How each front writes its access log (the throughput suite's header).
ACCESS_LOGS = {
    "nginx": "nginx's default `access_log` (format `combined`, one `write` per "
    "request, no `buffer=`) to `nginx-access.log`",
    "haproxy": "`log stdout format raw` with a `log-format` as close to combined as "
    "HAProxy allows (`%B` counts header bytes too), one `write` per request to "
    "stdout, which the harness sends to `haproxy.out`",
    "stock": "`Site(logPath=...)`: twisted.web's combined format through its "
    "`LogFile` (a `write` and a `flush` per request, rotated every 1 MB) to "
    "`stock-access.log`",
    "lbproxy": "lbproxy's defaults: no `--access-log` option, so `-`, the twistd log; "
    "with `twistd -n` and no `--logfile` that is stdout, which the harness sends to "
    "`lbproxy.out` (whatever batching lbproxy does is its own)",
    "lbproxy-nolog": "`--access-log off`: no access log (the same lbproxy otherwise)",
}


def access_log_lines(active, results):
    """Per front: where its access lines went and how many it wrote.

    Counted once the wrk runs are over (after 1.5 s, for a front that writes
    once a second), beside the requests wrk completed in the measured runs
    (warm-ups and sanity checks add a few more lines).
    """
    proxies = [t for t in active if t.service]
    if not proxies:
        return []
    time.sleep(1.5)
    lines = []
    for t in proxies:
        done = sum(
            r.requests for (name, _s), runs in results.items() if name == t.name for r in runs
        )
        written = count_access_lines(t.access_log)
        how = ACCESS_LOGS.get(t.name, "see its command line")
        if LBPROXY_EXTRA_ARGS and t.name.startswith("lbproxy"):
            how += f" (plus `--lbproxy-args {shlex.join(LBPROXY_EXTRA_ARGS)}`)"
        count = "no access log" if written is None else f"{written} access lines"
        lines.append(f"- {t.name}: {how}; {count}, {done} requests in the measured runs")
    return lines


def run_rounds(ctx, active, scenarios):
    """wrk over every (target, scenario), interleaved over the rounds.

    Returns {(target name, scenario): [WrkResult per round]}.
    """
    args = ctx.args
    total = len(active) * len(scenarios) * args.rounds
    log(
        f"{total} runs of {args.duration}s (+1s warm-up) each, "
        f"about {total * (args.duration + 1.5) / 60:.1f} min"
    )
    results = {}
    done = 0
    for round_no in range(args.rounds):
        for scenario in scenarios:
            # Rotate the order every round so no target always goes first.
            shift = round_no % len(active) if active else 0
            for target in active[shift:] + active[:shift]:
                if target.service and not target.service.alive():
                    result = WrkResult(failed="process died")
                else:
                    result = measure(target, scenario, args, ctx.backends)
                results.setdefault((target.name, scenario), []).append(result)
                done += 1
                log(
                    f"[{done}/{total}] round {round_no + 1} {scenario:<10} "
                    f"{target.name:<13} {result.rps:10.0f} req/s  "
                    f"p99 {fmt(result.p99_ms, '.2f')} ms  "
                    f"errors {error_text([result])}  "
                    f"other CPU {fmt(result.other_cpu, '.0f')}%"
                    + (f"  ({result.failed})" if result.failed else "")
                )
    noisy = [
        (r.other_cpu, name, scenario, i + 1)
        for (name, scenario), runs in results.items()
        for i, r in enumerate(runs)
        if r.other_cpu is not None and r.other_cpu > NOISY_OTHER_CPU
    ]
    if noisy:
        worst = max(noisy)
        ctx.notes.append(
            f"noisy machine: in {len(noisy)} of {total} runs other processes used more "
            f"than {NOISY_OTHER_CPU}% of a core (worst {worst[0]:.0f}%, {worst[1]} "
            f"{worst[2]} round {worst[3]}); see the per-round columns"
        )
    for target in active:
        if target.service and not target.service.alive():
            ctx.notes.append(
                f"{target.name}: process exited during the run "
                f"(code {target.service.proc.returncode})"
            )
            ctx.keep_tmp = True
    return results


def stop_all(ctx):
    """Stop every service of the suite; note any process left behind.

    A proxy whose processes did not all exit on SIGTERM (within the stop
    deadline, after its main process) gets a note: they were SIGKILLed.
    """
    for service in reversed(ctx.services):
        service.stop()
        if service.leftovers:
            ctx.notes.append(
                f"{service.name}: {len(service.leftovers)} process(es) still running after "
                f"SIGTERM and its main process's exit, killed: pids {service.leftovers}"
            )
            service.leftovers = []


def run_suite(suite, args, command, python):
    """Run one suite with fresh backends and write its section; exit code."""
    started = datetime.datetime.now().astimezone()
    info = machine_info(python)
    soft, hard = raise_nofile()
    info.append(("open files limit (harness, inherited)", f"{soft} soft / {hard} hard"))
    tmpdir = tempfile.mkdtemp(prefix=f"lbproxy-bench-{suite}-")
    ctx = Context(args, python, tmpdir, keep_tmp=args.keep_tmp)
    log(f"suite {suite}")
    try:
        start_backends(ctx)
        if suite == "throughput":
            title, body = run_throughput(ctx)
        else:
            import suites  # here, so that "bench" is this module (see the end)

            title, body = getattr(suites, f"run_{suite}")(ctx)
        stop_all(ctx)
        update_results(
            args.out, suite, section_text(suite, title, command, started, body, ctx.notes, info)
        )
        for n in ctx.notes:
            log(f"note: {n}")
        log(f"wrote the {suite} section of {args.out}")
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        stop_all(ctx)
        if ctx.keep_tmp:
            log(f"kept configs and logs in {tmpdir}")
        else:
            shutil.rmtree(tmpdir, ignore_errors=True)
    return 0


def main(argv=None):
    """Run the chosen suite(s); return the exit code."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    argv0 = os.environ.get("LBPROXY_BENCH_ARGV0", "bench/run")
    command = " ".join(shlex.quote(a) for a in [argv0, *sys.argv[1:]])
    ensure_tools()
    python = pick_python(args.python)
    needs_twisted = args.suite != "throughput" or any(
        t == "stock" or t.startswith("lbproxy") for t in (args.targets or ALL_TARGETS)
    )
    if needs_twisted and not has_twisted(python):
        raise SystemExit(f"{python} cannot import twisted; use --python")

    # Turn SIGTERM into an exception so the cleanup in run_suite runs.
    signal.signal(signal.SIGTERM, raise_interrupt)
    for suite in SUITES if args.suite == "all" else [args.suite]:
        code = run_suite(suite, args, command, python)
        if code:
            return code
    return 0


if __name__ == "__main__":
    # suites.py does "import bench": make that this very module, not a copy.
    sys.modules.setdefault("bench", sys.modules[__name__])
    sys.exit(main())
