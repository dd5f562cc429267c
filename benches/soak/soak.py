#!/usr/bin/env python3
"""Soak run driver (started by benches/soak.sh).

Starts, on 127.0.0.1 only, the fake upstream (benches/soak/upstream.py, which
knows the truth and flaps) and the release gateway in front of it, then drives
DURATION seconds of mixed traffic from CLIENTS threads (http.client, keep-alive,
bounded rate):

  hit      GET of one of HOT hot users (mostly cache hits; stale when expired)
  miss     GET of one of 50 000 other users (mostly misses)
  stall    GET of a slow_ user: the upstream stalls 0.2-2.6 s (some past the timeout)
  pass     GET /v1/organization/users?limit=2&after=... (forwarded, not cached)
  write    POST a role change of a hot user (evicts), then at once GET it back
  refresh  GET of a hot user with Cache-Control: no-cache

Every 10 s it samples the gateway's VmRSS and open descriptors. Afterwards it
lets connections close, fetches the upstream's history, checks every body the
clients got against it, prints the curve and PASS/FAIL lines, and writes a
JSON report. Exit status 1 on FAIL, 2 when the run could not be done.
"""

import argparse
import hashlib
import http.client
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
from upstream import render  # noqa: E402  (the one rendering of a user body)

HOT = 32
COLD = 50_000
SLOW = 200
WEIGHTS = {"hit": 45, "miss": 18, "stall": 8, "pass": 12, "write": 10, "refresh": 4}
ERROR_STATUSES = {429, 500, 502, 503, 504}
EPS = 0.02  # s: ordering slack between the two processes' reads of one monotonic clock
GATEWAY = "openai-admin-gateway"


def log(*a):
    print("[soak]", *a, file=sys.stderr, flush=True)


class SoakError(Exception):
    pass


# ---------------------------------------------------------------- processes


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(port, path, proc, what, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise SoakError(f"{what} exited early (code {proc.returncode})")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            c.close()
            if r.status < 500:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SoakError(f"{what} not ready on port {port} within {timeout}s")


def call(port, method, path, headers=None, body=None, timeout=10):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def proc_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "Threads"):
                out[k] = int(v.split()[0])
    return out


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


# ---------------------------------------------------------------- clients


class Client(threading.Thread):
    def __init__(self, idx, a, port, key, deadline):
        super().__init__(name=f"client-{idx}", daemon=True)
        self.idx = idx
        self.rng = random.Random(a.seed * 1000 + idx)
        self.port = port
        self.auth = f"Bearer {key}"
        self.deadline = deadline
        self.pause = a.clients / a.rate  # mean seconds between one client's requests
        self.recs = []
        self.conn = None
        self.kinds = list(WEIGHTS)
        self.weights = [WEIGHTS[k] for k in self.kinds]

    def run(self):
        rng = self.rng
        # Requests start on a Poisson schedule (mean gap `pause`); one that
        # is late starts at once, with no catching up.
        next_at = time.monotonic() + rng.uniform(0, self.pause)
        while True:
            now = time.monotonic()
            if next_at > now:
                time.sleep(next_at - now)
            next_at = max(next_at, time.monotonic()) + rng.expovariate(1.0 / self.pause)
            if time.monotonic() >= self.deadline:
                break
            kind = rng.choices(self.kinds, self.weights)[0]
            if kind == "hit":
                self.get(kind, f"user_{rng.randrange(HOT):05d}")
            elif kind == "miss":
                self.get(kind, f"user_{rng.randrange(HOT, HOT + COLD):05d}")
            elif kind == "stall":
                self.get(kind, f"slow_{rng.randrange(SLOW):04d}")
            elif kind == "refresh":
                self.get(kind, f"user_{rng.randrange(HOT):05d}", {"Cache-Control": "no-cache"})
            elif kind == "pass":
                after = f"user_{rng.randrange(-1, HOT - 2):05d}" if rng.random() < 0.9 else "x"
                self.request(kind, "GET", f"/v1/organization/users?limit=2&after={after}", None, {}, None)
            else:
                uid = f"user_{rng.randrange(HOT):05d}"
                role = rng.choice(("owner", "reader"))
                rec = self.request(
                    "write", "POST", f"/v1/organization/users/{uid}", uid,
                    {"Content-Type": "application/json"}, json.dumps({"role": role}).encode(),
                )
                rec["role"] = role
                if rec["status"] == 200:
                    self.get("read_after_write", uid)
        self.close()

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def get(self, kind, uid, headers=None):
        return self.request(kind, "GET", f"/v1/organization/users/{uid}", uid, headers or {}, None)

    def request(self, kind, method, path, uid, headers, body):
        h = {"Authorization": self.auth, "Accept": "application/json", **headers}
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        rec = {"c": self.idx, "kind": kind, "method": method, "path": path, "id": uid,
               "ts": time.monotonic(), "tr": None, "status": None, "cs": None, "age": None,
               "body": None, "err": None}
        r = None
        # No retries: every request counts as sent, whatever happens to it.
        try:
            self.conn.request(method, path, body=body, headers=h)
            r = self.conn.getresponse()
            rec["status"] = r.status
            rec["cs"] = r.getheader("cache-status")
            rec["age"] = r.getheader("age")
            data = r.read()
            rec["tr"] = time.monotonic()
            rec["body"] = data if r.status == 200 else data[:400]
            if r.will_close:
                self.close()
        except http.client.IncompleteRead as e:
            rec["err"] = "broken_off"
            rec["body"] = e.partial[:400]
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
            # No status line at all: "no_response" (the connection closed or reset).
            rec["err"] = "broken_off" if r is not None else "no_response"
        except socket.timeout:
            rec["err"] = "client_timeout"
        except (OSError, http.client.HTTPException) as e:
            rec["err"] = type(e).__name__
        if rec["err"]:
            rec["tr"] = time.monotonic()
            self.close()
        self.recs.append(rec)
        return rec


