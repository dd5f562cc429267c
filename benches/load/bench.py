#!/usr/bin/env python3
"""Side-by-side load benchmark driver (run by benches/load/run.sh).

Starts, on 127.0.0.1 only:
  upstream   bench_upstream  (fake Admin API; one instance for the proxies,
                              one on the server core for the "direct" rows)
  gateway    openai-admin-gateway (RUST_LOG=warn)
  nginx      proxy_cache doing the same job
  ceiling    bench_ceiling   (same stored bytes for every request)
  floor_*    bench_proxy     (pass-through only: a bare hyper proxy, through
                              hyper-util's pool or one upstream connection
                              per client connection; hyper's own floor)
then runs every scenario with wrk, interleaved, REPEATS times, measures the
server's CPU and RSS from /proc, runs the memory test, and writes one JSON file
that report.py turns into benches/README.md. Any wrk error or non-2xx aborts.

Scenarios (--only picks some):
  hit_one, hit_10k    hits, pinned: the server on one core, wrk + upstream on the other
  hit_10k_unpinned    hits, nothing pinned: a second set of servers using both
                      cores (gateway with its default worker count, or
                      --workers N; nginx `worker_processes auto` + `reuseport`),
                      its own upstream, wrk with --unpinned-threads threads
  miss                every request a new id, pinned
  pass_get, pass_post pass-through, pinned: GET /v1/organization/users?limit=1
                      and a 1 KiB (1,024-byte) JSON POST /v1/organization/invites,
                      beside hyper's floor (floor_pool, floor_conn)

Options worth knowing:
  --bin-dir DIR       where the binaries are (default <repo>/target/release);
                      bench_upstream / bench_ceiling / bench_proxy / cache_floor
                      are looked up in DIR/examples, then DIR
  --before-bin PATH   an older gateway binary: adds the target gateway_before,
                      same config and scenarios, interleaved with the others in
                      every repeat (before/after from one machine and run)
  --before-label TXT  what PATH was built from (e.g. a commit), for the report
  --workers N         writes `server.workers = N` into the unpinned gateway's
                      config (not into gateway_before's, nor the pinned one's)
Every binary is copied into the work directory first, so a rebuild during the
run changes nothing. The expected total time is printed at the start.
"""

import argparse
import hashlib
import http.client
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
LUA = HERE / "lua"
CLK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
HOT_IDS = 10_000
LIST_PATH = "/v1/organization/users?limit=1"
# Warm-up passes over the hot set before a hit run (see warm()).
WARM_PASSES = {"gateway": 2, "nginx": 2}


