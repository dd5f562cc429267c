#!/usr/bin/env python3
"""The soak run's fake OpenAI Admin API: a real HTTP/1.1 server (stdlib asyncio
streams) that knows the truth and can be told to flap.

It holds every user's version and role, applies role changes
(`POST /v1/organization/users/{id}`), and records, per user id, the history
of (time, version, role) on the shared monotonic clock (CLOCK_MONOTONIC, the
same one the driver's clients read), so the checker can tell which bodies
were true when.

Users: `user_NNNNN` and `slow_NNNN` (the latter are answered after a stall of
0.2 to 2.6 s, some of them past the gateway's upstream timeout); any other id
is 404. Version 0 of every user exists from the start with role `reader`.

Flapping (`--flap`): healthy for a few seconds, then failing for a few
seconds, alternately; while failing, 90 % (`--fail-rate`) of the requests
fail in that period's way (`--modes` picks the ways):
  5xx    500 / 502 / 503 (and a 429 now and then) with an OpenAI error body;
         writes are not applied
  reset  TCP RST (SO_LINGER 0) before any answer, or after the headers and
         half the body; half the writes are applied first (an ambiguous write)
  slow   answered after 2.2 to 4 s (past the gateway's timeout); writes are
         applied on arrival
  mixed  one of the above per request
(and, to reproduce one behaviour alone, `rst`: reset before any answer,
`partial`: reset after the headers and half the body).

Control (never through the gateway): `GET /_soak/history` returns the
history, the flap timeline and counters as JSON; `POST /_soak/calm` stops
flapping from now on.
"""

import argparse
import asyncio
import json
import random
import signal
import socket
import struct
import sys
import time
from urllib.parse import parse_qs, unquote, urlsplit

PREFIX = "/v1"
ADDED_AT = 1711471533
ROLES = ("owner", "reader")


def render(uid, version, role):
    """The one true body of `uid` at `version` (the checker renders the same)."""
    return json.dumps(
        {
            "object": "organization.user",
            "id": uid,
            "name": f"Soak User {uid} v{version}",
            "email": f"{uid}@soak.example",
            "role": role,
            "added_at": ADDED_AT,
        },
        separators=(",", ":"),
    ).encode()


def known(uid):
    for prefix, digits in (("user_", 5), ("slow_", 4)):
        rest = uid[len(prefix):]
        if uid.startswith(prefix) and len(rest) == digits and rest.isdigit():
            return True
    return False


def error_body(message, typ, code):
    return json.dumps(
        {"error": {"message": message, "type": typ, "param": None, "code": code}},
        separators=(",", ":"),
    ).encode()


class Reset(Exception):
    """Abort the connection with a TCP RST."""


class Truth:
    def __init__(self, seed, flap, healthy, failing, modes=("5xx", "reset", "slow", "mixed"), fail_rate=0.9):
        self.rng = random.Random(seed)
        self.modes = modes
        self.fail_rate = fail_rate
        self.users = {}  # id -> [version, role]
        self.history = {}  # id -> [[t, version, role], ...]; absent: version 0 from the start
        self.flap = flap
        self.healthy = healthy
        self.failing = failing
        self.mode = "healthy"
        self.timeline = [[time.monotonic(), "healthy"]]
        self.counts = {}
        self.seq = 0

    def count(self, k):
        self.counts[k] = self.counts.get(k, 0) + 1

    def current(self, uid):
        return self.users.get(uid, (0, "reader"))

    def apply(self, uid, role):
        v, _ = self.current(uid)
        v += 1
        self.users[uid] = [v, role]
        self.history.setdefault(uid, []).append([time.monotonic(), v, role])
        return v

    async def flapper(self):
        modes = self.modes
        while True:
            await asyncio.sleep(self.rng.uniform(*self.healthy))
            if not self.flap:
                return
            self.mode = self.rng.choice(modes)
            self.timeline.append([time.monotonic(), self.mode])
            await asyncio.sleep(self.rng.uniform(*self.failing))
            self.mode = "healthy"
            self.timeline.append([time.monotonic(), "healthy"])
            if not self.flap:
                return

    def failure(self):
        """How this request fails, or None."""
        if self.mode == "healthy" or self.rng.random() >= self.fail_rate:
            return None
        if self.mode == "mixed":
            return self.rng.choice(("5xx", "reset", "slow"))
        return self.mode


