"""The official OpenAI Python SDK against the gateway's per-client rate limit.

Run by tests/sdk_python.rs (`official_python_sdk_against_the_rate_limit`), which
starts the fake upstream and a gateway whose only client has
`rate_limit = { requests_per_minute = GATEWAY_RATE_LIMIT_RPM, burst = GATEWAY_RATE_LIMIT_BURST }`
(60 and 2) and sets:

  GATEWAY_BASE_URL           the gateway's client base URL, e.g. http://127.0.0.1:PORT/v1
  GATEWAY_KEY                the rate-limited client's key
  GATEWAY_USER_ID            a user that exists upstream (only ever read here)
  GATEWAY_RATE_LIMIT_RPM     that client's requests_per_minute
  GATEWAY_RATE_LIMIT_BURST   that client's burst

The tests run in file order against one limiter: the first starts from a full
budget.

How the SDK waits (openai 3.57.0, `openai/_base_client.py`): on a 429,
`_should_retry` says yes, then `_calculate_retry_timeout` asks
`_parse_retry_after_header`, which reads `retry-after-ms` first (divided by
1000) and only falls back to `retry-after` (seconds, or an HTTP date) when
`retry-after-ms` is absent or unparsable. A value in (0, 120] seconds is used
as the delay as is; otherwise the SDK uses its own backoff, 0.5 s * 2^n minus
up to 25 % jitter (0.375-0.5 s before the first retry). The gateway sends
both headers, so the SDK sleeps exactly `retry-after-ms` milliseconds: the
precise GCRA wait rounded up, where `retry-after` would round it up to a whole
second.
"""

from __future__ import annotations

import math
import os
import re
import time

import openai
import pytest
from openai import OpenAI

BASE_URL = os.environ.get("GATEWAY_BASE_URL", "")
KEY = os.environ.get("GATEWAY_KEY", "")
USER_ID = os.environ.get("GATEWAY_USER_ID", "")
RPM = int(os.environ.get("GATEWAY_RATE_LIMIT_RPM", "0") or 0)
BURST = int(os.environ.get("GATEWAY_RATE_LIMIT_BURST", "0") or 0)

if not (BASE_URL and KEY and USER_ID and RPM > 0 and BURST > 0):
    pytest.exit(
        "GATEWAY_BASE_URL, GATEWAY_KEY, GATEWAY_USER_ID, GATEWAY_RATE_LIMIT_RPM and "
        "GATEWAY_RATE_LIMIT_BURST must be set; run these tests through "
        "`cargo nextest run --test sdk_python` (or scripts/test.sh)",
        returncode=2,
    )