def log(*a):
    print("[bench]", *a, file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# ---------------------------------------------------------------- /proc


def read_stat(pid):
    """(ppid, utime+stime ticks) of pid."""
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    rest = s[s.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state); ppid is field 4, utime 14, stime 15.
    return int(rest[1]), int(rest[11]) + int(rest[12])


def ticks(pids):
    t = 0
    for p in pids:
        try:
            t += read_stat(p)[1]
        except (FileNotFoundError, ProcessLookupError):
            pass
    return t


def rss_kb(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if read_stat(int(d))[0] == pid:
                    out.append(int(d))
            except (FileNotFoundError, ProcessLookupError, ValueError):
                pass
    return out


def system_busy_ticks():
    """Busy ticks of all CPUs together (everything but idle and iowait)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited early (code {proc.returncode}); see its log")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise BenchError(f"{what} did not listen on {port} within {timeout}s")


def request(port, method, path, headers=None, body=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, dict((k.lower(), v) for k, v in r.getheaders()), r.read()
    finally:
        c.close()


# ---------------------------------------------------------------- processes


class Procs:
    """Processes this run started; stopped by pid at exit."""

    def __init__(self, work):
        self.work = work
        self.items = []

    def start(self, name, cmd, cpus=None, env=None):
        if cpus:
            cmd = ["taskset", "-c", cpus] + cmd
        logf = open(self.work / f"{name}.log", "wb")
        p = subprocess.Popen(
            cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL
        )
        self.items.append((name, p))
        return p

    def stop(self, p, sig=signal.SIGTERM):
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def stop_all(self):
        for name, p in reversed(self.items):
            self.stop(p, signal.SIGQUIT if name.startswith("nginx") else signal.SIGTERM)


# ---------------------------------------------------------------- configs


def gateway_config(path, port, admin_port, upstream_port, key_sha, ttl, max_entries, workers=None):
    # `workers` only when asked for: a binary that predates the key refuses it.
    workers_line = f"workers = {workers}\n" if workers else ""
    path.write_text(
        f"""# Written by benches/load/bench.py: one client, TTL {ttl}s.
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin_port}"
path_prefix = "/v1"
{workers_line}
[upstream]
base_url = "http://127.0.0.1:{upstream_port}/v1"
admin_key_env = "OPENAI_ADMIN_KEY"

[cache]
ttl_secs = {ttl}
max_entries = {max_entries}

[[clients]]
name = "bench-dashboard"
key_sha256 = "{key_sha}"
allow = ["GET /organization/users/*", "GET /organization/users", "POST /organization/invites"]
"""
    )


def nginx_config(work, name, cache_dir, port, upstream_port, client_key, admin_key, workers, reuseport=False):
    """nginx.conf for one instance; its pid, logs and temp files go to work/name."""
    work = work / name
    work.mkdir(exist_ok=True)
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if nofile == resource.RLIM_INFINITY:
        nofile = 65536
    nofile = min(nofile, 65536)
    ofc = max(1024, min(16384, nofile - 4096))
    err = json.dumps(
        {
            "error": {
                "message": "Incorrect API key provided.",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        }
    )
    err404 = err.replace("Incorrect API key provided.", "Not found.").replace(
        "invalid_api_key", "not_found"
    )
    proxy = f"""
            proxy_pass http://openai;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host 127.0.0.1:{upstream_port};
            proxy_set_header Authorization "Bearer {admin_key}";"""
    conf = work / "nginx.conf"
    listen_opts = "backlog=4096" + (" reuseport" if reuseport else "")
    conf.write_text(
        f"""# Written by benches/load/bench.py: nginx doing the gateway's job as well as it can.
user root;
daemon off;
master_process on;
worker_processes {workers};
worker_rlimit_nofile {nofile};
pid {work}/nginx.pid;
error_log {work}/error.log warn;

events {{
    worker_connections 16384;
    multi_accept on;
}}

http {{
    access_log off;
    map_hash_bucket_size 256;
    default_type application/json;
    sendfile on;
    tcp_nodelay on;
    keepalive_timeout 75s;
    keepalive_requests 1000000000;
    client_body_buffer_size 64k;
    client_body_temp_path {work}/client_body;
    proxy_temp_path {work}/proxy_temp;
    fastcgi_temp_path {work}/fastcgi_temp;
    uwsgi_temp_path {work}/uwsgi_temp;
    scgi_temp_path {work}/scgi_temp;
    # Keeps the hot set's cache files open (bounded by the fd limit).
    open_file_cache max={ofc} inactive=20s;
    open_file_cache_valid 60s;

    # The cache lives on tmpfs: no disk I/O in the way.
    proxy_cache_path {cache_dir} levels=1:2 keys_zone=users:256m max_size=8g
                     inactive=10m use_temp_path=off;

    # Only the one client key gets in (the gateway checks the key too).
    map $http_authorization $client_ok {{
        default 0;
        "Bearer {client_key}" 1;
    }}

    upstream openai {{
        server 127.0.0.1:{upstream_port};
        keepalive 512;
        keepalive_requests 1000000000;
        keepalive_timeout 60s;
    }}

    server {{
        listen 127.0.0.1:{port} {listen_opts};

        if ($client_ok = 0) {{
            return 401 '{err}';
        }}

        # The cached route: GET /v1/organization/users/{{id}}, no query string.
        location ~ ^/v1/organization/users/[A-Za-z0-9._~-]+$ {{
            proxy_cache users;
            proxy_cache_key $uri;
            proxy_cache_valid 200 300s;
            proxy_cache_lock on;
            proxy_cache_bypass $args;
            proxy_no_cache $args;
            add_header Cache-Status $upstream_cache_status;{proxy}
        }}

        location /v1/ {{{proxy}
        }}

        location / {{
            return 404 '{err404}';
        }}
    }}
}}
"""
    )
    return conf


# ---------------------------------------------------------------- wrk


def lua_script(work, name):
    out = work / f"{name}.lua"
    if not out.exists():
        out.write_text((LUA / f"{name}.lua").read_text() + "\n" + (LUA / "common.lua").read_text())
    return out


PERF_LINE = re.compile(r"^\s*([0-9.]+)%\s+(?:([0-9.]+)%\s+)?\[(.)\]\s+(.*)$")
INTERESTING = re.compile(
    r"openai_admin_gateway::|moka::|hyper::proto::h1::role|hyper::proto::h1::conn|sha2::|serde_json::|"
    r"prometheus_client::|tracing|hyper_util::client|http::header::map|governor::|arc_swap::"
)


def component(kind, sym):
    """The crate (or kernel / libc area) a perf symbol belongs to."""
    if kind == "k":
        return "kernel (syscalls, TCP loopback, scheduler)"
    s = sym
    for pre in ("core::ptr::drop_in_place<", "<"):
        while s.startswith(pre):
            s = s[len(pre):]
    if re.match(r"(__)?(libc_)?(malloc|free|cfree|realloc|calloc)|_int_(malloc|free|realloc)|malloc_|tcache|"
                r"unlink_chunk|alloc_perturb|__rust_(alloc|dealloc|realloc)|_?mi_", s):
        # glibc's malloc for nginx, mimalloc (mi_*) for the gateway.
        return "allocator (malloc/free)"
    if re.match(r"__(mem|str)\w+|mem(cpy|move|set|cmp)", s):
        return "memcpy/memmove/memset"
    if s.startswith("ngx_"):
        return "nginx"
    m = re.match(r"([a-z_][a-z0-9_]*)::", s)
    crate = m.group(1) if m else ""
    names = {
        "openai_admin_gateway": "gateway code (openai_admin_gateway::)",
        "moka": "moka cache", "hyper": "hyper", "hyper_util": "hyper-util", "http": "http (headers, uri)",
        "tokio": "tokio runtime", "mio": "tokio runtime", "bytes": "bytes", "sha2": "sha2 (client key hash)",
        "serde_json": "serde_json (user body check)", "serde": "serde_json (user body check)",
        "prometheus_client": "prometheus-client (metrics)", "tracing": "tracing",
        "tracing_subscriber": "tracing", "tracing_core": "tracing", "governor": "governor",
        "alloc": "alloc (String/Vec/Arc)", "core": "core (fmt, hashing, ...)", "std": "std",
        "crossbeam_epoch": "moka cache", "crossbeam_channel": "moka cache", "crossbeam_utils": "moka cache",
        "quanta": "quanta (clock)", "arc_swap": "arc-swap", "httparse": "hyper", "itoa": "core (fmt, hashing, ...)",
        "subtle": "sha2 (client key hash)", "getrandom": "request ids", "parking_lot": "locks",
        "parking_lot_core": "locks", "event_listener": "moka cache", "async_lock": "moka cache",
        "futures_util": "futures", "http_body_util": "hyper",
    }
    if crate in names:
        return names[crate]
    if crate:
        return crate
    if re.match(r"(__)?(pthread|futex|clock_gettime|syscall|epoll|__GI|_dl|__libc|__lll|writev|read|send|recv)", s):
        return "libc (syscall wrappers, locks)"
    return "other / unresolved"


def perf_summary(data):
    """Self time by component and by symbol, and time with callees for the
    gateway's, moka's and a few other crates' functions."""
    out = {}
    p = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort", "symbol",
                        "-g", "none", "--percent-limit", "0"], capture_output=True, text=True)
    comps, syms = defaultdict(float), []
    for line in p.stdout.splitlines():
        m = PERF_LINE.match(line)
        if m:
            pct, kind, sym = float(m.group(1)), m.group(3), m.group(4).strip()
            comps[component(kind, sym)] += pct
            syms.append((pct, f"[{kind}] {sym}"))
    out["components"] = sorted(comps.items(), key=lambda x: -x[1])
    out["self"] = [(pct, s[:150]) for pct, s in syms[:30]]
    p = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--children", "--sort", "symbol",
                        "-g", "none", "--percent-limit", "0.5"], capture_output=True, text=True)
    ch = []
    for line in p.stdout.splitlines():
        m = PERF_LINE.match(line)
        if m and m.group(2) is not None and INTERESTING.search(m.group(4)):
            ch.append((float(m.group(1)), float(m.group(2)), m.group(4).strip()[:150]))
    out["children"] = ch[:30]
    return out


def source_revision(binary):
    """What was measured: the commit, uncommitted changes to the crate, the binary's hash."""
    def git(*a):
        p = subprocess.run(["git", "-C", str(ROOT)] + list(a), capture_output=True, text=True)
        return p.stdout.strip() if p.returncode == 0 else ""
    dirty = [l.split(maxsplit=1)[1] for l in git("status", "--porcelain", "--", "src", "Cargo.toml",
                                                  "Cargo.lock").splitlines() if l.strip()]
    return {
        "commit": git("rev-parse", "--short=12", "HEAD"),
        "subject": git("log", "-1", "--format=%s"),
        "uncommitted": dirty,
        "binary_sha256": hashlib.sha256(Path(binary).read_bytes()).hexdigest()[:16],
    }


