#!/usr/bin/env python3
"""Run the built gateway with an example config on loopback and check what the deploy
files rely on: /readyz and /healthz on the admin port (probes, HEALTHCHECK), /metrics
there and not on the public port, SIGHUP keeps it serving (and a broken file is
rejected without harm), SIGTERM exits 0 within shutdown_grace_secs.

A fake OpenAI Admin API on loopback answers the upstream calls, and a little traffic
(miss, hit, user delete, a 429, cache purges, a good and a bad reload) makes every
metric family print samples, so the saved scrape (--metrics-out) shows the real metric
and label names the Grafana dashboard is checked against.

  smoke_gateway.py --bin BIN --config EXAMPLE.toml --workdir DIR [--metrics-out FILE]
                   [--healthcheck deploy/docker/healthcheck.sh]

The example config is copied with only these changes: listen/admin_listen on
127.0.0.1 with free ports, upstream.base_url on the fake upstream (nothing leaves this
machine), admin_key_file pointing at a dummy key file, shutdown_grace_secs = 3, and one
extra [[clients]] entry "smoke-test" (burst 3) whose key this script holds.
Exit 0 when every check passed.
"""
from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import secrets
import threading
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def call(url: str, method: str = "GET", headers: dict | None = None, timeout: float = 5.0):
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode("utf-8", "replace")


class FakeUpstream(http.server.BaseHTTPRequestHandler):
    """Just enough of /v1/organization/users/{id} for the gateway's cached route."""

    seen_auth: list[str] = []

    def _user(self) -> str | None:
        m = re.fullmatch(r"/v1/organization/users/([A-Za-z0-9_.~-]+)", self.path)
        return m.group(1) if m else None

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("x-request-id", "req_fake_upstream")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        FakeUpstream.seen_auth.append(self.headers.get("authorization", ""))
        uid = self._user()
        if uid:
            self._send(200, {"object": "organization.user", "id": uid, "name": "Smoke Test",
                             "email": "smoke@example.com", "role": "reader", "added_at": 1711471533})
        else:
            self._send(404, {"error": {"message": "not found", "type": "invalid_request_error", "param": None, "code": None}})

    def do_DELETE(self) -> None:  # noqa: N802
        FakeUpstream.seen_auth.append(self.headers.get("authorization", ""))
        self._send(200, {"object": "organization.user.deleted", "id": self._user(), "deleted": True})

    def log_message(self, *args) -> None:
        pass


