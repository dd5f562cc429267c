#!/usr/bin/env python3
"""Side-by-side load benchmark driver (run by benches/load/run.sh).

Starts, on 127.0.0.1 only:
  upstream   examples/bench_upstream  (fake Admin API; one instance for the proxies,
                                       one on the server core for the "direct" rows)
  gateway    target/release/openai-admin-gateway (RUST_LOG=warn)
  nginx      proxy_cache doing the same job
  ceiling    examples/bench_ceiling   (same stored bytes for every request)
then runs every scenario with wrk, interleaved, REPEATS times, measures the
server's CPU and RSS from /proc, runs the memory test, and writes one JSON file
that report.py turns into benches/README.md. Any wrk error or non-2xx aborts.
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
            self.stop(p, signal.SIGQUIT if name == "nginx" else signal.SIGTERM)


# ---------------------------------------------------------------- configs


def gateway_config(path, port, admin_port, upstream_port, key_sha, ttl, max_entries):
    path.write_text(
        f"""# Written by benches/load/bench.py: one client, TTL {ttl}s.
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin_port}"
path_prefix = "/v1"

[upstream]
base_url = "http://127.0.0.1:{upstream_port}/v1"
admin_key_env = "OPENAI_ADMIN_KEY"

[cache]
ttl_secs = {ttl}
max_entries = {max_entries}

[[clients]]
name = "bench-dashboard"
key_sha256 = "{key_sha}"
allow = ["GET /organization/users/*", "POST /organization/invites"]
"""
    )


def nginx_config(work, cache_dir, port, upstream_port, client_key, admin_key, workers):
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
    conf.write_text(
        f"""# Written by benches/load/bench.py: nginx doing the gateway's job as well as it can.
user root;
daemon off;
master_process on;
worker_processes {workers};
worker_rlimit_nofile {nofile};
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;

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
        listen 127.0.0.1:{port} backlog=4096;

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
                r"unlink_chunk|alloc_perturb|__rust_(alloc|dealloc|realloc)", s):
        return "allocator (glibc malloc/free)"
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