# Scenario name -> (wrk script, URL path or None, targets, pinned, tag code).
# The tag code keeps the ids of every run distinct (see Bench.tag).
SCENARIOS = {
    "hit_one": ("static", None, ["gateway", "nginx", "ceiling"], True, "h1"),
    "hit_10k": ("spread", "/", ["gateway", "nginx", "ceiling", "ceiling_spread", "ceiling_contract"], True, "hk"),
    "hit_10k_unpinned": ("spread", "/", ["gateway", "nginx"], False, "hu"),
    "miss": ("seq", "/", ["gateway", "nginx", "direct"], True, "ms"),
    "pass_get": ("static", LIST_PATH, ["gateway", "nginx", "floor_pool", "floor_conn", "direct"], True, "pg"),
    "pass_post": ("post", "/v1/organization/invites", ["gateway", "nginx", "floor_pool", "floor_conn", "direct"],
                  True, "pp"),
}
TARGET_CODES = {"gateway": "gw", "gateway_before": "gb", "nginx": "ng", "ceiling": "ce", "ceiling_spread": "cs",
                "ceiling_contract": "cc", "floor_pool": "fp", "floor_conn": "fc", "direct": "di"}
# Instances of the unpinned scenarios carry this suffix.
FREE = "@free"


def find_bin(bin_dir, name):
    for p in (bin_dir / name, bin_dir / "examples" / name):
        if p.is_file():
            return p
    return None


