"""The official OpenAI Python SDK against the organization's pause after an upstream 429.

Run by tests/sdk_python_budget.rs (`official_python_sdk_waits_out_the_organizations_pause`),
which starts the fake upstream and a gateway with `upstream.budget_wait_ms = 100`, scripts
one upstream 429 with `retry-after-ms: GATEWAY_PAUSE_MS` on `GET /v1/echo/trigger`, and
sets:

  GATEWAY_BASE_URL   the gateway's client base URL, e.g. http://127.0.0.1:PORT/v1
  GATEWAY_KEY        an unlimited client's key
  GATEWAY_PAUSE_MS   the pause the scripted 429 asks for

The test triggers the pause itself (so pytest's start-up time does not eat into it), then
lists users with `max_retries=2`: the first try meets the gateway's own 429
`organization_budget_exceeded`, whose `retry-after-ms` (the pause's time left) the SDK
sleeps before retrying (it reads `retry-after-ms` first; see test_ratelimit.py), and the
retry, after the pause, succeeds.
"""

from __future__ import annotations

import os
import time

import json
import urllib.error
import urllib.request

import openai
import pytest
from openai import OpenAI

BASE_URL = os.environ.get("GATEWAY_BASE_URL", "")
KEY = os.environ.get("GATEWAY_KEY", "")
PAUSE_MS = int(os.environ.get("GATEWAY_PAUSE_MS", "0") or 0)

if not (BASE_URL and KEY and PAUSE_MS > 0):
    pytest.exit(
        "GATEWAY_BASE_URL, GATEWAY_KEY and GATEWAY_PAUSE_MS must be set; run this through "
        "`cargo nextest run --test sdk_python_budget`",
        returncode=2,
    )

for _var in ("OPENAI_API_KEY", "OPENAI_ADMIN_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
    os.environ.pop(_var, None)


def test_max_retries_2_waits_out_the_pause_and_succeeds():
    events: list[dict] = []

    def on_request(request) -> None:
        events.append({"kind": "request", "t": time.monotonic()})

    def on_response(response) -> None:
        events.append(
            {
                "kind": "response",
                "t": time.monotonic(),
                "status": response.status_code,
                "headers": {k.lower(): v for k, v in response.headers.items()},
            }
        )

    http_client = openai.DefaultHttpxClient(
        event_hooks={"request": [on_request], "response": [on_response]},
    )
    client = OpenAI(admin_api_key=KEY, base_url=BASE_URL, timeout=30, max_retries=2, http_client=http_client)

    # The upstream's 429 reaches its client unchanged and pauses the organization.
    trigger = urllib.request.Request(f"{BASE_URL}/echo/trigger", headers={"Authorization": f"Bearer {KEY}"})
    try:
        urllib.request.urlopen(trigger, timeout=30)
        pytest.fail("the scripted upstream 429 did not come back")
    except urllib.error.HTTPError as caused:
        paused_at = time.monotonic()
        body = caused.read().decode()
        assert caused.code == 429, body
        assert json.loads(body)["error"]["code"] == "injected", body
        assert caused.headers["retry-after-ms"] == str(PAUSE_MS)

    start = time.monotonic()
    page = client.admin.organization.users.list(limit=10)
    took = time.monotonic() - start
    assert page.data, "the listed users"

    statuses = [e["status"] for e in events if e["kind"] == "response"]
    tries = len([e for e in events if e["kind"] == "request"])
    first = next(e for e in events if e["kind"] == "response")
    waited = [
        events[i + 1]["t"] - e["t"]
        for i, e in enumerate(events[:-1])
        if e["kind"] == "response" and e["status"] == 429
    ]
    print(
        f"tries={tries} statuses={statuses} first retry-after-ms={first['headers'].get('retry-after-ms')} "
        f"slept={[round(w, 3) for w in waited]} call took {took:.3f}s, "
        f"succeeded {time.monotonic() - paused_at:.3f}s after the upstream's 429 (pause {PAUSE_MS} ms)"
    )
    assert statuses[0] == 429 and statuses[-1] == 200, events
    assert 2 <= tries <= 3, events
    retry_after_ms = int(first["headers"]["retry-after-ms"])
    assert first["headers"]["retry-after"] == str(max(1, -(-retry_after_ms // 1000)))
    assert 0 < retry_after_ms <= PAUSE_MS, retry_after_ms
    # The SDK slept what the gateway asked (time.sleep does not return early).
    assert waited[0] >= retry_after_ms / 1000 - 0.010, (waited, retry_after_ms)
    # It got through only once the pause was over.
    assert time.monotonic() - paused_at >= PAUSE_MS / 1000 - 0.010