# ---------------------------------------------------------------- checker


NAME = re.compile(r"^Soak User (\S+) v(\d+)$")


class Checker:
    """Judges every response against the upstream's history."""

    def __init__(self, hist, cfg):
        self.cfg = cfg
        self.ttl = cfg["ttl_secs"]
        self.swr = cfg["stale_while_revalidate_secs"]
        self.sie = cfg["stale_if_error_secs"]
        self.fill = cfg["timeout_ms"] / 1000.0  # a fill's whole exchange is bounded by this
        # id -> [(start, version, role)], version i at index i; version 0 from the start.
        self.versions = defaultdict(lambda: [(float("-inf"), 0, "reader")])
        for uid, entries in hist["history"].items():
            seq = self.versions[uid]
            for t, v, role in entries:
                if v != len(seq):
                    raise SoakError(f"history of {uid} skips a version: {v} after {len(seq) - 1}")
                seq.append((t, v, role))
        tl = hist["timeline"]
        self.failing = [
            (t, tl[i + 1][0] if i + 1 < len(tl) else float("inf"), mode)
            for i, (t, mode) in enumerate(tl)
            if mode != "healthy"
        ]
        self.wrong = []
        self.header_mismatch = []
        self.counts = Counter()
        self.errors_while_healthy = []

    # -- truth

    def interval(self, uid, v):
        seq = self.versions[uid]
        if v >= len(seq):
            return None
        start = seq[v][0]
        end = seq[v + 1][0] if v + 1 < len(seq) else float("inf")
        return start, end, seq[v][2]

    def user_in_window(self, data, uid, lo, hi):
        """(version, None) when `data` is `uid`'s true body at some instant of
        [lo, hi]; (version or None, reason) otherwise."""
        try:
            u = json.loads(data)
            m = NAME.match(u["name"])
            got_id, v, role = u["id"], int(m.group(2)), u["role"]
        except (ValueError, KeyError, TypeError, AttributeError):
            return None, "not a user body"
        if got_id != uid:
            return v, f"another user's body ({got_id})"
        if data != render(uid, v, role):
            return v, "bytes differ from the upstream's rendering"
        iv = self.interval(uid, v)
        if iv is None:
            return v, f"version {v} never existed"
        start, end, true_role = iv
        if role != true_role:
            return v, f"version {v} had role {true_role}, body says {role}"
        if not (start <= hi and end > lo):
            return v, (f"version {v} held [{fmt(start)}, {fmt(end)}) outside the declared "
                       f"window [{fmt(lo)}, {fmt(hi)}]")
        return v, None

    # -- Cache-Status

    def window(self, rec):
        """(lo, hi, outcome, header problem) for a 200 on the cached route."""
        ts, tr = rec["ts"], rec["tr"]
        cs = rec["cs"] or ""
        parts = [p.strip() for p in cs.split(";")]
        if not parts or parts[0] != GATEWAY:
            return None, None, "no-cache-status", f"Cache-Status {cs!r}"
        params = {}
        flags = set()
        for p in parts[1:]:
            k, eq, v = p.partition("=")
            if eq:
                params[k] = v
            else:
                flags.add(k)
        fwd = params.get("fwd")
        if "hit" in flags or fwd == "stale":
            try:
                age = int(rec["age"])
                ttl = int(params["ttl"])
            except (TypeError, ValueError, KeyError):
                return None, None, "hit", f"hit without Age/ttl: {cs!r}, Age {rec['age']!r}"
            problem = None
            if ttl >= 0:
                outcome = "hit"
                if "hit" not in flags or age + ttl != self.ttl:
                    problem = f"Age {age} + ttl {ttl} != TTL {self.ttl} ({cs!r})"
            else:
                past = -ttl
                outcome = "stale_revalidate" if "hit" in flags else "stale_if_error"
                limit = self.swr if "hit" in flags else self.sie
                if past > limit:
                    problem = f"served {past}s past its TTL, window {limit}s ({cs!r})"
                elif not (self.ttl + past - 1 <= age <= self.ttl + past + self.fill + 1):
                    problem = f"Age {age} does not match ttl {ttl} with TTL {self.ttl} ({cs!r})"
            if age > self.ttl + max(self.swr, self.sie) + self.fill + 1:
                problem = f"Age {age} beyond TTL + stale window ({cs!r})"
            # Stored between ts-age-1 and tr-age; its fill read the upstream at
            # most one fill deadline before it was stored.
            return ts - age - 1 - self.fill - EPS, tr - age + EPS, outcome, problem
        if fwd in ("miss", "request", "bypass"):
            return ts - EPS, tr + EPS, f"fwd={fwd}" + ("; stored" if "stored" in flags else ""), None
        return None, None, "unknown", f"unknown Cache-Status {cs!r}"

    # -- judging

    def bad(self, rec, reason, got=None):
        self.wrong.append({
            "kind": rec["kind"], "method": rec["method"], "path": rec["path"], "client": rec["c"],
            "t": round(rec["ts"] - self.t0, 3), "latency_s": round((rec["tr"] or rec["ts"]) - rec["ts"], 3),
            "status": rec["status"], "cache_status": rec["cs"], "age": rec["age"], "reason": reason,
            "version": got, "body": (rec["body"] or b"")[:300].decode("utf-8", "replace"),
        })

    def in_failing(self, lo, hi):
        return any(s <= hi and e >= lo for s, e, _ in self.failing)

    def judge_all(self, clients, t0):
        self.t0 = t0
        for c in clients:
            own_writes = {}  # id -> (returned at, version) of this client's last successful write
            for rec in c.recs:
                self.judge(rec, own_writes)

    def judge(self, rec, own_writes):
        c = self.counts
        kind, status = rec["kind"], rec["status"]
        c["requests"] += 1
        if rec["err"]:
            c[f"err:{rec['err']}"] += 1
            if rec["cs"] and ("hit" in rec["cs"] or "fwd=stale" in rec["cs"]):
                self.bad(rec, f"a stored answer broke off ({rec['err']})")
            self.note_healthy_error(rec)
            return
        c[f"status:{status}"] += 1
        if status != 200:
            if status not in ERROR_STATUSES:
                self.bad(rec, f"unexpected status {status}")
                return
            try:
                e = json.loads(rec["body"])["error"]
                assert isinstance(e, dict) and "message" in e
            except (ValueError, KeyError, TypeError, AssertionError):
                self.bad(rec, f"{status} without an OpenAI error body")
                return
            self.note_healthy_error(rec)
            return
        if kind == "pass":
            self.judge_list(rec)
            return
        uid = rec["id"]
        if kind == "write":
            v, why = self.user_in_window(rec["body"], uid, rec["ts"] - EPS, rec["tr"] + EPS)
            if why is None:
                start, _, role = self.interval(uid, v)
                if not (rec["ts"] - EPS <= start <= rec["tr"] + EPS) or role != rec.get("role"):
                    why = f"write answered version {v} that this write did not make"
            if why:
                self.bad(rec, why, v)
            else:
                own_writes[uid] = (rec["tr"], v)
                c["writes_ok"] += 1
            return
        lo, hi, outcome, problem = self.window(rec)
        c[f"outcome:{outcome}"] += 1
        if problem:
            self.header_mismatch.append({"path": rec["path"], "t": round(rec["ts"] - self.t0, 3),
                                         "problem": problem})
        if lo is None:
            self.bad(rec, problem)
            return
        v, why = self.user_in_window(rec["body"], uid, lo, hi)
        if why is None and uid in own_writes and rec["ts"] > own_writes[uid][0]:
            c["read_your_write_checked"] += 1
            if v < own_writes[uid][1]:
                why = f"version {v} after this client's own write of version {own_writes[uid][1]}"
        if why:
            self.bad(rec, why, v)

    def judge_list(self, rec):
        try:
            doc = json.loads(rec["body"])
            items = doc["data"]
            assert doc["object"] == "list" and isinstance(items, list)
        except (ValueError, KeyError, TypeError, AssertionError):
            self.bad(rec, "not a list body")
            return
        for item in items:
            data = json.dumps(item, separators=(",", ":")).encode()
            _, why = self.user_in_window(data, item.get("id"), rec["ts"] - EPS, rec["tr"] + EPS)
            if why:
                self.bad(rec, f"list item {item.get('id')}: {why}")
                return
        self.counts["lists_ok"] += 1

    def note_healthy_error(self, rec):
        """An error while the upstream was healthy (stalls excepted: they may
        pass the timeout by design) is worth a look, though not wrong."""
        if rec["kind"] == "stall":
            return
        if not self.in_failing(rec["ts"] - self.fill - 1, rec["tr"] or rec["ts"]):
            self.errors_while_healthy.append({
                "t": round(rec["ts"] - self.t0, 3), "kind": rec["kind"], "path": rec["path"],
                "status": rec["status"], "err": rec["err"],
                "body": (rec["body"] or b"")[:200].decode("utf-8", "replace"),
            })