class Bench:
    def __init__(self, args, work):
        self.a = args
        self.work = work
        self.procs = Procs(work)
        self.runs = []
        self.notes = []
        self.skipped = {}
        self.before = args.before_bin or None
        ncpu = os.cpu_count() or 1
        self.ncpu = ncpu
        if args.pin and ncpu >= 2:
            cpus = list(range(ncpu))
            half = len(cpus) // 2
            self.client_cpus = ",".join(map(str, cpus[:half]))
            self.server_cpus = ",".join(map(str, cpus[half:]))
            self.server_ncpu = len(cpus) - half
        else:
            self.client_cpus = self.server_cpus = None
            self.server_ncpu = ncpu
        self.client_key = "oag_bench_" + secrets.token_hex(24)
        self.admin_key = "sk-admin-bench-" + secrets.token_hex(24)
        self.inst = {}  # instance name -> {"proc", "port", "admin", "upstream"}

    def snapshot(self):
        """Copies the binaries into the work directory: a rebuild during the
        run must not change what is measured."""
        args = self.a
        bins = self.work / "bin"
        bins.mkdir()
        bin_dir = Path(args.bin_dir)
        want = {"openai-admin-gateway": True, "bench_upstream": True, "bench_ceiling": True,
                "bench_proxy": True, "cache_floor": args.memory}
        self.bin = {}
        for name, required in want.items():
            src = find_bin(bin_dir, name)
            if src is None:
                if required:
                    raise BenchError(f"{name} not found in {bin_dir} or {bin_dir / 'examples'}")
                continue
            self.bin[name] = bins / name
            shutil.copy2(src, self.bin[name])
        self.gw_bin = self.bin["openai-admin-gateway"]
        self.up_bin = self.bin["bench_upstream"]
        self.ceil_bin = self.bin["bench_ceiling"]
        self.proxy_bin = self.bin["bench_proxy"]
        self.floor_bin = self.bin.get("cache_floor")
        self.source = source_revision(self.gw_bin)
        if args.before_bin:
            self.before_bin = bins / "openai-admin-gateway-before"
            shutil.copy2(args.before_bin, self.before_bin)
            self.before = {"label": args.before_label,
                           "binary_sha256": hashlib.sha256(self.before_bin.read_bytes()).hexdigest()[:16]}

    # -- the plan

    def targets(self, scen):
        ts = list(SCENARIOS[scen][2])
        if self.before:
            ts.insert(ts.index("gateway") + 1, "gateway_before")
        return ts

    def plan(self):
        """Scenario names to run, in order."""
        names = list(SCENARIOS)
        if self.a.memory_only:
            return []
        if self.a.only:
            keep = set(self.a.only.split(","))
            unknown = keep - set(names)
            if unknown:
                raise BenchError(f"--only: unknown scenario(s) {', '.join(sorted(unknown))}; "
                                 f"known: {', '.join(names)}")
            names = [n for n in names if n in keep]
        return [n for n in names if n not in self.skipped]

    def expected_seconds(self):
        """A bound on the time the run takes, from the plan (warm-ups and
        settling included, the memory test estimated)."""
        d, s = self.a.duration, self.a.settle
        total = 15.0  # start-up and sanity checks
        for scen in self.plan():
            for t in self.targets(scen):
                n = self.a.repeats * len(self.a.conns)
                warm = 3.0 if scen.startswith("hit") and not t.startswith("ceiling") else 0.0
                total += n * (d + s + warm + 0.5)
        if self.a.memory:
            total += 60 + max(self.a.memory_points) / 8000 + 60  # fill at ≥ ~8k/s, then cache_floor
        if self.a.syscalls:
            total += (8 + (3 if self.before else 0)) * 7
        if self.a.profile:
            total += 5 * 8
        return total

    # -- servers

    def start_upstream(self, name, cpus):
        port = free_port()
        p = self.procs.start(
            name, [str(self.up_bin), "--listen", f"127.0.0.1:{port}", "--admin-key", self.admin_key], cpus)
        wait_port(port, p, name)
        self.inst[name] = {"proc": p, "port": port, "admin": None, "upstream": None}

    def start_gateway(self, name, binary, upstream, cpus, workers=None):
        port, admin = free_port(), free_port()
        key_sha = hashlib.sha256(self.client_key.encode()).hexdigest()
        conf = self.work / f"{name.replace('@', '-')}.toml"
        gateway_config(conf, port, admin, self.inst[upstream]["port"], key_sha, ttl=300,
                       max_entries=100_000, workers=workers)
        env = dict(os.environ, OPENAI_ADMIN_KEY=self.admin_key, RUST_LOG="warn")
        p = self.procs.start(name, [str(binary), "--config", str(conf)], cpus, env)
        wait_port(port, p, name)
        self.inst[name] = {"proc": p, "port": port, "admin": admin, "upstream": upstream}

    def start_nginx(self, name, upstream, cpus, workers, reuseport):
        port = free_port()
        cache_dir = Path(tempfile.mkdtemp(prefix="oag-bench-nginx-", dir="/dev/shm"))
        self.cache_dirs.append(cache_dir)
        dirname = name.replace("@", "-")
        conf = nginx_config(self.work, dirname, cache_dir, port, self.inst[upstream]["port"],
                            self.client_key, self.admin_key, workers, reuseport)
        prefix = str(self.work / dirname)
        t = subprocess.run(["nginx", "-t", "-p", prefix, "-c", str(conf)], capture_output=True, text=True)
        if t.returncode != 0:
            raise BenchError(f"{name}: nginx -t failed:\n" + t.stderr)
        p = self.procs.start(name, ["nginx", "-p", prefix, "-c", str(conf)], cpus)
        wait_port(port, p, name)
        self.inst[name] = {"proc": p, "port": port, "admin": None, "upstream": upstream}

    def start_all(self):
        w = self.work
        self.cache_dirs = []
        plan = self.plan()
        pinned = [s for s in plan if SCENARIOS[s][3]]
        free = [s for s in plan if not SCENARIOS[s][3]]
        # The upstream the proxies use sits with wrk on the client CPUs: it
        # stands for a remote API and must not steal the server's core.
        self.start_upstream("upstream", self.client_cpus)
        # The "direct" rows measure the upstream itself, so it gets the
        # server core like every other server under test.
        self.start_upstream("direct", self.server_cpus)
        self.up = self.inst["upstream"]["proc"]
        self.ports = {"up": self.inst["upstream"]["port"], "up_direct": self.inst["direct"]["port"]}

        # Pinned servers: one core each (the memory test and the profile use them too).
        if pinned or self.a.memory or self.a.profile:
            self.start_gateway("gateway", self.gw_bin, "upstream", self.server_cpus)
            if self.before:
                self.start_gateway("gateway_before", self.before_bin, "upstream", self.server_cpus)
            self.start_nginx("nginx", "upstream", self.server_cpus, self.server_ncpu, reuseport=False)
            self.ports.update(gw=self.inst["gateway"]["port"], gw_admin=self.inst["gateway"]["admin"],
                              nginx=self.inst["nginx"]["port"])

        # Unpinned servers: their own upstream, everything floats over all CPUs.
        if free:
            self.start_upstream("upstream" + FREE, None)
            self.start_gateway("gateway" + FREE, self.gw_bin, "upstream" + FREE, None, workers=self.a.workers)
            if self.before:
                self.start_gateway("gateway_before" + FREE, self.before_bin, "upstream" + FREE, None)
            self.start_nginx("nginx" + FREE, "upstream" + FREE, None, "auto", reuseport=True)

        # The ceiling serves exactly the bytes the gateway stores for a user.
        st, _, body = request(
            self.ports["up_direct"], "GET", f"/v1/organization/users/user-{'ceiling'.ljust(12, 'x')}{0:012d}",
            {"Authorization": f"Bearer {self.admin_key}"},
        )
        if st != 200:
            raise BenchError(f"upstream direct answered {st}")
        self.body_len = len(body)
        (w / "ceiling-body.json").write_bytes(body)
        port = free_port()
        p = self.procs.start(
            "ceiling",
            [str(self.ceil_bin), "--listen", f"127.0.0.1:{port}", "--body-file", str(w / "ceiling-body.json")],
            self.server_cpus,
        )
        wait_port(port, p, "ceiling")
        self.inst["ceiling"] = {"proc": p, "port": port, "admin": None, "upstream": None}
        # The ceiling for hits over HOT_IDS users: as many copies of the
        # bytes, one picked by the id's digits, so its answers are not all
        # hot in the CPU's caches either.
        port = free_port()
        p = self.procs.start(
            "ceiling_spread",
            [str(self.ceil_bin), "--listen", f"127.0.0.1:{port}", "--body-file", str(w / "ceiling-body.json"),
             "--bodies", str(HOT_IDS)],
            self.server_cpus,
        )
        wait_port(port, p, "ceiling_spread")
        self.inst["ceiling_spread"] = {"proc": p, "port": port, "admin": None, "upstream": None}
        # The same, also doing what the contract asks of every hit: the
        # client key checked by its SHA-256, and Cache-Status, Age, Date and
        # a fresh x-request-id sent.
        port = free_port()
        p = self.procs.start(
            "ceiling_contract",
            [str(self.ceil_bin), "--listen", f"127.0.0.1:{port}", "--body-file", str(w / "ceiling-body.json"),
             "--bodies", str(HOT_IDS), "--contract", self.client_key],
            self.server_cpus,
        )
        wait_port(port, p, "ceiling_contract")
        self.inst["ceiling_contract"] = {"proc": p, "port": port, "admin": None, "upstream": None}
        if self.a.profile or any(s.startswith("pass") for s in plan):
            self.start_floors()

    def start_floors(self):
        """hyper's floor for pass-through (bench_proxy): a bare hyper server
        forwarding with hyper's client, through hyper-util's pool
        (floor_pool) or one upstream connection per client connection in the
        same task (floor_conn)."""
        for mode in ("pool", "conn"):
            name = "floor_" + mode
            port = free_port()
            p = self.procs.start(
                name,
                [str(self.proxy_bin), "--listen", f"127.0.0.1:{port}", "--upstream",
                 f"127.0.0.1:{self.ports['up']}", "--admin-key", self.admin_key, "--mode", mode],
                self.server_cpus,
            )
            wait_port(port, p, name)
            self.inst[name] = {"proc": p, "port": port, "admin": None, "upstream": None}

    def check_list_upstream(self):
        """pass_get needs the fake upstream to answer GET /organization/users;
        an older bench_upstream answers 404, which would abort the run: the
        scenario is then skipped, and the report says why."""
        if "pass_get" not in self.plan():
            return
        s, _, _ = request(self.ports["up"], "GET", LIST_PATH, {"Authorization": f"Bearer {self.admin_key}"})
        if s != 200:
            why = (f"the fake upstream (bench_upstream) answers {s} to GET {LIST_PATH}; "
                   "it needs a build that serves the user list")
            self.skipped["pass_get"] = why
            log(f"skipping pass_get: {why}")

    def instance(self, target, pinned=True):
        return target if pinned else target + FREE

    def server_pids(self, inst):
        p = self.inst[inst]["proc"]
        if inst.startswith("nginx"):
            return [p.pid] + children(p.pid)
        return [p.pid]

    def port(self, inst):
        return self.inst[inst]["port"]

    def auth(self, inst):
        return self.admin_key if inst == "direct" else self.client_key

    def upstream_stats(self, port=None):
        _, _, body = request(port or self.ports["up"], "GET", "/__stats")
        return {k: int(v) for k, v in (l.split() for l in body.decode().splitlines())}

    @staticmethod
    def forwarded(stats):
        """Requests the upstream served: every counter but these two (so a
        counter a newer bench_upstream adds is counted too)."""
        return sum(v for k, v in stats.items() if k not in ("unauthorized", "connections"))

    def metrics(self, admin_port=None):
        _, _, body = request(admin_port or self.ports["gw_admin"], "GET", "/metrics")
        out = {}
        for line in body.decode().splitlines():
            m = re.match(r"^(gateway_cache_\w+?)(?:_total)? ([0-9.e+]+)$", line)
            if m:
                out[m.group(1)] = float(m.group(2))
        return out

    # -- sanity

    def sanity(self):
        """Every server answers as the benchmark assumes; failures abort."""
        ck = {"Authorization": f"Bearer {self.client_key}"}
        ak = {"Authorization": f"Bearer {self.admin_key}"}
        body = (LUA / "post.lua").read_text().encode()  # any JSON-ish payload
        n = 0
        for inst, info in self.inst.items():
            if info["upstream"] is None:
                continue
            n += 1
            up = self.inst[info["upstream"]]["port"]
            uid = "user-" + f"sanity{n}".ljust(12, "x") + f"{1:012d}"
            path = f"/v1/organization/users/{uid}"
            _, _, want = request(up, "GET", path, ak)
            before = self.upstream_stats(up)
            p = info["port"]
            s1, h1, b1 = request(p, "GET", path, ck)
            s2, h2, b2 = request(p, "GET", path, ck)
            if (s1, s2) != (200, 200) or b1 != want or b2 != want:
                raise BenchError(f"{inst}: GET user gave {s1}/{s2} or wrong bytes")
            cs = h2.get("cache-status", "")
            if "hit" not in cs.lower():
                raise BenchError(f"{inst}: second GET was not a hit (Cache-Status: {cs!r})")
            s, _, _ = request(p, "GET", path, {"Authorization": "Bearer wrong"})
            s0, _, _ = request(p, "GET", path)
            if (s, s0) != (401, 401):
                raise BenchError(f"{inst}: wrong/missing key gave {s}/{s0}, want 401")
            s, _, echo = request(p, "POST", "/v1/organization/invites",
                                 dict(ck, **{"Content-Type": "application/json"}), body)
            if s != 200 or echo != body:
                raise BenchError(f"{inst}: POST pass-through gave {s} or a different body")
            after = self.upstream_stats(up)
            if after["users"] - before["users"] != 1 or after["posts"] - before["posts"] != 1:
                raise BenchError(f"upstream saw {after} after {before}: want one fetch and one POST from {inst}")
            if after["unauthorized"] != before["unauthorized"]:
                raise BenchError(f"{inst} forwarded a request with a wrong admin key")
            if "pass_get" in self.plan():
                # Both list requests must reach the upstream (when it counts them).
                n0 = self.forwarded(self.upstream_stats(up))
                s, _, lb = request(p, "GET", LIST_PATH, ck)
                if s != 200 or not lb:
                    raise BenchError(f"{inst}: GET {LIST_PATH} gave {s}")
                n1 = self.forwarded(self.upstream_stats(up))
                request(p, "GET", LIST_PATH, ck)
                n2 = self.forwarded(self.upstream_stats(up))
                if n1 > n0 and n2 == n1:
                    raise BenchError(f"{inst}: a second GET {LIST_PATH} did not reach the upstream (cached?)")
                if n1 == n0 and inst == "gateway":
                    log("note: the fake upstream does not count list requests; pass_get shows 0 upstream reqs")
        uid = "user-" + "sanity".ljust(12, "x") + f"{1:012d}"
        path = f"/v1/organization/users/{uid}"
        s, _, b = request(self.port("ceiling"), "GET", path, ck)
        if s != 200 or len(b) != self.body_len:
            raise BenchError("ceiling answered wrongly")
        if "ceiling_contract" in self.inst:
            # The contract ceiling sends what a gateway hit sends (header
            # names), and refuses a wrong key.
            s, ch, b = request(self.port("ceiling_contract"), "GET", path, ck)
            if s != 200 or len(b) != self.body_len:
                raise BenchError("ceiling_contract answered wrongly")
            request(self.port("gateway"), "GET", path, ck)
            s, gh, _ = request(self.port("gateway"), "GET", path, ck)
            if s != 200 or "; hit" not in gh.get("cache-status", ""):
                raise BenchError("gateway: a second GET of a user was not a hit")
            if set(ch) != set(gh):
                raise BenchError(f"ceiling_contract sends {sorted(ch)}, a gateway hit {sorted(gh)}")
            s, _, _ = request(self.port("ceiling_contract"), "GET", path,
                              {"Authorization": "Bearer oag_wrong"})
            if s != 401:
                raise BenchError("ceiling_contract accepted a wrong key")
        for floor in ("floor_pool", "floor_conn"):
            if floor not in self.inst:
                continue
            # Forwards with the admin key in place of the client's, both ways.
            before = self.upstream_stats()
            s, _, echo = request(self.port(floor), "POST", "/v1/organization/invites",
                                 dict(ck, **{"Content-Type": "application/json"}), body)
            s2, _, lb = request(self.port(floor), "GET", LIST_PATH, ck)
            after = self.upstream_stats()
            if s != 200 or echo != body or s2 != 200 or not lb:
                raise BenchError(f"{floor}: POST gave {s}, GET list {s2}, or a different body")
            if after["unauthorized"] != before["unauthorized"] or after["posts"] - before["posts"] != 1:
                raise BenchError(f"{floor}: the upstream saw {after} after {before}")
        s, _, _ = request(self.ports["up_direct"], "GET", path)
        if s != 401:
            raise BenchError("upstream accepted a request without the admin key")
        log(f"sanity checks passed for {n} proxies (bytes identical, hits are hits, wrong keys get 401 and "
            "never reach the upstream, pass-through reaches it)")

    # -- wrk

    def wrk(self, inst, conns, duration, script, path, env_extra=None, measure=True, port=None,
            pinned=True, threads=1):
        port = port or self.port(inst)
        cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--latency",
               "-H", f"Authorization: Bearer {self.auth(inst)}",
               "-s", str(lua_script(self.work, script)), f"http://127.0.0.1:{port}{path}"]
        if self.client_cpus and pinned:
            cmd = ["taskset", "-c", self.client_cpus] + cmd
        env = dict(os.environ, **(env_extra or {}))
        pids = self.server_pids(inst) if measure else []
        upname = self.inst.get(inst, {}).get("upstream") or "upstream"
        up = self.inst[upname]
        up_before = self.upstream_stats(up["port"]) if measure else None
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0, sys0, up0 = ticks(pids), system_busy_ticks(), ticks([up["proc"].pid])
        w0 = time.time()
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.time() - w0
        t1, sys1, up1 = ticks(pids), system_busy_ticks(), ticks([up["proc"].pid])
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        m = re.search(r"^BENCH_JSON (.*)$", p.stdout, re.M)
        if p.returncode != 0 or not m:
            raise BenchError(f"wrk failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
        r = json.loads(m.group(1))
        r["wrk_output"] = p.stdout
        errors = r["connect"] + r["read"] + r["write"] + r["timeout"]
        # A reference floor (bench_proxy) is not what is under test: its
        # errors are kept in its row and flagged in the report, and the run
        # goes on.
        if (errors or r["status"]) and not inst.startswith("floor_"):
            raise BenchError(
                f"{inst} {script} c={conns}: {errors} socket errors, {r['status']} non-2xx/3xx "
                f"responses; aborting.\n{p.stdout}"
            )
        if r["requests"] == 0:
            raise BenchError(f"{inst} {script} c={conns}: no requests completed\n{p.stdout}")
        r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
        if measure:
            wrk_ticks = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
            srv = (t1 - t0) / CLK
            upc = (up1 - up0) / CLK
            r["server_cpu_s"] = srv
            r["server_cpu_pct"] = 100 * srv / wall
            r["server_rss_kb"] = rss_kb(pids)
            r["wrk_cpu_pct"] = 100 * wrk_ticks / wall
            r["wrk_threads"] = threads
            r["upstream_cpu_pct"] = 100 * upc / wall
            # CPU used by anything but this benchmark's processes (other builds...).
            other = (sys1 - sys0) / CLK - srv - wrk_ticks - upc
            r["other_cpu_pct"] = max(0.0, 100 * other / wall)
            after = self.upstream_stats(up["port"])
            r["upstream_requests"] = self.forwarded(after) - self.forwarded(up_before)
            # Less the connection of the /__stats request itself.
            r["upstream_connections"] = max(0, after.get("connections", 0) - up_before.get("connections", 0) - 1)
            r["upstream_connections_net"] = True
        return r

    def warm(self, inst, tag, n, passes=3, pinned=True):
        """Requests ids 0..n-1 `passes` times (the gateway's cache admits an
        id against a full cache only once it has been asked for more often
        than the entry it would evict; nginx needs one pass)."""
        if inst.startswith("gateway"):
            self.purge_gateway(inst)
        if n == 1:
            path = f"/v1/organization/users/user-{tag}{0:012d}"
            for _ in range(passes):
                s, _, _ = request(self.port(inst), "GET", path, {"Authorization": f"Bearer {self.client_key}"})
                if s != 200:
                    raise BenchError(f"warm-up of {inst} got {s}")
            return
        done = 0
        while done < n * passes:
            r = self.wrk(inst, 64, 2, "seq", "/", {"BENCH_TAG": tag, "BENCH_IDS": str(n), "BENCH_START": str(done)},
                         measure=False, pinned=pinned)
            done += r["sent"]

    def purge_gateway(self, inst):
        """Empties the gateway's cache (admin DELETE /cache) before a hit
        warm-up. Without it a full cache whose entries were hot in an earlier
        run can refuse the new hot set (TinyLFU admission), and hits turn into
        upstream fetches."""
        admin = self.inst[inst]["admin"]
        s, _, _ = request(admin, "DELETE", "/cache")
        if s != 200:
            raise BenchError(f"{inst} DELETE /cache answered {s}")
        for _ in range(50):
            if self.metrics(admin).get("gateway_cache_entries", 0) < 100:
                return
            time.sleep(0.1)
        log(f"warning: {inst} cache still holds entries after a purge")

    # -- the matrix

    def tag(self, scen, rep, target, conns):
        t = f"{SCENARIOS[scen][4]}{rep}{TARGET_CODES[target]}{conns}"
        return (t + "z" * 12)[:12]

    def run_matrix(self):
        d = self.a.duration
        for rep in range(self.a.repeats):
            for scen in self.plan():
                script, path, _, pinned, _ = SCENARIOS[scen]
                targets = self.targets(scen)
                threads = 1 if pinned else self.a.unpinned_threads
                for conns in self.a.conns:
                    order = targets if rep % 2 == 0 else list(reversed(targets))
                    for target in order:
                        inst = self.instance(target, pinned)
                        env = {}
                        tag = self.tag(scen, rep, target, conns)
                        if scen == "hit_one":
                            path = f"/v1/organization/users/user-{tag}{0:012d}"
                            if not target.startswith("ceiling"):
                                self.warm(inst, tag, 1)
                        elif scen.startswith("hit_10k"):
                            env = {"BENCH_TAG": tag, "BENCH_IDS": str(HOT_IDS)}
                            if not target.startswith("ceiling"):
                                self.warm(inst, tag, HOT_IDS, passes=WARM_PASSES[target.split("_")[0]],
                                          pinned=pinned)
                        elif scen == "miss":
                            env = {"BENCH_TAG": tag, "BENCH_IDS": "0", "BENCH_START": "0"}
                        time.sleep(self.a.settle)
                        r = self.wrk(inst, conns, d, script, path, env, pinned=pinned, threads=threads)
                        r.update(rep=rep, scenario=scen, conns=conns, target=target, pinned=pinned)
                        self.runs.append(r)
                        log(
                            f"rep {rep} {scen:16} c={conns:<3} {target:14} {r['rps']:>9.0f} rps  "
                            f"p50 {r['p50_us']/1000:6.2f} ms  p99 {r['p99_us']/1000:6.2f} ms  "
                            f"cpu {r['server_cpu_pct']:5.1f}%  wrk {r['wrk_cpu_pct']:5.1f}%  "
                            f"other {r['other_cpu_pct']:5.1f}%  upstream reqs {r['upstream_requests']} "
                            f"conns {r['upstream_connections']}"
                        )
                        self.save()

    # -- memory

    def memory(self):
        """RSS of a gateway holding 100k and 1M users."""
        w = self.work
        port, admin = free_port(), free_port()
        key_sha = hashlib.sha256(self.client_key.encode()).hexdigest()
        gateway_config(w / "gateway-mem.toml", port, admin, self.ports["up"], key_sha, ttl=3600,
                       max_entries=max(self.a.memory_points) * 2)
        env = dict(os.environ, OPENAI_ADMIN_KEY=self.admin_key, RUST_LOG="warn")
        gw = self.procs.start("gateway-mem", [str(self.gw_bin), "--config", str(w / "gateway-mem.toml")],
                              self.server_cpus, env)
        wait_port(port, gw, "gateway-mem")
        self.mem_gw = gw
        tag = "memfill".ljust(12, "x")
        ck = {"Authorization": f"Bearer {self.client_key}"}
        # Baseline: the process after serving 64 connections (their buffers,
        # the runtime, the pools), with one user cached.
        one = f"/v1/organization/users/user-{'membase'.ljust(12, 'x')}{0:012d}"
        s, _, body = request(port, "GET", one, ck)
        if s != 200:
            raise BenchError(f"gateway-mem answered {s}")
        body_len = len(body)
        self.wrk("gateway-mem", 64, 2, "static", one, measure=False, port=port)
        self.metrics(admin)
        time.sleep(1)
        base = rss_kb([gw.pid])
        out = {"body_bytes": body_len, "baseline_rss_kb": base, "points": []}
        log(f"memory: baseline RSS {base} KiB, body {body_len} bytes")
        filled, rate = 0, 20_000.0
        deadline = time.time() + self.a.memory_timeout
        for n in sorted(self.a.memory_points):
            while filled < n:
                if time.time() > deadline:
                    raise BenchError(f"memory: filled only {filled} users in {self.a.memory_timeout}s")
                d = int(min(30, max(1, (n - filled) / rate)))
                r = self.wrk("gateway-mem", 64, d, "seq", "/", {"BENCH_TAG": tag, "BENCH_IDS": str(n),
                             "BENCH_START": str(filled)}, measure=False, port=port)
                filled += min(r["sent"], n - filled)
                rate = max(1000.0, r["rps"])
            m = self.metrics(admin)
            time.sleep(1)
            m = self.metrics(admin)
            rss = rss_kb([gw.pid])
            entries = int(m.get("gateway_cache_entries", 0))
            if entries < n * 0.99:
                raise BenchError(f"memory: want {n} entries cached, gateway reports {entries}")
            per = (rss - base) * 1024 / entries
            p = {"users": n, "entries": entries, "rss_kb": rss, "bytes_per_entry": per,
                 "overhead_per_entry": per - body_len}
            out["points"].append(p)
            log(f"memory: {entries} users cached: RSS {rss} KiB, {per:.0f} B/entry, "
                f"{per - body_len:.0f} B over the {body_len}-byte body")
            self.save(memory=out)
        # The per-thread fronts copy users that are read again (hits); the
        # fill above is misses only, so they are empty. One read pass over
        # distinct cached ids fills them as far as any hit pattern can
        # (each front is direct-mapped and bounded), and the figure of
        # record counts them.
        n = max(self.a.memory_points)
        passed = min(n, 300_000)
        r = self.wrk("gateway-mem", 64, 10, "seq", "/", {"BENCH_TAG": tag, "BENCH_IDS": str(n),
                     "BENCH_START": str(n - passed)}, measure=False, port=port)
        self.metrics(admin)
        time.sleep(1)
        m = self.metrics(admin)
        rss = rss_kb([gw.pid])
        entries = int(m.get("gateway_cache_entries", 0))
        per = (rss - base) * 1024 / max(1, entries)
        out["after_reads"] = {"users": n, "entries": entries, "reads": r["sent"], "distinct_ids": passed,
                              "rss_kb": rss, "bytes_per_entry": per, "overhead_per_entry": per - body_len}
        log(f"memory: after {r['sent']} reads over {passed} distinct cached ids: RSS {rss} KiB, "
            f"{per - body_len:.0f} B over the body per user (fronts included)")
        self.save(memory=out)
        self.procs.stop(gw)
        out["floor"] = self.cache_floor(max(self.a.memory_points))
        self.save(memory=out)
        return out

    def cache_floor(self, n):
        """examples/cache_floor.rs at n entries, one process per mode: what
        the bodies alone cost, what moka alone costs per entry (u128 keys,
        zero-size values: the floor of any moka-based cache) and what the
        gateway's cache costs, all in one process without a server."""
        out = {}
        for mode in ("bodies", "moka", "moka-sync", "moka-v8", "moka-v32", "moka-ttl",
                     "moka-expiry", "moka-tti", "moka-body", "gateway", "filled", "front"):
            cmd = [str(self.floor_bin), mode, str(n)]
            if self.server_cpus:
                cmd = ["taskset", "-c", self.server_cpus] + cmd
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            if p.returncode != 0:
                raise BenchError(f"cache_floor {mode} failed:\n{p.stderr}")
            out[mode] = json.loads(p.stdout.strip().splitlines()[-1])
            log(f"cache floor: {mode}: {out[mode]['overhead']} B/entry over the body")
        return out

    # -- profile

    def under_perf(self, perf_args, out, secs, lead, target, script, path, env):
        """Runs `perf <perf_args> -o out` on the target server's processes
        while wrk runs the scenario at 64 connections for `secs` (perf
        starts `lead` s earlier and stops as long after). Returns wrk's
        result and perf's error text (None when it wrote `out`)."""
        pids = ",".join(str(p) for p in self.server_pids(target))
        rec = subprocess.Popen(["perf", *perf_args, "-o", str(out), "-p", pids, "--", "sleep", str(secs + lead)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(lead)
        r = self.wrk(target, 64, secs, script, path, env, measure=True)
        _, err = rec.communicate()
        if rec.returncode != 0 or not out.exists():
            return r, err.decode(errors="replace")[-2000:]
        return r, None

    def profile(self):
        """perf profiles at 64 connections, 6 s each: the gateway on hits over
        10k ids, misses and pass-through, and beside it the server it is
        compared with (the ceiling on hits, nginx and hyper's floor on
        pass-through). Self time
        per component and symbol, plus CPU-µs per request (from the server's
        CPU time and wrk's request count over the same 6 s), so the two
        profiles can be set side by side."""
        if not shutil.which("perf"):
            return {"error": "perf not installed"}
        res = {}
        plan = (("hit_10k", "gateway", "spread", "/"), ("hit_10k", "ceiling", "spread", "/"),
                ("miss", "gateway", "seq", "/"),
                ("pass_get", "gateway", "static", LIST_PATH),
                ("pass_get", "nginx", "static", LIST_PATH),
                ("pass_get", "floor_pool", "static", LIST_PATH),
                ("pass_get", "floor_conn", "static", LIST_PATH),
                ("pass_post", "gateway", "post", "/v1/organization/invites"),
                ("pass_post", "nginx", "post", "/v1/organization/invites"),
                ("pass_post", "floor_pool", "post", "/v1/organization/invites"),
                ("pass_post", "floor_conn", "post", "/v1/organization/invites"))
        for scen, target, script, path in plan:
            tag = f"prof{scen[:4]}{TARGET_CODES[target]}".ljust(12, "z")
            env = {"BENCH_TAG": tag, "BENCH_IDS": str(HOT_IDS) if scen == "hit_10k" else "0",
                   "BENCH_START": "0"}
            if scen == "hit_10k" and target == "gateway":
                self.warm("gateway", tag, HOT_IDS)
            data = self.work / f"perf-{scen}-{target}.data"
            r, err = self.under_perf(["record", "-F", "499", "--call-graph", "dwarf,8192"], data, 6, 0.5,
                                     target, script, path, env)
            if err is not None:
                return {"error": err}
            summary = perf_summary(data)
            summary["target"] = target
            summary["rps"] = r["rps"]
            summary["server_cpu_pct"] = r["server_cpu_pct"]
            # perf (sampling at 499 Hz with dwarf stacks) slows the server a
            # little; the same holds for both sides of a comparison.
            summary["cpu_us_per_request"] = 1e6 * (r["server_cpu_pct"] / 100) / r["rps"]
            res[f"{scen}/{target}"] = summary
            log(f"profiled {scen} on {target}: {r['rps']:.0f} rps, "
                f"{summary['cpu_us_per_request']:.1f} CPU-us per request")
        return res

    def syscalls(self):
        """System calls and context switches per request: `perf stat` on the
        syscall tracepoints of the server's processes (every thread) for
        5 s while wrk runs the scenario at 64 connections. Tracepoint
        counting costs little, so the server runs at about its usual pace
        and the counts are its usual batching. Pass-through beside nginx
        (and the gateway before, when given), hits beside the ceiling."""
        if not shutil.which("perf"):
            return {"error": "perf not installed"}
        res = {}
        plan = [("pass_get", "static", LIST_PATH), ("pass_post", "post", "/v1/organization/invites"),
                ("hit_10k", "spread", "/")]
        for scen, script, path in plan:
            targets = ["gateway"] + (["gateway_before"] if self.before else [])
            targets += ["ceiling"] if scen == "hit_10k" else ["nginx"]
            for target in targets:
                tag = f"sys{scen[:4]}{TARGET_CODES[target]}".ljust(12, "z")
                env = {"BENCH_TAG": tag, "BENCH_IDS": str(HOT_IDS) if scen == "hit_10k" else "0",
                       "BENCH_START": "0"}
                if scen == "hit_10k" and target != "ceiling":
                    self.warm(target, tag, HOT_IDS)
                out = self.work / f"syscalls-{scen}-{target}.csv"
                r, err = self.under_perf(["stat", "-x", ",", "-e",
                                          "raw_syscalls:sys_enter,context-switches,syscalls:sys_enter_*"],
                                         out, 5, 0.25, target, script, path, env)
                if err is not None:
                    return {"error": err}
                counts = {}
                for line in out.read_text().splitlines():
                    f = line.split(",")
                    if len(f) < 3 or not f[0].strip().isdigit():
                        continue
                    name = f[2].replace("syscalls:sys_enter_", "")
                    counts[name] = int(f[0])
                n = r["requests"]
                total = counts.pop("raw_syscalls:sys_enter", 0)
                cs = counts.pop("context-switches", 0)
                per = {k: v / n for k, v in counts.items() if v / n >= 0.01}
                res[f"{scen}/{target}"] = {
                    "requests": n, "rps": r["rps"], "syscalls_per_request": total / n,
                    "context_switches_per_request": cs / n,
                    "by_call": dict(sorted(per.items(), key=lambda kv: -kv[1])),
                }
                log(f"syscalls {scen} on {target}: {total / n:.2f} per request, "
                    f"{cs / n:.2f} context switches per request")
        return res

    # -- output

    def machine(self):
        model = ""
        try:
            for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
                if line.startswith("Model name:"):
                    model = line.split(":", 1)[1].strip()
        except OSError:
            pass
        ver = lambda c: subprocess.run(c, capture_output=True, text=True)
        nginx_v = ver(["nginx", "-v"]).stderr.strip()
        wrk_v = ver(["wrk", "-v"]).stdout.splitlines()[0] if shutil.which("wrk") else ""
        return {
            "nproc": os.cpu_count(),
            "cpu_model": model,
            "kernel": platform.release(),
            "nginx": nginx_v,
            "wrk": wrk_v,
            "rustc": ver(["rustc", "--version"]).stdout.strip(),
            "mem_total_kb": int(open("/proc/meminfo").readline().split()[1]),
        }

    def save(self, memory=None, final=False):
        if memory is not None:
            self.mem = memory
        doc = {
            "command": self.a.command,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": self.meta_machine,
            "source": self.source,
            "before": self.before,
            "workers": self.a.workers,
            "unpinned_wrk_threads": self.a.unpinned_threads,
            "scenarios": self.plan(),
            "skipped": self.skipped,
            "expected_s": round(self.expected_seconds()),
            "loadavg_start": self.load_start,
            "loadavg_end": open("/proc/loadavg").read().split()[:3],
            "pinning": {"client_cpus": self.client_cpus, "server_cpus": self.server_cpus,
                        "server_ncpu": self.server_ncpu},
            "duration_s": self.a.duration,
            "repeats": self.a.repeats,
            "conns": self.a.conns,
            "body_bytes": getattr(self, "body_len", None),
            "warm_passes": WARM_PASSES,
            "purge_before_hits": True,
            "runs": [{k: v for k, v in r.items() if k != "wrk_output"} for r in self.runs],
            "memory": getattr(self, "mem", None),
            "profile": getattr(self, "prof", None),
            "syscalls": getattr(self, "sys", None),
            "complete": final,
        }
        tmp = Path(self.a.out + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(self.a.out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--command", default="benches/load/run.sh", help="how the run was started, for the report")
    ap.add_argument("--bin-dir", default=str(ROOT / "target" / "release"),
                    help="directory holding openai-admin-gateway and (in it or its examples/) bench_upstream, "
                         "bench_ceiling, bench_proxy, cache_floor (default: <repo>/target/release)")
    ap.add_argument("--before-bin", default="", help="an older gateway binary: adds the target gateway_before")
    ap.add_argument("--before-label", default="", help="what --before-bin was built from (e.g. a commit)")
    ap.add_argument("--workers", type=int, default=None,
                    help="server.workers for the unpinned gateway (default: not set, the gateway's own default)")
    ap.add_argument("--unpinned-threads", type=int, default=2, help="wrk threads in the unpinned scenarios")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--conns", type=lambda s: [int(x) for x in s.split(",")], default=[64, 256])
    ap.add_argument("--settle", type=float, default=0.5)
    ap.add_argument("--memory-points", type=lambda s: [int(x) for x in s.split(",")],
                    default=[100_000, 1_000_000])
    ap.add_argument("--no-memory", dest="memory", action="store_false")
    ap.add_argument("--memory-only", action="store_true",
                    help="only the memory test (users cached, then the cache floor): e.g. for an older build")
    ap.add_argument("--memory-timeout", type=int, default=900)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--no-syscalls", dest="syscalls", action="store_false",
                    help="skip the system calls per request (perf stat on syscall tracepoints)")
    ap.add_argument("--no-pin", dest="pin", action="store_false")
    ap.add_argument("--plan", action="store_true", help="print the scenarios and the expected time, and exit")
    ap.add_argument("--only", default="", help=f"comma-separated scenarios: {', '.join(SCENARIOS)}")
    a = ap.parse_args()
    if a.before_bin and not Path(a.before_bin).is_file():
        ap.error(f"--before-bin {a.before_bin}: no such file")

    work = Path(tempfile.mkdtemp(prefix="oag-bench-"))
    try:
        b = Bench(a, work)
        b.plan()
        if a.plan:
            for scen in b.plan():
                print(f"{scen:17} {', '.join(b.targets(scen))}")
            print(f"expected total: about {b.expected_seconds() / 60:.0f} min")
            shutil.rmtree(work, ignore_errors=True)
            return
        b.snapshot()
    except BenchError as e:
        shutil.rmtree(work, ignore_errors=True)
        log("ABORTED: " + str(e))
        sys.exit(2)
    b.meta_machine = b.machine()
    b.load_start = open("/proc/loadavg").read().split()[:3]
    log(f"work dir {work}; client CPUs {b.client_cpus}, server CPUs {b.server_cpus}")
    est = b.expected_seconds()
    log(f"scenarios {', '.join(b.plan())}; targets per scenario include "
        f"{'gateway_before, ' if b.before else ''}gateway, nginx; {a.repeats} repeats x "
        f"{len(a.conns)} connection counts x {a.duration} s; expected total about {est / 60:.0f} min "
        f"(until {time.strftime('%H:%M', time.localtime(time.time() + est))})")
    stop = {"sig": None}

    def on_signal(sig, _):
        stop["sig"] = sig
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        b.start_all()
        if a.memory_only:
            b.memory()
        else:
            b.check_list_upstream()
            b.sanity()
            b.run_matrix()
            if a.memory:
                b.memory()
            if a.syscalls:
                log("counting system calls per request (perf stat, 64 conns)")
                b.sys = b.syscalls()
                b.save()
            if a.profile:
                log("profiling the gateway (perf, hits over 10k ids, 64 conns)")
                b.prof = b.profile()
        b.save(final=True)
        log(f"results: {a.out}")
    except BenchError as e:
        log("ABORTED: " + str(e))
        b.save()
        for n, p in b.procs.items:
            if p.poll() is not None and p.returncode not in (0, -15):
                log(f"{n} exited with {p.returncode}; log: {work / (n + '.log')}")
        sys.exit(2)
    finally:
        b.procs.stop_all()
        for d in getattr(b, "cache_dirs", []):
            shutil.rmtree(d, ignore_errors=True)
    if os.environ.get("BENCH_KEEP"):
        log(f"kept the work directory (perf data, logs): {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
