#!/usr/bin/env python3
"""The organization's budget under load: upstream rate and fair turns vs FIFO.

Runs the gateway binary on 127.0.0.1 in front of a fake upstream (this file,
Python stdlib) with `upstream.rate_limit = { requests_per_minute = RPM, burst =
BURST }`, then, for each mode, GREEDY greedy clients (INFLIGHT requests each in
flight, every answer followed at once by the next request) and one polite
client (one request at a time, PAUSE_MS between) all send
`GET /v1/organization/users?limit=1`, which the gateway does not cache, so
every request needs a turn of the budget. Prints, per mode:

- the upstream's own count of requests / run time, against RPM/60;
- the most the upstream saw in any 1 s and 10 s window, against what the GCRA
  allows there (burst + rate * window);
- the polite client's p50/p99/max latency and its refusals;
- the greedy clients' answers: 200s and refusals (429
  organization_budget_exceeded), also as the gateway's metric counts them.

Modes:
- fair: each of the nine clients has its own key, so its own queue; turns go
  round the waiting clients.
- fifo: the same run, but all nine send with ONE client key: one client, one
  queue, served in arrival order, which is exactly FIFO.

Nothing here asserts a time; the figures are printed for a person to judge.
Usage: budget.py --gateway BIN [--duration 60] [--modes fair,fifo] ...
Exit status: 0 the runs were done, 2 they could not be.
"""

import argparse
import hashlib
import http.client
import json
import os
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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PATH = "/v1/organization/users?limit=1"
LIST_BODY = json.dumps(
    {
        "object": "list",
        "data": [
            {
                "object": "organization.user",
                "id": "user_bench",
                "name": "Bench User",
                "email": "bench@example.com",
                "role": "reader",
                "added_at": 1700000000,
            }
        ],
        "first_id": "user_bench",
        "last_id": "user_bench",
        "has_more": True,
    }
).encode()