for _var in ("OPENAI_API_KEY", "OPENAI_ADMIN_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
    os.environ.pop(_var, None)

# Time for one request's worth of budget to come back.
PER_REQUEST_S = 60.0 / RPM
# More calls than the burst plus whatever refills while they run, even on a slow machine.
MAX_CALLS_TO_GET_LIMITED = BURST + 20
# Upper bound for one call that waits out one 429 (the brief's "well under 10 s").
MAX_RETRIED_CALL_S = 10.0


class Recorder:
    """httpx event hooks: every request the SDK sends and every response it gets, in order,
    with `time.monotonic()` stamps. The response hook runs when the headers arrive, before
    the SDK decides whether to retry; the request hook runs just before a request is sent,
    so the gap between a 429 and the next request is the SDK's sleep (plus a little)."""

    def __init__(self) -> None:
        self.events: list[dict] = []

    def clear(self) -> None:
        self.events.clear()

    def on_request(self, request) -> None:
        self.events.append(
            {
                "kind": "request",
                "t": time.monotonic(),
                "retry_count": request.headers.get("x-stainless-retry-count"),
            }
        )

    def on_response(self, response) -> None:
        self.events.append(
            {
                "kind": "response",
                "t": time.monotonic(),
                "status": response.status_code,
                "headers": {k.lower(): v for k, v in response.headers.items()},
            }
        )

    def kinds(self) -> list[str]:
        return [e["kind"] for e in self.events]

    def statuses(self) -> list[int]:
        return [e["status"] for e in self.events if e["kind"] == "response"]


def make_client(recorder: Recorder, max_retries: int | None) -> OpenAI:
    http_client = openai.DefaultHttpxClient(
        event_hooks={"request": [recorder.on_request], "response": [recorder.on_response]},
    )
    kwargs = {"admin_api_key": KEY, "base_url": BASE_URL, "timeout": 30, "http_client": http_client}
    if max_retries is not None:
        kwargs["max_retries"] = max_retries
    return OpenAI(**kwargs)


def parse_reset(value: str) -> float:
    """OpenAI's `x-ratelimit-reset-*` format (`20ms`, `1.5s`, `6m0s`) in seconds."""
    m = re.fullmatch(r"(\d+)ms", value)
    if m:
        return int(m.group(1)) / 1000
    m = re.fullmatch(r"(?:(\d+)m)?(\d+(?:\.\d+)?)s", value)
    assert m, f"x-ratelimit-reset-requests {value!r} is not like 20ms, 1.5s or 6m0s"
    return int(m.group(1) or 0) * 60 + float(m.group(2))


def assert_retry_headers(headers) -> int:
    """Checks the 429's retry and rate-limit headers; returns `retry-after-ms`."""
    assert "retry-after" in headers, dict(headers)
    assert "retry-after-ms" in headers, dict(headers)
    retry_after = int(headers["retry-after"])
    retry_after_ms = int(headers["retry-after-ms"])
    # GCRA never asks for more than one request's worth of time (rounded up to a ms).
    assert 0 < retry_after_ms <= PER_REQUEST_S * 1000 + 1, retry_after_ms
    # Whole seconds, rounded up, at least 1, consistent with the milliseconds.
    assert retry_after == max(1, math.ceil(retry_after_ms / 1000)), (retry_after, retry_after_ms)
    assert headers["x-ratelimit-limit-requests"] == str(RPM)
    assert headers["x-ratelimit-remaining-requests"] == "0"
    reset = parse_reset(headers["x-ratelimit-reset-requests"])
    # The whole burst is back no sooner than the next single request is allowed.
    assert reset + 0.002 >= retry_after_ms / 1000, (reset, retry_after_ms)
    return retry_after_ms


def test_without_retries_the_429_raises_rate_limit_error():
    rec = Recorder()
    users = make_client(rec, max_retries=0).admin.organization.users

    # The limiter starts full: the first request goes through and says what is left.
    first = users.with_raw_response.retrieve(USER_ID)
    assert first.status_code == 200
    assert first.parse().id == USER_ID
    assert first.headers["x-ratelimit-limit-requests"] == str(RPM)
    assert first.headers["x-ratelimit-remaining-requests"] == str(BURST - 1)

    # Spend the rest of the burst; some call soon gets the gateway's 429.
    with pytest.raises(openai.RateLimitError) as excinfo:
        for _ in range(MAX_CALLS_TO_GET_LIMITED):
            rec.clear()
            users.retrieve(USER_ID)
    err = excinfo.value

    # The SDK parsed the gateway's error body like one of OpenAI's.
    assert err.status_code == 429
    assert err.code == "rate_limit_exceeded"
    assert err.type == "requests"
    assert isinstance(err.body, dict) and err.body.get("message")
    assert err.body.get("param") is None
    assert err.request_id, "gateway errors carry x-request-id"
    assert err.response.headers.get("content-type", "").startswith("application/json")
    retry_after_ms = assert_retry_headers(err.response.headers)
    print(f"429 with retry-after={err.response.headers['retry-after']} retry-after-ms={retry_after_ms}")

    # max_retries=0: the failing call sent exactly one request, and did not wait.
    assert rec.kinds() == ["request", "response"], rec.events
    assert rec.statuses() == [429]
    assert rec.events[0]["retry_count"] == "0"


def test_default_retries_wait_out_the_429_and_succeed():
    assert openai.DEFAULT_MAX_RETRIES == 2
    rec = Recorder()
    client = make_client(rec, max_retries=None)
    assert client.max_retries == 2, "the SDK's default"

    # Spy on the SDK's own delay choice (a private method; the timing checks below do not
    # depend on it, so a renamed method only loses this extra evidence).
    chosen: list[float] = []
    original = getattr(client, "_calculate_retry_timeout", None)
    if original is not None:

        def spy(*args, **kwargs):
            delay = original(*args, **kwargs)
            chosen.append(delay)
            return delay

        client._calculate_retry_timeout = spy
    users = client.admin.organization.users

    # Call until one call runs into the limit (the previous test may have left the budget
    # empty or it may have refilled). That call must still succeed, after one retry.
    for _ in range(MAX_CALLS_TO_GET_LIMITED):
        rec.clear()
        chosen.clear()
        start = time.monotonic()
        user = users.retrieve(USER_ID)
        elapsed = time.monotonic() - start
        assert user.id == USER_ID
        if 429 in rec.statuses():
            break
    else:
        pytest.fail(f"{MAX_CALLS_TO_GET_LIMITED} calls in a row never met the rate limit")

    # One 429, then the SDK's retry succeeds: it waited long enough the first time.
    assert rec.kinds() == ["request", "response", "request", "response"], rec.events
    assert rec.statuses() == [429, 200], rec.events
    assert [e["retry_count"] for e in rec.events if e["kind"] == "request"] == ["0", "1"]
    limited = rec.events[1]
    retry_after_ms = assert_retry_headers(limited["headers"])
    slept = rec.events[2]["t"] - limited["t"]
    print(
        f"retry-after-ms={retry_after_ms} retry-after={limited['headers']['retry-after']}: "
        f"the SDK slept {slept:.3f}s before retrying, the call took {elapsed:.3f}s, "
        f"delay chosen by the SDK: {chosen}"
    )

    # The SDK honoured our header: it slept at least retry-after-ms (time.sleep does not
    # return early; 10 ms for clock granularity). Its own first backoff would have been
    # 0.375-0.5 s, shorter than the ~1 s the gateway asks for after a fresh burst.
    assert slept >= retry_after_ms / 1000 - 0.010, (slept, retry_after_ms)
    assert elapsed >= 0.5 * retry_after_ms / 1000, (elapsed, retry_after_ms)
    assert elapsed < MAX_RETRIED_CALL_S, elapsed
    if original is not None:
        # `retry-after-ms` is what it used (`retry-after` would be a whole second).
        assert chosen == [pytest.approx(retry_after_ms / 1000)], (chosen, retry_after_ms)

    # The success that ended the wait also describes the budget.
    ok = rec.events[3]["headers"]
    assert ok["x-ratelimit-limit-requests"] == str(RPM)
    assert int(ok["x-ratelimit-remaining-requests"]) < BURST