class Bench:
    def __init__(self, args, work):
        self.a = args
        self.work = work
        self.procs = Procs(work)
        self.runs = []
        self.notes = []
        # Snapshots of the binaries: a rebuild during the run must not change
        # what is measured.
        bins = work / "bin"
        bins.mkdir()
        self.gw_bin = bins / "openai-admin-gateway"
        self.up_bin = bins / "bench_upstream"
        self.ceil_bin = bins / "bench_ceiling"
        self.floor_bin = bins / "cache_floor"
        for src, dst in ((ROOT / "target/release/examples/cache_floor", self.floor_bin),
                         (ROOT / "target/release/openai-admin-gateway", self.gw_bin),
                         (ROOT / "target/release/examples/bench_upstream", self.up_bin),
                         (ROOT / "target/release/examples/bench_ceiling", self.ceil_bin)):
            shutil.copy2(src, dst)
        self.source = source_revision(self.gw_bin)
        ncpu = os.cpu_count() or 1
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

    # -- servers

    def start_all(self):
        w = self.work
        self.ports = {k: free_port() for k in ("up", "up_direct", "gw", "gw_admin", "nginx", "ceil")}
        env = dict(os.environ, OPENAI_ADMIN_KEY=self.admin_key, RUST_LOG="warn")
        # The upstream the proxies use sits with wrk on the client CPUs: it
        # stands for a remote API and must not steal the server's core.
        self.up = self.procs.start(
            "upstream",
            [str(self.up_bin), "--listen", f"127.0.0.1:{self.ports['up']}", "--admin-key", self.admin_key],
            self.client_cpus,
        )
        # The "direct" rows measure the upstream itself, so it gets the
        # server core like every other server under test.
        self.up_direct = self.procs.start(
            "upstream-direct",
            [str(self.up_bin), "--listen", f"127.0.0.1:{self.ports['up_direct']}", "--admin-key", self.admin_key],
            self.server_cpus,
        )
        wait_port(self.ports["up"], self.up, "upstream")
        wait_port(self.ports["up_direct"], self.up_direct, "upstream-direct")

        key_sha = hashlib.sha256(self.client_key.encode()).hexdigest()
        gateway_config(
            w / "gateway.toml", self.ports["gw"], self.ports["gw_admin"], self.ports["up"],
            key_sha, ttl=300, max_entries=100_000,
        )
        self.gw = self.procs.start(
            "gateway", [str(self.gw_bin), "--config", str(w / "gateway.toml")], self.server_cpus, env
        )
        wait_port(self.ports["gw"], self.gw, "gateway")

        self.cache_dir = Path(tempfile.mkdtemp(prefix="oag-bench-nginx-", dir="/dev/shm"))
        conf = nginx_config(
            w, self.cache_dir, self.ports["nginx"], self.ports["up"], self.client_key,
            self.admin_key, self.server_ncpu,
        )
        t = subprocess.run(["nginx", "-t", "-p", str(w), "-c", str(conf)], capture_output=True, text=True)
        if t.returncode != 0:
            raise BenchError("nginx -t failed:\n" + t.stderr)
        self.nginx = self.procs.start("nginx", ["nginx", "-p", str(w), "-c", str(conf)], self.server_cpus)
        wait_port(self.ports["nginx"], self.nginx, "nginx")

        # The ceiling serves exactly the bytes the gateway stores for a user.
        st, _, body = request(
            self.ports["up_direct"], "GET", f"/v1/organization/users/user-{'ceiling'.ljust(12, 'x')}{0:012d}",
            {"Authorization": f"Bearer {self.admin_key}"},
        )
        if st != 200:
            raise BenchError(f"upstream direct answered {st}")
        self.body_len = len(body)
        (w / "ceiling-body.json").write_bytes(body)
        self.ceil = self.procs.start(
            "ceiling",
            [str(self.ceil_bin), "--listen", f"127.0.0.1:{self.ports['ceil']}", "--body-file", str(w / "ceiling-body.json")],
            self.server_cpus,
        )
        wait_port(self.ports["ceil"], self.ceil, "ceiling")

    def server_pids(self, target):
        if target == "gateway":
            return [self.gw.pid]
        if target == "nginx":
            return [self.nginx.pid] + children(self.nginx.pid)
        if target == "ceiling":
            return [self.ceil.pid]
        if target == "direct":
            return [self.up_direct.pid]
        raise KeyError(target)

    def port(self, target):
        return {"gateway": self.ports["gw"], "nginx": self.ports["nginx"],
                "ceiling": self.ports["ceil"], "direct": self.ports["up_direct"]}[target]

    def auth(self, target):
        return self.admin_key if target == "direct" else self.client_key

    def upstream_stats(self, port=None):
        _, _, body = request(port or self.ports["up"], "GET", "/__stats")
        return {k: int(v) for k, v in (l.split() for l in body.decode().splitlines())}

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
        uid = "user-" + "sanity".ljust(12, "x") + f"{1:012d}"
        path = f"/v1/organization/users/{uid}"
        _, _, want = request(self.ports["up"], "GET", path, ak)
        before = self.upstream_stats()
        for target in ("gateway", "nginx"):
            p = self.port(target)
            s1, h1, b1 = request(p, "GET", path, ck)
            s2, h2, b2 = request(p, "GET", path, ck)
            if (s1, s2) != (200, 200) or b1 != want or b2 != want:
                raise BenchError(f"{target}: GET user gave {s1}/{s2} or wrong bytes")
            cs = h2.get("cache-status", "")
            if "hit" not in cs.lower():
                raise BenchError(f"{target}: second GET was not a hit (Cache-Status: {cs!r})")
            s, _, _ = request(p, "GET", path, {"Authorization": "Bearer wrong"})
            s0, _, _ = request(p, "GET", path)
            if (s, s0) != (401, 401):
                raise BenchError(f"{target}: wrong/missing key gave {s}/{s0}, want 401")
            body = (LUA / "post.lua").read_text()  # any 1 KiB-ish payload
            s, _, echo = request(p, "POST", "/v1/organization/invites",
                                 dict(ck, **{"Content-Type": "application/json"}), body.encode())
            if s != 200 or echo != body.encode():
                raise BenchError(f"{target}: POST pass-through gave {s} or a different body")
        after = self.upstream_stats()
        if after["users"] - before["users"] != 2 or after["posts"] - before["posts"] != 2:
            raise BenchError(f"upstream saw {after} after {before}: want one fetch and one POST per proxy")
        if after["unauthorized"] != before["unauthorized"]:
            raise BenchError("a proxy forwarded a request with a wrong admin key")
        s, _, b = request(self.ports["ceil"], "GET", path, ck)
        if s != 200 or len(b) != self.body_len:
            raise BenchError("ceiling answered wrongly")
        s, _, _ = request(self.ports["up_direct"], "GET", path)
        if s != 401:
            raise BenchError("upstream accepted a request without the admin key")
        log("sanity checks passed (bytes identical, hits are hits, wrong keys get 401 and never reach the upstream)")

    # -- wrk

    def wrk(self, target, conns, duration, script, path, env_extra=None, measure=True, port=None):
        port = port or self.port(target)
        cmd = ["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency",
               "-H", f"Authorization: Bearer {self.auth(target)}",
               "-s", str(lua_script(self.work, script)), f"http://127.0.0.1:{port}{path}"]
        if self.client_cpus:
            cmd = ["taskset", "-c", self.client_cpus] + cmd
        env = dict(os.environ, **(env_extra or {}))
        pids = self.server_pids(target) if measure else []
        up_before = self.upstream_stats() if measure else None
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0, sys0, up0 = ticks(pids), system_busy_ticks(), ticks([self.up.pid])
        w0 = time.time()
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.time() - w0
        t1, sys1, up1 = ticks(pids), system_busy_ticks(), ticks([self.up.pid])
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        m = re.search(r"^BENCH_JSON (.*)$", p.stdout, re.M)
        if p.returncode != 0 or not m:
            raise BenchError(f"wrk failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
        r = json.loads(m.group(1))
        r["wrk_output"] = p.stdout
        errors = r["connect"] + r["read"] + r["write"] + r["timeout"]
        if errors or r["status"]:
            raise BenchError(
                f"{target} {script} c={conns}: {errors} socket errors, {r['status']} non-2xx/3xx "
                f"responses; aborting.\n{p.stdout}"
            )
        if r["requests"] == 0:
            raise BenchError(f"{target} {script} c={conns}: no requests completed\n{p.stdout}")
        r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
        if measure:
            wrk_ticks = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
            srv = (t1 - t0) / CLK
            upc = (up1 - up0) / CLK
            r["server_cpu_pct"] = 100 * srv / wall
            r["server_rss_kb"] = rss_kb(pids)
            r["wrk_cpu_pct"] = 100 * wrk_ticks / wall
            r["upstream_cpu_pct"] = 100 * upc / wall
            # CPU used by anything but this benchmark's processes (other builds...).
            other = (sys1 - sys0) / CLK - srv - wrk_ticks - upc
            r["other_cpu_pct"] = max(0.0, 100 * other / wall)
            after = self.upstream_stats()
            r["upstream_requests"] = (after["users"] + after["posts"]) - (
                up_before["users"] + up_before["posts"]
            )
            # Less the connection of the /__stats request itself.
            r["upstream_connections"] = max(0, after.get("connections", 0) - up_before.get("connections", 0) - 1)
            r["upstream_connections_net"] = True
        return r

    def warm(self, target, tag, n, passes=3):
        """Requests ids 0..n-1 `passes` times (the gateway's cache admits an
        id against a full cache only once it has been asked for more often
        than the entry it would evict; nginx needs one pass)."""
        if target == "gateway":
            self.purge_gateway()
        if n == 1:
            path = f"/v1/organization/users/user-{tag}{0:012d}"
            for _ in range(passes):
                s, _, _ = request(self.port(target), "GET", path, {"Authorization": f"Bearer {self.client_key}"})
                if s != 200:
                    raise BenchError(f"warm-up of {target} got {s}")
            return
        done = 0
        while done < n * passes:
            r = self.wrk(target, 64, 2, "seq", "/", {"BENCH_TAG": tag, "BENCH_IDS": str(n), "BENCH_START": str(done)},
                         measure=False)
            done += r["sent"]

    def purge_gateway(self):
        """Empties the gateway's cache (admin DELETE /cache) before a hit
        warm-up. Without it a full cache whose entries were hot in an earlier
        run can refuse the new hot set (TinyLFU admission), and hits turn into
        upstream fetches."""
        s, _, _ = request(self.ports["gw_admin"], "DELETE", "/cache")
        if s != 200:
            raise BenchError(f"gateway DELETE /cache answered {s}")
        for _ in range(50):
            if self.metrics().get("gateway_cache_entries", 0) < 100:
                return
            time.sleep(0.1)
        log("warning: gateway cache still holds entries after a purge")

    # -- the matrix

    def tag(self, kind, rep, target, conns):
        t = f"{kind}{rep}{target[:2]}{conns}"
        return (t + "z" * 12)[:12]

    def scenarios(self):
        hot = "/v1/organization/users/"
        return [
            ("hit_one", "static", ["gateway", "nginx", "ceiling"]),
            ("hit_10k", "spread", ["gateway", "nginx", "ceiling"]),
            ("miss", "seq", ["gateway", "nginx", "direct"]),
            ("pass_post", "post", ["gateway", "nginx", "direct"]),
        ]

    def run_matrix(self):
        d = self.a.duration
        for rep in range(self.a.repeats):
            for scen, script, targets in self.scenarios():
                for conns in self.a.conns:
                    order = targets if rep % 2 == 0 else list(reversed(targets))
                    for target in order:
                        env, path = {}, "/"
                        tag = self.tag(scen[0] + scen[-1], rep, target, conns)
                        if scen == "hit_one":
                            path = f"/v1/organization/users/user-{tag}{0:012d}"
                            if target != "ceiling":
                                self.warm(target, tag, 1)
                        elif scen == "hit_10k":
                            env = {"BENCH_TAG": tag, "BENCH_IDS": str(HOT_IDS)}
                            if target != "ceiling":
                                self.warm(target, tag, HOT_IDS, passes=WARM_PASSES[target])
                        elif scen == "miss":
                            env = {"BENCH_TAG": tag, "BENCH_IDS": "0", "BENCH_START": "0"}
                        elif scen == "pass_post":
                            path = "/v1/organization/invites"
                        time.sleep(self.a.settle)
                        r = self.wrk(target, conns, d, script, path, env)
                        r.update(rep=rep, scenario=scen, conns=conns, target=target)
                        self.runs.append(r)
                        log(
                            f"rep {rep} {scen:9} c={conns:<3} {target:8} {r['rps']:>9.0f} rps  "
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
        for mode in ("bodies", "moka", "gateway"):
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

    def profile(self):
        """perf profiles at 64 connections, 6 s each: the gateway on hits over
        10k ids, misses and pass-through, and beside it the server it is
        compared with (the ceiling on hits, nginx on pass-through). Self time
        per component and symbol, plus CPU-µs per request (from the server's
        CPU time and wrk's request count over the same 6 s), so the two
        profiles can be set side by side."""
        if not shutil.which("perf"):
            return {"error": "perf not installed"}
        res = {}
        plan = (("hit_10k", "gateway", "spread", "/"), ("hit_10k", "ceiling", "spread", "/"),
                ("miss", "gateway", "seq", "/"),
                ("pass_post", "gateway", "post", "/v1/organization/invites"),
                ("pass_post", "nginx", "post", "/v1/organization/invites"))
        for scen, target, script, path in plan:
            tag = f"prof{scen[:4]}{target[:2]}".ljust(12, "z")
            env = {"BENCH_TAG": tag, "BENCH_IDS": str(HOT_IDS) if scen == "hit_10k" else "0",
                   "BENCH_START": "0"}
            if scen == "hit_10k" and target == "gateway":
                self.warm("gateway", tag, HOT_IDS)
            data = self.work / f"perf-{scen}-{target}.data"
            pids = ",".join(str(p) for p in self.server_pids(target))
            rec = subprocess.Popen(["perf", "record", "-F", "499", "--call-graph", "dwarf,8192",
                                    "-p", pids, "-o", str(data), "--", "sleep", "6"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(0.5)
            r = self.wrk(target, 64, 6, script, path, env, measure=True)
            _, err = rec.communicate()
            if rec.returncode != 0 or not data.exists():
                return {"error": err.decode(errors="replace")[-2000:]}
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
            "command": "benches/load/run.sh",
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": self.meta_machine,
            "source": self.source,
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
            "complete": final,
        }
        tmp = Path(self.a.out + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(self.a.out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--conns", type=lambda s: [int(x) for x in s.split(",")], default=[64, 256])
    ap.add_argument("--settle", type=float, default=0.5)
    ap.add_argument("--memory-points", type=lambda s: [int(x) for x in s.split(",")],
                    default=[100_000, 1_000_000])
    ap.add_argument("--no-memory", dest="memory", action="store_false")
    ap.add_argument("--memory-timeout", type=int, default=900)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--no-pin", dest="pin", action="store_false")
    ap.add_argument("--only", default="", help="comma-separated scenarios (debugging)")
    a = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="oag-bench-"))
    b = Bench(a, work)
    b.meta_machine = b.machine()
    b.load_start = open("/proc/loadavg").read().split()[:3]
    log(f"work dir {work}; client CPUs {b.client_cpus}, server CPUs {b.server_cpus}")
    stop = {"sig": None}

    def on_signal(sig, _):
        stop["sig"] = sig
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        b.start_all()
        b.sanity()
        if a.only:
            keep = set(a.only.split(","))
            orig = b.scenarios
            b.scenarios = lambda: [s for s in orig() if s[0] in keep]
        b.run_matrix()
        if a.memory:
            b.memory()
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
        if getattr(b, "cache_dir", None):
            shutil.rmtree(b.cache_dir, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
