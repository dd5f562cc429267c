"""A membership added with the official OpenAI Python SDK shows on the next retrieve, on
the replica it went through and on another one.

Run by tests/sdk_python_evictions.rs, which starts the fake upstream (it keeps each user's
`projects` as the spec's `User` does), two gateways sharing Redis, and sets:

  GATEWAY_BASE_URL         replica A's client base URL, e.g. http://127.0.0.1:PORT/v1
  GATEWAY_SECOND_BASE_URL  replica B's
  GATEWAY_KEY              a client key both accept
"""

from __future__ import annotations

import os
import time

import pytest
from openai import OpenAI

BASE_URL = os.environ.get("GATEWAY_BASE_URL", "")
SECOND_BASE_URL = os.environ.get("GATEWAY_SECOND_BASE_URL", "")
KEY = os.environ.get("GATEWAY_KEY", "")

if not (BASE_URL and SECOND_BASE_URL and KEY):
    pytest.exit(
        "GATEWAY_BASE_URL, GATEWAY_SECOND_BASE_URL and GATEWAY_KEY must be set; "
        "run through `cargo nextest run --test sdk_python_evictions`",
        returncode=2,
    )

for _var in ("OPENAI_API_KEY", "OPENAI_ADMIN_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
    os.environ.pop(_var, None)


def make_client(base_url: str) -> OpenAI:
    return OpenAI(admin_api_key=KEY, base_url=base_url, max_retries=0, timeout=30)


def cache_status(client: OpenAI, user_id: str) -> str:
    raw = client.admin.organization.users.with_raw_response.retrieve(user_id)
    return raw.headers.get("cache-status", "")


def projects(client: OpenAI, user_id: str) -> list[tuple[str, str, str]]:
    user = client.admin.organization.users.retrieve(user_id)
    data = user.projects.data if user.projects else []
    return [(p.id, p.name, p.role) for p in data]


def prime(client: OpenAI, user_id: str) -> None:
    assert projects(client, user_id) == []
    assert "; hit" in cache_status(client, user_id), "the second retrieve is a hit"


def test_a_membership_added_shows_on_the_next_retrieve() -> None:
    a = make_client(BASE_URL)
    prime(a, "user_0002")
    a.admin.organization.projects.users.create("p1", user_id="user_0002", role="owner")
    assert projects(a, "user_0002") == [("p1", "Project One", "owner")]


def test_and_on_another_replica() -> None:
    a, b = make_client(BASE_URL), make_client(SECOND_BASE_URL)
    prime(b, "user_0003")
    a.admin.organization.projects.users.create("p1", user_id="user_0003", role="member")
    # The eviction travels over Redis: wait for it, boundedly.
    deadline = time.monotonic() + 5
    while projects(b, "user_0003") == []:
        assert time.monotonic() < deadline, "replica B still serves the user without p1"
        time.sleep(0.05)
    assert projects(b, "user_0003") == [("p1", "Project One", "member")]
