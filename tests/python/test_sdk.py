"""End-to-end tests with the official OpenAI Python SDK pointed at the gateway.

Run by tests/sdk_python.rs, which starts the fake upstream and the gateway and
sets:

  GATEWAY_BASE_URL  the gateway's client base URL, e.g. http://127.0.0.1:PORT/v1
  GATEWAY_KEY       a valid gateway client key (allowed every method and path)
  GATEWAY_USER_ID   a user that exists upstream; test_zz_delete deletes it

The tests run in file order and share the upstream's state; the destructive
one (delete) is last.
"""

from __future__ import annotations

import os
import urllib.parse

import openai
import pytest
from openai import OpenAI

BASE_URL = os.environ.get("GATEWAY_BASE_URL", "")
KEY = os.environ.get("GATEWAY_KEY", "")
USER_ID = os.environ.get("GATEWAY_USER_ID", "")
# A user whose id the SDK must percent-encode; seeded upstream by tests/sdk_python.rs.
SPACED_ID = "user a"

if not (BASE_URL and KEY and USER_ID):
    pytest.exit(
        "GATEWAY_BASE_URL, GATEWAY_KEY and GATEWAY_USER_ID must be set; "
        "run these tests through `cargo nextest run --test sdk_python` (or scripts/test.sh)",
        returncode=2,
    )

# The SDK reads these when a constructor argument is missing; make sure nothing
# from the developer's shell leaks into the client under test.
for _var in ("OPENAI_API_KEY", "OPENAI_ADMIN_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
    os.environ.pop(_var, None)


def make_client(key: str = KEY, base_url: str = BASE_URL) -> OpenAI:
    # Admin endpoints authenticate with `admin_api_key` (sent as
    # `Authorization: Bearer <key>`); the gateway key takes its place.
    # No retries: every request the test makes should reach the gateway once.
    return OpenAI(admin_api_key=key, base_url=base_url, max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def client() -> OpenAI:
    return make_client()


@pytest.fixture(scope="module")
def users(client: OpenAI):
    return client.admin.organization.users


def cache_status(headers) -> str:
    return headers.get("cache-status", "")


def test_sdk_version_is_reported():
    # Shows up in `pytest -v`/failures; makes it obvious which SDK was tested.
    print(f"openai SDK {openai.__version__}")
    assert openai.__version__


def test_retrieve_user(users):
    user = users.retrieve(USER_ID)
    assert user.id == USER_ID
    assert user.object == "organization.user"
    assert isinstance(user.added_at, int)
    assert isinstance(user.role, str) and user.role


def test_second_retrieve_is_a_cache_hit(users):
    # `no-cache` forces a fresh fetch that is stored, whatever earlier tests did.
    first = users.with_raw_response.retrieve(USER_ID, extra_headers={"Cache-Control": "no-cache"})
    assert first.status_code == 200
    assert "hit" not in cache_status(first.headers), cache_status(first.headers)
    assert "stored" in cache_status(first.headers), cache_status(first.headers)

    second = users.with_raw_response.retrieve(USER_ID)
    assert second.status_code == 200
    status = cache_status(second.headers)
    assert "hit" in status, status
    assert status.startswith("openai-admin-gateway"), status
    assert "age" in second.headers
    assert second.headers.get("x-request-id")
    assert second.headers.get("content-type", "").startswith("application/json")

    # A hit parses into the same model as the upstream response.
    assert second.parse() == first.parse()
    assert second.parse().id == USER_ID


def test_list_users(users):
    page = users.list(limit=100)
    ids = [u.id for u in page.data]
    assert USER_ID in ids, ids
    assert all(u.object == "organization.user" for u in page.data)

    raw = users.with_raw_response.list(limit=100)
    assert raw.status_code == 200
    # Lists are forwarded, never served from the user cache.
    assert "hit" not in cache_status(raw.headers)
    assert raw.headers.get("x-request-id")


def test_bad_key_is_authentication_error():
    bad = make_client(key="sk-not-a-gateway-key")
    with pytest.raises(openai.AuthenticationError) as excinfo:
        bad.admin.organization.users.retrieve(USER_ID)
    err = excinfo.value
    assert err.status_code == 401
    # The gateway's error body parses the way an OpenAI error does.
    assert err.code == "invalid_api_key"
    assert err.type == "invalid_request_error"
    assert isinstance(err.body, dict) and err.body.get("message")
    assert err.body.get("param") is None
    assert err.request_id, "gateway errors carry x-request-id"
    assert err.response.headers.get("content-type", "").startswith("application/json")


def test_bad_key_on_list_and_write_is_authentication_error():
    bad = make_client(key="sk-not-a-gateway-key").admin.organization.users
    with pytest.raises(openai.AuthenticationError) as excinfo:
        bad.list()
    assert excinfo.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError) as excinfo:
        bad.update(USER_ID, role="reader")
    assert excinfo.value.code == "invalid_api_key"


def test_path_outside_prefix_is_not_found():
    parts = urllib.parse.urlsplit(BASE_URL)
    outside = urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/not-the-prefix", "", ""))
    with pytest.raises(openai.NotFoundError) as excinfo:
        make_client(base_url=outside).admin.organization.users.retrieve(USER_ID)
    err = excinfo.value
    assert err.status_code == 404
    assert err.code == "not_found"
    assert err.type == "invalid_request_error"


def test_an_id_that_needs_encoding_is_served_through_the_cache(users):
    # The SDK percent-encodes the id ("user%20a"); the gateway keys its cache by the decoded
    # id: once from the upstream, then from memory.
    first = users.with_raw_response.retrieve(SPACED_ID)
    assert first.parse().id == SPACED_ID
    assert "stored" in cache_status(first.headers), cache_status(first.headers)
    second = users.with_raw_response.retrieve(SPACED_ID)
    assert second.parse().id == SPACED_ID
    assert "hit" in cache_status(second.headers), cache_status(second.headers)


def test_unknown_user_is_not_found_from_upstream(users):
    with pytest.raises(openai.NotFoundError) as excinfo:
        users.retrieve("user-does-not-exist-0000")
    assert excinfo.value.status_code == 404


def test_update_evicts_cached_user(users):
    before = users.retrieve(USER_ID)
    # Make sure the current version is cached, so the update has to evict it.
    hit = users.with_raw_response.retrieve(USER_ID)
    assert "hit" in cache_status(hit.headers), cache_status(hit.headers)

    new_role = "reader" if before.role == "owner" else "owner"
    updated = users.update(USER_ID, role=new_role)
    assert updated.id == USER_ID
    assert updated.role == new_role

    after = users.with_raw_response.retrieve(USER_ID)
    assert "hit" not in cache_status(after.headers), cache_status(after.headers)
    assert after.parse().role == new_role
    # And the fresh version is what is cached now.
    again = users.with_raw_response.retrieve(USER_ID)
    assert "hit" in cache_status(again.headers), cache_status(again.headers)
    assert again.parse().role == new_role

    restored = users.update(USER_ID, role=before.role)
    assert restored.role == before.role
    assert users.retrieve(USER_ID).role == before.role


def test_zz_delete_evicts_cached_user(users):
    # Runs last: it removes the user upstream.
    users.retrieve(USER_ID)
    hit = users.with_raw_response.retrieve(USER_ID)
    assert "hit" in cache_status(hit.headers), cache_status(hit.headers)

    deleted = users.delete(USER_ID)
    assert deleted.id == USER_ID
    assert deleted.deleted is True
    assert deleted.object == "organization.user.deleted"

    with pytest.raises(openai.NotFoundError) as excinfo:
        users.retrieve(USER_ID)
    assert excinfo.value.status_code == 404