def log(*a):
    print("[budget]", *a, file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# ---------------------------------------------------------------- fake upstream


class Upstream:
    """Answers every GET 200 with a one-user list page; records when each came."""

    def __init__(self, admin_key):
        self.lock = threading.Lock()
        self.times = []
        self.unauthorized = 0
        up = self
        want = f"Bearer {admin_key}"

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802 (the stdlib's name)
                if self.headers.get("authorization") != want:
                    with up.lock:
                        up.unauthorized += 1
                    body, status = b'{"error":{"message":"bad key"}}', 401
                else:
                    with up.lock:
                        up.times.append(time.monotonic())
                    body, status = LIST_BODY, 200
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.send_header("x-request-id", "req_" + secrets.token_hex(8))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def take(self):
        with self.lock:
            t, self.times = self.times, []
            return t

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------- gateway


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent():
    """The gateway gets SIGTERM if this script dies (Linux; elsewhere a no-op)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def wait_http(port, path, proc, timeout=30):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise BenchError(f"gateway exited early (code {proc.returncode})")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            c.close()
            if r.status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise BenchError(f"gateway not ready on port {port} within {timeout}s")


def gateway_config(a, port, admin_port, upstream_port, clients):
    out = [
        "# Written by benches/budget/budget.py.",
        "[server]",
        f'listen = "127.0.0.1:{port}"',
        f'admin_listen = "127.0.0.1:{admin_port}"',
        "shutdown_grace_secs = 2",
        "",
        "[upstream]",
        f'base_url = "http://127.0.0.1:{upstream_port}/v1"',
        'admin_key_env = "OPENAI_ADMIN_KEY"',
        f"rate_limit = {{ requests_per_minute = {a.rpm}, burst = {a.burst} }}",
        f"budget_wait_ms = {a.budget_wait_ms}",
    ]
    for name, key in clients:
        digest = hashlib.sha256(key.encode()).hexdigest()
        out += ["", "[[clients]]", f'name = "{name}"', f'key_sha256 = "{digest}"']
        if name == "greedy-0" and a.greedy0_weight != 1:
            out.append(f"budget_weight = {a.greedy0_weight}")
    return "\n".join(out) + "\n"


def metrics(admin_port):
    c = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=5)
    try:
        c.request("GET", "/metrics")
        return c.getresponse().read().decode()
    finally:
        c.close()


def refusals_by_client(text):
    out = {}
    for m in re.finditer(r'^gateway_budget_refusals_total\{([^}]*)\} (\S+)$', text, re.M):
        name = re.search(r'client="([^"]*)"', m.group(1))
        if name:
            out[name.group(1)] = out.get(name.group(1), 0) + int(float(m.group(2)))
    return out


# ---------------------------------------------------------------- clients


class Tally:
    """One client's answers: latencies of 200s, refusals, other answers."""

    def __init__(self):
        self.lock = threading.Lock()
        self.ok = []
        self.refused = 0
        self.refused_lat = []
        self.other = {}

    def add(self, status, code, lat):
        with self.lock:
            if status == 200:
                self.ok.append(lat)
            elif status == 429 and code == "organization_budget_exceeded":
                self.refused += 1
                self.refused_lat.append(lat)
            else:
                k = f"{status} {code}"
                self.other[k] = self.other.get(k, 0) + 1


def sender(port, key, tally, stop, budget, pause_s):
    """Sends until `stop` is set or `budget` (shared request count) runs out."""
    conn = None
    hdrs = {"authorization": f"Bearer {key}"}
    while not stop.is_set():
        if not budget.take():
            return
        t = time.monotonic()
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", PATH, headers=hdrs)
            r = conn.getresponse()
            body = r.read()
            status = r.status
        except OSError as e:
            conn = None
            status, body = 0, type(e).__name__.encode()
        lat = time.monotonic() - t
        code = ""
        if status != 200:
            try:
                code = json.loads(body)["error"]["code"] or ""
            except (ValueError, KeyError, TypeError):
                code = body[:40].decode(errors="replace")
        tally.add(status, code, lat)
        if pause_s:
            stop.wait(pause_s)


class Count:
    """Bounds the number of requests a run may send, all clients together."""

    def __init__(self, n):
        self.n = n
        self.lock = threading.Lock()

    def take(self):
        with self.lock:
            if self.n <= 0:
                return False
            self.n -= 1
            return True


def pct(xs, p):
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def max_window(times, w):
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] < t - w:
            j += 1
        best = max(best, i - j + 1)
    return best


# ---------------------------------------------------------------- one mode


def run_mode(a, mode, up):
    greedy_keys = [f"oag_bench_greedy{i}_" + secrets.token_hex(12) for i in range(a.greedy)]
    polite_key = "oag_bench_polite_" + secrets.token_hex(12)
    if mode == "fair":
        clients = [(f"greedy-{i}", k) for i, k in enumerate(greedy_keys)] + [("polite", polite_key)]
    else:
        shared = "oag_bench_shared_" + secrets.token_hex(12)
        greedy_keys, polite_key = [shared] * a.greedy, shared
        clients = [("everyone", shared)]
    port, admin_port = free_port(), free_port()
    work = Path(tempfile.mkdtemp(prefix="oag-budget-"))
    cfg = work / "gateway.toml"
    cfg.write_text(gateway_config(a, port, admin_port, up.port, clients))
    env = dict(os.environ, OPENAI_ADMIN_KEY=a.admin_key, RUST_LOG="warn")
    errlog = open(work / "gateway.log", "wb")
    gw = subprocess.Popen([a.gateway, "--config", str(cfg)], stdout=errlog, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, env=env, preexec_fn=die_with_parent)
    try:
        wait_http(admin_port, "/readyz", gw)
        up.take()
        stop, count = threading.Event(), Count(a.max_requests)
        greedy, threads = [Tally() for _ in range(a.greedy)], []
        polite = Tally()
        t0 = time.monotonic()
        for i in range(a.greedy):
            for _ in range(a.inflight):
                threads.append(threading.Thread(target=sender, daemon=True, args=(
                    port, greedy_keys[i], greedy[i], stop, count, 0)))
        pol = threading.Thread(target=sender, daemon=True, args=(
            port, polite_key, polite, stop, count, a.pause_ms / 1000))
        for t in threads:
            t.start()
        # The polite client starts once the greedy ones have emptied the burst.
        stop.wait(a.warmup)
        pol.start()
        stop.wait(max(0.0, a.duration - (time.monotonic() - t0)))
        t_stop = time.monotonic()
        stop.set()
        for t in threads + [pol]:
            t.join(timeout=a.budget_wait_ms / 1000 + 35)
        t_end = time.monotonic()
        times = sorted(up.take())
        text = metrics(admin_port)
        if gw.poll() is not None:
            raise BenchError(f"gateway exited during the run (code {gw.returncode})")
    finally:
        if gw.poll() is None:
            gw.send_signal(signal.SIGTERM)
            try:
                gw.wait(timeout=10)
            except subprocess.TimeoutExpired:
                gw.kill()
                gw.wait()
        errlog.close()
        tail = (work / "gateway.log").read_bytes()[-2000:].decode(errors="replace")
        if gw.returncode not in (0, None) or "panicked" in tail:
            log(f"gateway exit code {gw.returncode}; its log ends:\n{tail}")
        shutil.rmtree(work, ignore_errors=True)
    in_run = [t for t in times if t <= t_stop]
    run_s = t_stop - t0
    steady = [t for t in in_run if t >= t0 + a.warmup]
    return {
        "mode": mode,
        "clients": [n for n, _ in clients],
        "run_s": run_s,
        "drain_s": t_end - t_stop,
        "upstream_in_run": len(in_run),
        "upstream_total": len(times),
        "upstream_per_s": len(in_run) / run_s,
        "steady_per_s": len(steady) / max(1e-9, t_stop - t0 - a.warmup),
        "max_1s": max_window(times, 1.0),
        "max_10s": max_window(times, 10.0),
        "budget_exhausted": count.n <= 0,
        "polite": summary(polite),
        "greedy": [summary(g) for g in greedy],
        "metric_refusals": refusals_by_client(text),
        "unauthorized": up.unauthorized,
    }


def summary(t):
    """Latency percentiles over every answer (200 or refusal) and over the 200s alone."""
    ok = [x * 1000 for x in t.ok]
    every = ok + [x * 1000 for x in t.refused_lat]
    return {
        "ok": len(t.ok),
        "refused": t.refused,
        "other": t.other,
        "p50_ms": pct(every, 50),
        "p99_ms": pct(every, 99),
        "max_ms": max(every) if every else None,
        "ok_p50_ms": pct(ok, 50),
        "ok_p99_ms": pct(ok, 99),
        "refused_p50_ms": pct([x * 1000 for x in t.refused_lat], 50),
    }


# ---------------------------------------------------------------- report


def ms(x):
    return "–" if x is None else f"{x:,.0f} ms"


def report(a, results):
    rate = a.rpm / 60
    w = print
    w(f"gateway binary: {a.gateway_label}; 127.0.0.1; fake upstream: Python http.server (this script)")
    w(f"budget: rate_limit = {{ requests_per_minute = {a.rpm}, burst = {a.burst} }} ({rate:g}/s), "
      f"budget_wait_ms = {a.budget_wait_ms}")
    w(f"load: {a.greedy} greedy clients x {a.inflight} in flight, 1 polite client (one at a time, "
      f"{a.pause_ms} ms pause, from {a.warmup:g} s on); GET {PATH}; {a.duration:g} s per mode")
    turns = a.greedy + a.greedy0_weight
    if a.greedy0_weight != 1:
        w(f"fair mode: greedy-0 has budget_weight = {a.greedy0_weight}, the others 1")
    w(f"one round of turns = {turns} turns = {turns / rate:.1f} s at {rate:g}/s")
    w("")
    for r in results:
        g = r["greedy"]
        p = r["polite"]
        w(f"== {r['mode']}: clients {', '.join(r['clients'])}")
        w(f"upstream: {r['upstream_in_run']} requests in {r['run_s']:.1f} s = {r['upstream_per_s']:.2f}/s "
          f"(budget {rate:g}/s; burst {a.burst} + {rate:g}/s x {r['run_s']:.1f} s allows "
          f"{a.burst + rate * r['run_s']:.0f}); after the {a.warmup:g} s warm-up {r['steady_per_s']:.2f}/s")
        w(f"upstream, most in any window: 1 s {r['max_1s']} (GCRA allows {a.burst + rate:.0f}), "
          f"10 s {r['max_10s']} (allows {a.burst + 10 * rate:.0f}); "
          f"{r['upstream_total'] - r['upstream_in_run']} more while the last requests drained "
          f"({r['drain_s']:.1f} s)")
        w(f"polite: {p['ok']} ok, {p['refused']} refused" + (f", other {p['other']}" if p["other"] else "")
          + f"; every answer p50 {ms(p['p50_ms'])}, p99 {ms(p['p99_ms'])}, max {ms(p['max_ms'])}; "
          f"the 200s alone p50 {ms(p['ok_p50_ms'])}, p99 {ms(p['ok_p99_ms'])}")
        ok = sum(x["ok"] for x in g)
        ref = sum(x["refused"] for x in g)
        other = {}
        for x in g:
            for k, v in x["other"].items():
                other[k] = other.get(k, 0) + v
        w(f"greedy: {ok} ok, {ref} refused (429 organization_budget_exceeded; a refusal's p50 "
          f"{ms(pct([x['refused_p50_ms'] for x in g if x['refused_p50_ms'] is not None], 50))})"
          + (f", other {other}" if other else "")
          + "; per client ok/refused " + " ".join(f"{x['ok']}/{x['refused']}" for x in g))
        w(f"gateway_budget_refusals_total by client: {r['metric_refusals'] or '{}'}")
        if r["budget_exhausted"]:
            w(f"NOTE: the run hit --max-requests ({a.max_requests}) before its end")
        if r["unauthorized"]:
            w(f"NOTE: the upstream refused {r['unauthorized']} requests (wrong admin key)")
        w("")
    if len(results) == 2:
        f, q = results
        w("| mode | upstream req/s (budget %g/s) | polite p50 | polite p99 | polite ok / refused "
          "| greedy ok / refused |" % rate)
        w("|---|---:|---:|---:|---:|---:|")
        for r in (f, q):
            p = r["polite"]
            w(f"| {r['mode']} | {r['upstream_per_s']:.2f} | {ms(p['p50_ms'])} | {ms(p['p99_ms'])} | "
              f"{p['ok']} / {p['refused']} | {sum(x['ok'] for x in r['greedy'])} / "
              f"{sum(x['refused'] for x in r['greedy'])} |")
        w("(polite p50/p99 over every answer it got, 200 or refusal)")


def on_term(*_):
    raise BenchError("stopped (SIGTERM)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateway", required=True, help="the gateway binary (run as is)")
    ap.add_argument("--gateway-label", default=None, help="how the report names the binary")
    ap.add_argument("--duration", type=float, default=60, help="seconds per mode")
    ap.add_argument("--modes", default="fair,fifo")
    ap.add_argument("--rpm", type=int, default=600)
    ap.add_argument("--burst", type=int, default=10)
    ap.add_argument("--budget-wait-ms", type=int, default=5000)
    ap.add_argument("--greedy", type=int, default=8)
    ap.add_argument("--inflight", type=int, default=8, help="requests in flight per greedy client")
    ap.add_argument("--pause-ms", type=int, default=200, help="the polite client's pause between requests")
    ap.add_argument("--warmup", type=float, default=3, help="seconds before the polite client starts")
    ap.add_argument("--greedy0-weight", type=int, default=1,
                    help="budget_weight of the first greedy client (fair mode; FIFO has one client)")
    ap.add_argument("--max-requests", type=int, default=100000, help="cap per mode, all clients together")
    ap.add_argument("--json", default=None, help="also write the figures here")
    a = ap.parse_args()
    a.gateway_label = a.gateway_label or a.gateway
    a.admin_key = "sk-admin-bench-" + secrets.token_hex(16)
    modes = [m for m in a.modes.split(",") if m]
    if any(m not in ("fair", "fifo") for m in modes) or a.duration <= a.warmup:
        ap.error("--modes is fair and/or fifo; --duration must exceed --warmup")
    # A TERM (run.sh's hard stop) unwinds like an error: the gateway is stopped.
    signal.signal(signal.SIGTERM, on_term)
    up = Upstream(a.admin_key)
    results = []
    try:
        for m in modes:
            log(f"mode {m}: {a.duration:g} s")
            results.append(run_mode(a, m, up))
    except BenchError as e:
        log(f"could not run: {e}")
        return 2
    finally:
        up.close()
    report(a, results)
    if a.json:
        Path(a.json).write_text(json.dumps({"args": {k: v for k, v in vars(a).items() if k not in ("admin_key", "gateway")},
                                            "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
