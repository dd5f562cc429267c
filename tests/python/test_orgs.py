"""The official OpenAI Python SDK with an organization set, through the gateway.

Run by tests/sdk_python_orgs.rs, which starts the fake upstream and a gateway whose
default organization is `org-main`, and sets GATEWAY_BASE_URL, GATEWAY_KEY,
GATEWAY_USER_ID and GATEWAY_ORG (that organization's id).

With `organization=...` (or OPENAI_ORG_ID) the SDK sends `OpenAI-Organization` on every
call. Naming the gateway's own organization must not switch the cache off.
"""

from __future__ import annotations

import os

import openai
import pytest
from openai import OpenAI

BASE_URL = os.environ.get("GATEWAY_BASE_URL", "")
KEY = os.environ.get("GATEWAY_KEY", "")
USER_ID = os.environ.get("GATEWAY_USER_ID", "")
ORG = os.environ.get("GATEWAY_ORG", "")

if not (BASE_URL and KEY and USER_ID and ORG):
    pytest.exit(
        "GATEWAY_BASE_URL, GATEWAY_KEY, GATEWAY_USER_ID and GATEWAY_ORG must be set; "
        "run these tests through `cargo nextest run --test sdk_python_orgs`",
        returncode=2,
    )

for _var in ("OPENAI_API_KEY", "OPENAI_ADMIN_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
    os.environ.pop(_var, None)


def make_client(organization: str) -> OpenAI:
    return OpenAI(
        admin_api_key=KEY,
        base_url=BASE_URL,
        organization=organization,
        max_retries=0,
        timeout=30,
    )


def test_the_second_retrieve_naming_the_gateways_organization_is_a_hit():
    print(f"openai SDK {openai.__version__}")
    users = make_client(ORG).admin.organization.users
    first = users.with_raw_response.retrieve(USER_ID)
    assert first.status_code == 200
    status = first.headers.get("cache-status", "")
    assert "stored" in status, status
    second = users.with_raw_response.retrieve(USER_ID)
    status = second.headers.get("cache-status", "")
    assert "hit" in status, status
    assert second.parse() == first.parse()


def test_an_organization_the_key_may_not_use_is_refused():
    users = make_client("org-someone-else").admin.organization.users
    with pytest.raises(openai.PermissionDeniedError) as e:
        users.retrieve(USER_ID)
    assert e.value.status_code == 403
    assert e.value.code == "organization_not_allowed"
