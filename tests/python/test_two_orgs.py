"""The official OpenAI Python SDK reading one user id in two organizations through one
gateway (`organization=` is what OPENAI_ORG_ID sets).

Run by tests/sdk_python_orgs.rs, which starts a fake upstream that scopes its data by
admin key and `OpenAI-Organization` (the user's `name` says which it saw) and a gateway
with the default organization `org-main` and `[[orgs]] research` (`org-research`), and
sets GATEWAY_BASE_URL, GATEWAY_KEY, GATEWAY_USER_ID and GATEWAY_ORGS (comma-separated
organization ids).
"""

from __future__ import annotations

import os

import openai
import pytest
from openai import OpenAI

BASE_URL = os.environ.get("GATEWAY_BASE_URL", "")
KEY = os.environ.get("GATEWAY_KEY", "")
USER_ID = os.environ.get("GATEWAY_USER_ID", "")
ORGS = [o for o in os.environ.get("GATEWAY_ORGS", "").split(",") if o]

if not (BASE_URL and KEY and USER_ID and len(ORGS) == 2):
    pytest.exit(
        "GATEWAY_BASE_URL, GATEWAY_KEY, GATEWAY_USER_ID and GATEWAY_ORGS (two ids) must be "
        "set; run these tests through `cargo nextest run --test sdk_python_orgs`",
        returncode=2,
    )

for _var in ("OPENAI_API_KEY", "OPENAI_ADMIN_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
    os.environ.pop(_var, None)


def test_each_organization_reads_its_own_user_and_caches_it():
    print(f"openai SDK {openai.__version__}")
    names = {}
    for org in ORGS:
        users = OpenAI(
            admin_api_key=KEY, base_url=BASE_URL, organization=org, max_retries=0, timeout=30
        ).admin.organization.users
        for attempt in ("first", "second"):
            raw = users.with_raw_response.retrieve(USER_ID)
            status = raw.headers.get("cache-status", "")
            user = raw.parse()
            print(f"organization={org} {attempt} retrieve: {raw.status_code} cache-status: {status} name: {user.name}")
            assert raw.status_code == 200
            assert ("stored" in status) if attempt == "first" else ("hit" in status), status
            names.setdefault(org, user.name)
            assert user.name == names[org], "a hit returns what the fill stored"
        assert user.name.startswith(f"{org}|"), f"the upstream answered for {org}: {user.name}"
    assert names[ORGS[0]] != names[ORGS[1]], "the same id in two organizations is two users"
