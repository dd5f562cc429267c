#!/usr/bin/env python3
"""Trace export cost on the request path: p50/p99 of hits and forwards with the OTLP
collector up, down (a port that accepts and never answers) and unset.

    cargo build --release --bin openai-admin-gateway --example bench_upstream
    python3 benches/traces.py            # BIN_DIR=target/release DURATION=5 REPEATS=3 CONNS=32

Each repeat runs every (mode, scenario) pair with `wrk -t1 -cCONNS -dDURATION --latency`,
modes interleaved, so the whole run takes about 3 modes x 2 scenarios x REPEATS x
(DURATION + 2) seconds (about 2 minutes by default). Prints the median p50 and p99 over the
repeats, the requests per second, and what the gateway counted
(gateway_trace_export_failures_total, gateway_trace_spans_dropped_total). The figures are
for reading, not for asserting: a dead collector must not move p99 beyond the noise
between repeats.
"""

import hashlib
import http.server
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN_DIR = Path(os.environ.get("BIN_DIR", ROOT / "target" / "release"))
DURATION = int(os.environ.get("DURATION", "5"))
REPEATS = int(os.environ.get("REPEATS", "3"))
CONNS = int(os.environ.get("CONNS", "32"))
ADMIN_KEY = "sk-admin-bench-traces"
CLIENT_KEY = "oag_bench_traces_client_key"
SCENARIOS = {"hit": "/v1/organization/users/user_1", "forward": "/v1/organization/users?limit=1"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what):
    for _ in range(200):
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} never listened on {port}")


class Answering(http.server.BaseHTTPRequestHandler):
    """A collector that takes every batch (200, empty ExportTraceServiceResponse)."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def collector_up():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answering)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv.server_address[1]


def collector_down():
    """Accepts connections and never reads or answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1024)
    held = []

    def accept():
        while True:
            held.append(s.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    return s.getsockname()[1]


def start_gateway(work, mode, endpoint_port, upstream_port):
    port, admin = free_port(), free_port()
    telemetry = ""
    if endpoint_port:
        telemetry = f'\n[telemetry]\notlp_endpoint = "http://127.0.0.1:{endpoint_port}"\n'
    conf = work / f"{mode}.toml"
    conf.write_text(
        f"""[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
workers = 1

[upstream]
base_url = "http://127.0.0.1:{upstream_port}/v1"
admin_key_env = "OPENAI_ADMIN_KEY"

[cache]
ttl_secs = 300

[[clients]]
name = "bench"
key_sha256 = "{hashlib.sha256(CLIENT_KEY.encode()).hexdigest()}"
{telemetry}"""
    )
    env = dict(os.environ, OPENAI_ADMIN_KEY=ADMIN_KEY, RUST_LOG="warn")
    p = subprocess.Popen([str(BIN_DIR / "openai-admin-gateway"), "--config", str(conf)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, p, f"gateway ({mode})")
    return p, port, admin


def ms(text):
    v, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(port, path):
    out = subprocess.run(
        ["wrk", "-t1", f"-c{CONNS}", f"-d{DURATION}s", "--latency",
         "-H", f"Authorization: Bearer {CLIENT_KEY}", f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        sys.exit(f"wrk saw errors:\n{out}")
    p50 = ms(re.search(r"^\s*50%\s+(\S+)", out, re.M).group(1))
    p99 = ms(re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return p50, p99, rps


def counted(admin):
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
    def value(name):
        m = re.search(rf"^{name} (\S+)$", text, re.M)
        return int(float(m.group(1))) if m else 0
    return value("gateway_trace_export_failures_total"), value("gateway_trace_spans_dropped_total")


def main():
    for b in [BIN_DIR / "openai-admin-gateway", BIN_DIR / "examples" / "bench_upstream"]:
        if not b.exists():
            sys.exit(f"missing {b}: cargo build --release --bin openai-admin-gateway --example bench_upstream")
    work = Path(tempfile.mkdtemp(prefix="oag-bench-traces-"))
    up_port = free_port()
    upstream = subprocess.Popen([str(BIN_DIR / "examples" / "bench_upstream"), "--listen",
                                 f"127.0.0.1:{up_port}", "--admin-key", ADMIN_KEY],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [upstream]
    try:
        wait_port(up_port, upstream, "bench_upstream")
        modes = {"unset": None, "up": collector_up(), "down": collector_down()}
        gws = {}
        for mode, endpoint in modes.items():
            p, port, admin = start_gateway(work, mode, endpoint, up_port)
            procs.append(p)
            gws[mode] = (port, admin)
            urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{port}{SCENARIOS['hit']}",
                headers={"Authorization": f"Bearer {CLIENT_KEY}"}), timeout=5).read()
        results = {}
        for r in range(REPEATS):
            for scenario, path in SCENARIOS.items():
                for mode in modes:
                    got = wrk(gws[mode][0], path)
                    results.setdefault((scenario, mode), []).append(got)
                    print(f"repeat {r + 1} {scenario:8} collector {mode:6} p50 {got[0]:7.3f} ms  "
                          f"p99 {got[1]:7.3f} ms  {got[2]:9.0f} req/s", flush=True)
        print(f"\nmedians over {REPEATS} repeat(s), wrk -t1 -c{CONNS} -d{DURATION}s:")
        print("| scenario | collector | p50 ms | p99 ms | p99 range ms | req/s | export failures | spans dropped |")
        print("|---|---|---|---|---|---|---|---|")
        for scenario in SCENARIOS:
            for mode in modes:
                rs = results[(scenario, mode)]
                fails, dropped = counted(gws[mode][1])
                p99s = [x[1] for x in rs]
                print(f"| {scenario} | {mode} | {statistics.median(x[0] for x in rs):.3f} | "
                      f"{statistics.median(p99s):.3f} | {min(p99s):.3f}-{max(p99s):.3f} | "
                      f"{statistics.median(x[2] for x in rs):.0f} | {fails} | {dropped} |")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