class Server:
    def __init__(self, truth, admin_key):
        self.t = truth
        self.auth = f"Bearer {admin_key}".encode()

    async def conn(self, reader, writer):
        self.t.count("connections")
        try:
            while True:
                req = await read_request(reader)
                if req is None:
                    break
                keep = await self.handle(req, writer)
                if not keep:
                    break
        except Reset:
            sock = writer.get_extra_info("socket")
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            writer.transport.abort()
            return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError, OSError):
            pass
        try:
            writer.close()
        except OSError:
            pass

    async def handle(self, req, writer):
        method, target, headers, body = req
        url = urlsplit(target)
        path = url.path
        if path.startswith("/_soak/"):
            return await self.control(method, path, writer)
        t = self.t
        t.count("requests")
        if headers.get(b"authorization") != self.auth:
            t.count("unauthorized")
            await respond(writer, 401, error_body("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"))
            return True
        if not path.startswith(PREFIX + "/"):
            await respond(writer, 404, error_body("Not found.", "invalid_request_error", "not_found"))
            return True
        rest = path[len(PREFIX):]
        parts = rest.split("/")
        fail = t.failure()
        if fail:
            t.count(f"failed_{fail}")

        # The write (if any) and the answer.
        if method == "POST" and len(parts) == 4 and parts[1:3] == ["organization", "users"]:
            uid = unquote(parts[3])
            if not known(uid):
                await respond(writer, 404, error_body(f"No such user: {uid}", "invalid_request_error", None))
                return True
            try:
                role = json.loads(body or b"{}").get("role")
            except (ValueError, AttributeError):
                role = None
            if role not in ROLES:
                await respond(writer, 400, error_body("role must be owner or reader", "invalid_request_error", None))
                return True
            if fail == "5xx":
                return await self.fail_5xx(writer)
            if fail in ("reset", "rst", "partial"):
                if t.rng.random() < 0.5:
                    t.apply(uid, role)
                    t.count("writes_applied_then_reset")
                raise Reset()
            v = t.apply(uid, role)
            t.count("writes_applied")
            if fail == "slow":
                await asyncio.sleep(t.rng.uniform(2.2, 4.0))
            await respond(writer, 200, render(uid, v, role))
            return True

        if method == "GET" and len(parts) == 4 and parts[1:3] == ["organization", "users"]:
            uid = unquote(parts[3])
            if uid.startswith("slow_"):
                t.count("stalls")
                await asyncio.sleep(t.rng.uniform(0.2, 2.6))
            if fail:
                return await self.fail_read(fail, writer, lambda: self.user_answer(uid))
            status, payload = self.user_answer(uid)
            await respond(writer, status, payload)
            return True

        if method == "GET" and rest == "/organization/users":
            q = parse_qs(url.query)
            if fail:
                return await self.fail_read(fail, writer, lambda: self.list_answer(q))
            status, payload = self.list_answer(q)
            await respond(writer, status, payload)
            return True

        await respond(writer, 404, error_body("Not found.", "invalid_request_error", "not_found"))
        return True

    def user_answer(self, uid):
        if not known(uid):
            return 404, error_body(f"No such user: {uid}", "invalid_request_error", None)
        v, role = self.t.current(uid)
        return 200, render(uid, v, role)

    def list_answer(self, q):
        try:
            limit = max(1, min(20, int(q.get("limit", ["20"])[0])))
        except ValueError:
            limit = 20
        after = q.get("after", [None])[0]
        start = int(after[5:]) + 1 if after and after.startswith("user_") and after[5:].isdigit() else 0
        ids = [f"user_{i:05d}" for i in range(start, min(start + limit, 100000))]
        data = b",".join(render(u, *self.t.current(u)) for u in ids)
        return 200, (
            b'{"object":"list","data":[' + data + b'],"first_id":' + json.dumps(ids[0] if ids else None).encode()
            + b',"last_id":' + json.dumps(ids[-1] if ids else None).encode() + b',"has_more":true}'
        )

    async def fail_5xx(self, writer):
        status = self.t.rng.choice((500, 502, 503, 503, 429))
        msg = "Rate limit reached." if status == 429 else "The server had an error while processing your request."
        typ = "requests" if status == 429 else "server_error"
        await respond(writer, status, error_body(msg, typ, None))
        return True

    async def fail_read(self, fail, writer, answer):
        if fail == "5xx":
            return await self.fail_5xx(writer)
        if fail == "reset":
            fail = "rst" if self.t.rng.random() < 0.5 else "partial"
        if fail == "rst":
            raise Reset()
        if fail == "partial":
            status, payload = answer()
            head = head_bytes(status, len(payload))
            writer.write(head + payload[: len(payload) // 2])
            await writer.drain()
            await asyncio.sleep(0.05)
            raise Reset()
        # slow: the truth is read after the stall.
        await asyncio.sleep(self.t.rng.uniform(2.2, 4.0))
        status, payload = answer()
        await respond(writer, status, payload)
        return True

    async def control(self, method, path, writer):
        if path == "/_soak/history":
            t = self.t
            out = {
                "now": time.monotonic(),
                "history": t.history,
                "current": t.users,
                "timeline": t.timeline,
                "counts": t.counts,
            }
            await respond(writer, 200, json.dumps(out).encode())
        elif path == "/_soak/calm" and method == "POST":
            self.t.flap = False
            if self.t.mode != "healthy":
                self.t.mode = "healthy"
                self.t.timeline.append([time.monotonic(), "healthy"])
            await respond(writer, 200, b"{}")
        else:
            await respond(writer, 404, b"{}")
        return True


REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests",
           500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


def head_bytes(status, length):
    Server.seq = getattr(Server, "seq", 0) + 1
    return (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\n"
        f"content-type: application/json\r\ncontent-length: {length}\r\n"
        f"x-request-id: req_soak_{Server.seq:012d}\r\n\r\n"
    ).encode()


async def respond(writer, status, payload):
    writer.write(head_bytes(status, len(payload)) + payload)
    await writer.drain()


async def read_request(reader):
    """(method, target, headers, body) or None at a clean end of the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            return None
        raise
    lines = head[:-4].split(b"\r\n")
    method, target, _ = lines[0].decode("latin-1").split(" ", 2)
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower()] = v.strip()
    body = b""
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    elif b"content-length" in headers:
        body = await reader.readexactly(int(headers[b"content-length"]))
    return method, target, headers, body


def span(s):
    lo, hi = (float(x) for x in s.split(","))
    return lo, hi


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--admin-key", required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--flap", action="store_true")
    ap.add_argument("--healthy", type=span, default=(3.0, 8.0), help="healthy period, s: lo,hi")
    ap.add_argument("--failing", type=span, default=(2.0, 6.0), help="failing period, s: lo,hi")
    ap.add_argument("--modes", default="5xx,reset,slow,mixed", help="failing modes to pick from")
    ap.add_argument("--fail-rate", type=float, default=0.9, help="share of requests failing while failing")
    a = ap.parse_args()
    truth = Truth(a.seed, a.flap, a.healthy, a.failing, tuple(a.modes.split(",")), a.fail_rate)
    server = Server(truth, a.admin_key)
    srv = await asyncio.start_server(server.conn, "127.0.0.1", a.port, backlog=1024, limit=1 << 16)
    print(f"soak upstream listening on 127.0.0.1:{a.port}", file=sys.stderr, flush=True)
    if a.flap:
        asyncio.get_running_loop().create_task(truth.flapper())
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    async with srv:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