def fmt(t):
    return "-inf" if t == float("-inf") else ("inf" if t == float("inf") else f"{t:.3f}")


# ---------------------------------------------------------------- the run


def gateway_config(path, port, admin_port, upstream_port, key_sha, cfg):
    path.write_text(f"""# Written by benches/soak/soak.py.
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin_port}"
shutdown_grace_secs = 5

[upstream]
base_url = "http://127.0.0.1:{upstream_port}/v1"
admin_key_env = "OPENAI_ADMIN_KEY"
timeout_ms = {cfg['timeout_ms']}
pool_idle_timeout_secs = {cfg['pool_idle_timeout_secs']}

[cache]
ttl_secs = {cfg['ttl_secs']}
stale_if_error_secs = {cfg['stale_if_error_secs']}
stale_while_revalidate_secs = {cfg['stale_while_revalidate_secs']}

[[clients]]
name = "soak"
key_sha256 = "{key_sha}"
""")


def metrics_of_interest(text):
    keep = ("gateway_cache_", "gateway_upstream_requests_total", "gateway_requests_total",
            "gateway_upstream_timeouts", "gateway_requests_in_flight", "gateway_upstream_in_flight")
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(keep):
            continue
        name, _, value = line.rpartition(" ")
        if name.endswith("_created"):
            continue
        try:
            out[name] = float(value)
        except ValueError:
            pass
    return out