def set_key(text: str, section: str, key: str, value: str) -> str:
    """Replace (or add) `key = value` inside [section] of a TOML text."""
    lines = text.splitlines()
    out, cur, done = [], None, False
    for ln in lines:
        m = re.match(r"^\s*\[+([a-z_]+)\]+\s*$", ln)
        if m:
            if cur == section and not done:
                out.append(f"{key} = {value}")
                done = True
            cur = m.group(1)
        elif cur == section and re.match(rf"^\s*#?\s*{key}\s*=", ln):
            if not done:
                out.append(f"{key} = {value}")
                done = True
            continue
        out.append(ln)
    if not done:
        out.append(f"[{section}]" if cur != section else "")
        out.append(f"{key} = {value}")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--config", required=True, type=Path)
    ap.add_argument("--workdir", required=True, type=Path)
    ap.add_argument("--metrics-out", type=Path)
    ap.add_argument("--healthcheck", type=Path)
    a = ap.parse_args()

    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeUpstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    up_port = upstream.server_address[1]
    pub, adm = free_port(), free_port()
    client_key = "gwk_smoke_" + secrets.token_hex(24)
    key = a.workdir / "admin-key"
    key.write_text("sk-admin-dummy-for-smoke-test\n")
    key.chmod(0o600)
    text = a.config.read_text()
    text = set_key(text, "server", "listen", f'"127.0.0.1:{pub}"')
    text = set_key(text, "server", "admin_listen", f'"127.0.0.1:{adm}"')
    text = set_key(text, "server", "shutdown_grace_secs", "3")
    text = set_key(text, "upstream", "base_url", f'"http://127.0.0.1:{up_port}/v1"')
    text = set_key(text, "upstream", "admin_key_file", f'"{key}"')
    text = re.sub(r"(?m)^admin_key_env\s*=.*\n", "", text)
    text += (
        "\n[[clients]]\n"
        'name = "smoke-test"\n'
        f'key_sha256 = "{hashlib.sha256(client_key.encode()).hexdigest()}"\n'
        "rate_limit = { requests_per_minute = 1, burst = 3 }\n"
    )
    tomllib.loads(text)  # the rewrite kept it TOML
    cfg = a.workdir / "gateway.toml"
    cfg.write_text(text)

    failures: list[str] = []

    def check(ok: bool, what: str) -> None:
        print(("  ok   " if ok else "  FAIL ") + what)
        if not ok:
            failures.append(what)

    log = open(a.workdir / "gateway.log", "w")
    proc = subprocess.Popen([a.bin, "--config", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    admin = f"http://127.0.0.1:{adm}"
    try:
        deadline = time.monotonic() + 15
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status, _ = get(admin + "/readyz", 0.5)
                if status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        check(status == 200, f"/readyz 200 on the admin port (got {status}, exit {proc.poll()})")
        if status != 200:
            return 1
        check(get(admin + "/healthz")[0] == 200, "/healthz 200 on the admin port")
        if a.healthcheck:
            env = dict(os.environ, GATEWAY_ADMIN_PORT=str(adm))
            rc = subprocess.run(["bash", str(a.healthcheck)], env=env, timeout=5).returncode
            check(rc == 0, "deploy/docker/healthcheck.sh reports healthy")
        st, body = get(admin + "/metrics")
        check(st == 200 and "gateway_" in body, "/metrics on the admin port serves gateway_* metrics")
        st_pub, _ = get(f"http://127.0.0.1:{pub}/metrics")
        check(st_pub != 200, f"/metrics is not served on the public port (got {st_pub})")
        st_pub, _ = get(f"http://127.0.0.1:{pub}/v1/organization/users/user_abc")
        check(st_pub == 401, f"public port answers an unauthenticated API call with 401 (got {st_pub})")

        # Traffic through the gateway to the fake upstream (3 requests = the burst).
        user = f"http://127.0.0.1:{pub}/v1/organization/users/user_smoke"
        auth = {"authorization": f"Bearer {client_key}"}
        st1, h1, _ = call(user, headers=auth)
        st2, h2, _ = call(user, headers=auth)
        cs = {k.lower(): v for k, v in h2.items()}.get("cache-status", "")
        check(st1 == 200 and st2 == 200 and "; hit" in cs,
              f"GET user through the gateway: miss, then a cache hit ({st1}, {st2}, Cache-Status: {cs})")
        st3, _, _ = call(user, method="DELETE", headers=auth)
        check(st3 == 200, f"DELETE user forwarded (got {st3})")
        check(bool(FakeUpstream.seen_auth) and all(x == "Bearer sk-admin-dummy-for-smoke-test" for x in FakeUpstream.seen_auth),
              "the upstream saw the admin key from admin_key_file, never the client key")
        codes = [call(user, headers=auth)[0] for _ in range(5)]
        check(429 in codes, f"a client over its rate limit gets 429 (got {codes})")
        check(call(admin + "/cache/users/user_smoke", method="DELETE")[0] in (200, 202, 204), "admin DELETE /cache/users/{id}")
        check(call(admin + "/cache", method="DELETE")[0] in (200, 202, 204), "admin DELETE /cache")

        # A good reload, then a broken file: rejected, still serving, then restored.
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        check(proc.poll() is None and get(admin + "/healthz")[0] == 200, "still serving after SIGHUP")
        cfg.write_text(text + "\n[not_a_section]\nx = 1\n")
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        check(proc.poll() is None and get(admin + "/healthz")[0] == 200, "a broken file on SIGHUP leaves it serving")
        cfg.write_text(text)
        st, body = get(admin + "/metrics")
        check('result="error"' in body and 'result="ok"' in body, "gateway_config_reloads_total counts ok and error")
        if a.metrics_out and st == 200:
            a.metrics_out.write_text(body)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            rc = None
        check(rc == 0, f"SIGTERM: exit 0 within the grace period (exit {rc} after {time.monotonic() - t0:.1f}s)")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        upstream.shutdown()
    if failures:
        print(f"gateway log: {a.workdir / 'gateway.log'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