def git_commit():
    try:
        return subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty", "--abbrev=12"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class Run:
    def __init__(self, a, work):
        self.a = a
        self.work = work
        self.procs = []
        self.cfg = {
            "ttl_secs": a.ttl,
            "stale_while_revalidate_secs": a.swr,
            "stale_if_error_secs": a.sie,
            "timeout_ms": a.timeout_ms,
            "pool_idle_timeout_secs": 5,
            "max_entries": 100000,
        }

    def start(self, name, cmd, env=None):
        f = open(self.work / f"{name}.log", "wb")
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        self.procs.append((name, p))
        return p

    def stop_all(self):
        for _, p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()

    def sample(self, t_rel, requests):
        st = proc_status(self.gw.pid)
        s = {"t_s": round(t_rel, 1), "rss_mib": round(st["VmRSS"] / 1024, 2), "fds": fd_count(self.gw.pid),
             "threads": st["Threads"], "requests": requests}
        return s

    def go(self):
        a = self.a
        self.up_port, self.gw_port, self.admin_port = free_port(), free_port(), free_port()
        admin_key = "sk-admin-soak-" + secrets.token_hex(16)
        self.key = "oag_soak_" + secrets.token_hex(24)
        cfg_path = self.work / "gateway.toml"
        gateway_config(cfg_path, self.gw_port, self.admin_port, self.up_port,
                       hashlib.sha256(self.key.encode()).hexdigest(), self.cfg)

        up = self.start("upstream", [sys.executable, str(HERE / "upstream.py"), "--port", str(self.up_port),
                                     "--admin-key", admin_key, "--seed", str(a.seed), "--flap"])
        wait_http(self.up_port, "/_soak/none", up, "upstream")
        env = dict(os.environ, OPENAI_ADMIN_KEY=admin_key, RUST_LOG=a.rust_log)
        self.gw = self.start("gateway", [a.gateway, "--config", str(cfg_path)], env=env)
        wait_http(self.admin_port, "/readyz", self.gw, "gateway")
        log(f"gateway pid {self.gw.pid} on 127.0.0.1:{self.gw_port}, upstream on 127.0.0.1:{self.up_port}")

        # The wiring works before the clock starts (the upstream may be flapping:
        # retry a few times).
        for _ in range(50):
            st, h, body = call(self.gw_port, "GET", "/v1/organization/users/ghost_0",
                               {"Authorization": f"Bearer {self.key}"})
            if st == 404:
                break
            time.sleep(0.2)
        else:
            raise SoakError(f"sanity request through the gateway got {st}: {body[:200]!r}")

        time.sleep(1)
        baseline = self.sample(0, 0)
        log(f"idle gateway: RSS {baseline['rss_mib']} MiB, {baseline['fds']} fds; "
            f"load for {a.duration}s from {a.clients} clients at ~{a.rate} req/s")
        t0 = time.monotonic()
        deadline = t0 + a.duration
        clients = [Client(i, a, self.gw_port, self.key, deadline) for i in range(a.clients)]
        for c in clients:
            c.start()
        curve = []
        count = lambda: sum(len(c.recs) for c in clients)  # noqa: E731
        next_at = 0.0
        while True:
            now = time.monotonic() - t0
            if now >= next_at:
                if self.gw.poll() is not None:
                    raise SoakError(f"the gateway exited during the run (code {self.gw.returncode})")
                s = self.sample(now, count())
                curve.append(s)
                log(f"t={s['t_s']:>6.1f}s RSS {s['rss_mib']:7.2f} MiB  fds {s['fds']:4d}  "
                    f"requests {s['requests']}")
                next_at += a.sample_every
                if next_at > a.duration + 0.5:
                    break
            time.sleep(min(0.5, max(0.0, next_at - now)))
        for c in clients:
            c.join(timeout=60)
        t_load_end = time.monotonic() - t0
        stuck = [c.name for c in clients if c.is_alive()]
        if stuck:
            raise SoakError(f"clients still running 60 s after the end: {stuck}")

        # Load over, client connections closed: the gateway should let go of
        # every connection (its upstream pool idles out after 5 s).
        settle = []
        end = time.monotonic() + 30
        while time.monotonic() < end:
            settle.append(fd_count(self.gw.pid))
            if len(settle) >= 10 and len(set(settle[-4:])) == 1:
                break
            time.sleep(1)
        after = self.sample(time.monotonic() - t0, count())
        log(f"after load (settled {len(settle)} s): RSS {after['rss_mib']} MiB, {after['fds']} fds")

        st, _, hist = call(self.up_port, "GET", "/_soak/history", timeout=30)
        hist = json.loads(hist)
        _, _, metrics = call(self.admin_port, "GET", "/metrics")
        metrics = metrics_of_interest(metrics.decode())

        # Clean shutdown, then look for panics.
        self.gw.send_signal(signal.SIGTERM)
        try:
            gw_exit = self.gw.wait(timeout=20)
        except subprocess.TimeoutExpired:
            gw_exit = None
        log_text = (self.work / "gateway.log").read_text(errors="replace")
        panics = [ln for ln in log_text.splitlines() if "panicked" in ln]

        checker = Checker(hist, self.cfg)
        checker.judge_all(clients, t0)
        return self.report(a, clients, curve, baseline, after, t_load_end, hist, metrics, checker,
                           gw_exit, panics, log_text)

    def report(self, a, clients, curve, baseline, after, t_load_end, hist, metrics, checker,
               gw_exit, panics, log_text):
        recs = [r for c in clients for r in c.recs]
        by_kind = Counter(r["kind"] for r in recs)
        by_ks = defaultdict(Counter)
        for r in recs:
            by_ks[r["kind"]][str(r["status"]) if r["status"] is not None else r["err"]] += 1
        by_status = Counter(str(r["status"]) if r["status"] is not None else r["err"] for r in recs)
        k = checker.counts
        outcomes = {key[len("outcome:"):]: v for key, v in sorted(k.items()) if key.startswith("outcome:")}
        errs = {key[len("err:"):]: v for key, v in sorted(k.items()) if key.startswith("err:")}
        flaps = Counter(mode for _, _, mode in checker.failing)

        # RSS: every sample from minute 2 (or a third of a short run) on stays
        # within ±10 % of the one taken then.
        warm = min(120.0, a.duration / 3)
        ref = next(s for s in curve if s["t_s"] >= warm - 0.5)
        later = [s for s in curve if s["t_s"] >= ref["t_s"]]
        rss_lo, rss_hi = min(s["rss_mib"] for s in later), max(s["rss_mib"] for s in later)
        rss_ok = rss_lo >= ref["rss_mib"] * 0.9 and rss_hi <= ref["rss_mib"] * 1.1
        fd_slack = 4
        fds_ok = after["fds"] <= ref["fds"] + fd_slack and after["fds"] <= baseline["fds"] + fd_slack
        n_wrong = len(checker.wrong)
        criteria = [
            {"name": "rss_stable", "pass": rss_ok,
             "detail": f"RSS at {ref['t_s']:.0f} s {ref['rss_mib']:.2f} MiB; afterwards "
                       f"{rss_lo:.2f}..{rss_hi:.2f} MiB "
                       f"({(rss_lo / ref['rss_mib'] - 1) * 100:+.1f} % .. {(rss_hi / ref['rss_mib'] - 1) * 100:+.1f} %, "
                       f"limit ±10 %)"},
            {"name": "no_fd_leak", "pass": fds_ok,
             "detail": f"fds idle before load {baseline['fds']}, at {ref['t_s']:.0f} s {ref['fds']}, "
                       f"after load and {fd_slack}-fd slack: {after['fds']}"},
            {"name": "no_panics", "pass": not panics, "detail": f"{len(panics)} 'panicked' lines in the gateway's stderr"},
            {"name": "no_wrong_bodies", "pass": n_wrong == 0,
             "detail": f"{n_wrong} wrong of {len(recs)} responses"},
            {"name": "cache_headers_consistent", "pass": not checker.header_mismatch,
             "detail": f"{len(checker.header_mismatch)} Cache-Status/Age inconsistent with TTL and stale windows"},
            {"name": "clean_shutdown", "pass": gw_exit == 0, "detail": f"gateway exit status after SIGTERM: {gw_exit}"},
        ]
        ok = all(c["pass"] for c in criteria)
        warn_lines = [ln for ln in log_text.splitlines() if " WARN " in ln or " ERROR " in ln]
        out = {
            "what": "benches/soak.sh: mixed traffic against the release gateway with a flapping upstream",
            "run": {
                "commit": git_commit(),
                "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                "duration_s": a.duration, "load_s": round(t_load_end, 1), "clients": a.clients,
                "target_rate_rps": a.rate, "achieved_rps": round(len(recs) / max(t_load_end, 1e-9), 1), "seed": a.seed, "cpus": os.cpu_count(),
                "loadavg_end": open("/proc/loadavg").read().split()[:3],
                "rust_log": a.rust_log,
            },
            "gateway_config": self.cfg,
            "traffic": {"weights": WEIGHTS, "hot_users": HOT, "cold_users": COLD, "slow_users": SLOW},
            "curve": [baseline | {"note": "idle, before load"}] + curve + [after | {"note": "after load, settled"}],
            "requests": {
                "total": len(recs),
                "by_kind": dict(sorted(by_kind.items())),
                "by_status": dict(sorted(by_status.items())),
                "cache_outcomes_of_200s": outcomes,
                "client_errors": errs,
                "by_kind_and_status": {kind: dict(sorted(v.items())) for kind, v in sorted(by_ks.items())},
                "read_your_write_checks": k["read_your_write_checked"],
                "errors_while_upstream_healthy": len(checker.errors_while_healthy),
            },
            "stale_answers": {
                "stale_if_error": outcomes.get("stale_if_error", 0),
                "stale_while_revalidate": outcomes.get("stale_revalidate", 0),
            },
            "upstream": {"counts": hist["counts"], "failing_periods": dict(flaps),
                         "failing_seconds": round(sum(min(e, hist["now"]) - s for s, e, _ in checker.failing), 1),
                         "users_written": len(hist["history"]),
                         "writes_applied": sum(len(v) for v in hist["history"].values())},
            "gateway_metrics": metrics,
            "gateway_log": {"panics": panics[:20], "warn_or_error_lines": len(warn_lines),
                            "first_warn_or_error": [ln[:300] for ln in warn_lines[:5]]},
            "wrong_bodies": checker.wrong[:50],
            "header_mismatches": checker.header_mismatch[:50],
            "errors_while_upstream_healthy": checker.errors_while_healthy[:30],
            "criteria": criteria,
            "pass": ok,
        }
        Path(a.out).write_text(json.dumps(out, indent=1) + "\n")

        print()
        print(f"{'time':>7}  {'RSS MiB':>8}  {'fds':>5}  {'requests':>9}")
        for s in out["curve"]:
            note = f"  ({s['note']})" if "note" in s else ""
            print(f"{s['t_s']:>6.0f}s  {s['rss_mib']:>8.2f}  {s['fds']:>5}  {s['requests']:>9}{note}")
        print()
        print(f"requests: {len(recs)} in {t_load_end:.0f} s ({out['run']['achieved_rps']} req/s; "
              f"target {a.rate:g}, {a.clients} clients)")
        print("requests by kind:   ", ", ".join(f"{k} {v}" for k, v in out["requests"]["by_kind"].items()))
        print("requests by status: ", ", ".join(f"{k} {v}" for k, v in out["requests"]["by_status"].items()))
        print("200s by cache outcome:", ", ".join(f"{k} {v}" for k, v in outcomes.items()))
        print(f"stale answers: {out['stale_answers']['stale_if_error']} stale-if-error, "
              f"{out['stale_answers']['stale_while_revalidate']} stale-while-revalidate; "
              f"read-your-write checks {k['read_your_write_checked']}; "
              f"upstream failing {out['upstream']['failing_seconds']} s in {sum(flaps.values())} periods "
              f"({', '.join(f'{m} {n}' for m, n in sorted(flaps.items()))})")
        for kind, v in out["requests"]["by_kind_and_status"].items():
            print(f"  {kind:<17}", ", ".join(f"{k} {n}" for k, n in v.items()))
        if checker.errors_while_healthy:
            print(f"note: {len(checker.errors_while_healthy)} errors while the upstream was healthy, e.g.:")
            for e in checker.errors_while_healthy[:5]:
                print(f"  t={e['t']}s {e['kind']} {e['path']} -> {e['status'] or e['err']} {e['body'][:120]}")
        for w in checker.wrong[:10]:
            print(f"WRONG: t={w['t']}s {w['method']} {w['path']} -> {w['status']} "
                  f"[{w['cache_status']}; Age {w['age']}]: {w['reason']}")
        for m in checker.header_mismatch[:5]:
            print(f"HEADER: t={m['t']}s {m['path']}: {m['problem']}")
        print()
        for c in criteria:
            print(f"{'PASS' if c['pass'] else 'FAIL'} {c['name']}: {c['detail']}")
        print(f"results: {os.path.relpath(a.out, ROOT)}")
        return ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateway", required=True, help="the release binary")
    ap.add_argument("--out", required=True)
    ap.add_argument("--duration", type=int, default=600)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--rate", type=float, default=150.0, help="target requests per second, all clients")
    ap.add_argument("--sample-every", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ttl", type=int, default=2)
    ap.add_argument("--swr", type=int, default=1)
    ap.add_argument("--sie", type=int, default=20)
    ap.add_argument("--timeout-ms", type=int, default=2000)
    ap.add_argument("--rust-log", default="warn")
    ap.add_argument("--keep-work", action="store_true")
    a = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="oag-soak-"))
    run = Run(a, work)

    def on_signal(sig, _):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    code = 2
    try:
        code = 0 if run.go() else 1
    except SoakError as e:
        log("ABORTED: " + str(e))
        a.keep_work = True
    except KeyboardInterrupt:
        log("interrupted")
        a.keep_work = True
    finally:
        run.stop_all()
        if a.keep_work:
            log(f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
