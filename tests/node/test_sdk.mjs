// End-to-end tests with the official OpenAI Node SDK (npm package `openai`) pointed at the
// gateway; the Node twin of tests/python/test_sdk.py.
//
// Run by tests/sdk_node.rs (`node --test tests/node/test_sdk.mjs`), which starts the fake
// upstream and the gateway and sets:
//
//   GATEWAY_BASE_URL       the gateway's client base URL, e.g. http://127.0.0.1:PORT/v1
//   GATEWAY_KEY            a valid gateway client key (allowed every method and path)
//   GATEWAY_USER_ID        a user that exists upstream; the last test deletes it
//   GATEWAY_OTHER_USER_ID  another existing user that only the "retrieved twice" test
//                          retrieves, so sdk_node.rs can count its upstream fetches
//
// `scripts/test.sh node_env` installs the SDK into tests/node/node_modules (`npm ci`).
// The tests run one after another in file order and share the upstream's state; the
// destructive one (delete) is last.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import OpenAI from "openai";
import { VERSION } from "openai/version";

const BASE_URL = process.env.GATEWAY_BASE_URL ?? "";
const KEY = process.env.GATEWAY_KEY ?? "";
const USER_ID = process.env.GATEWAY_USER_ID ?? "";
const OTHER_USER_ID = process.env.GATEWAY_OTHER_USER_ID ?? "";

if (!(BASE_URL && KEY && USER_ID && OTHER_USER_ID)) {
  console.error(
    "GATEWAY_BASE_URL, GATEWAY_KEY, GATEWAY_USER_ID and GATEWAY_OTHER_USER_ID must be set; " +
      "run these tests through `cargo nextest run --test sdk_node` (or scripts/test.sh)",
  );
  process.exit(2);
}

// The SDK reads these when a constructor option is missing; make sure nothing from the
// developer's shell leaks into the clients under test.
for (const name of [
  "OPENAI_API_KEY",
  "OPENAI_ADMIN_KEY",
  "OPENAI_BASE_URL",
  "OPENAI_ORG_ID",
  "OPENAI_PROJECT_ID",
  "OPENAI_LOG",
]) {
  delete process.env[name];
}

/** The gateway name that leads every `Cache-Status` it sends. */
const CACHE_NAME = "openai-admin-gateway";

function makeClient({ key = KEY, baseURL = BASE_URL } = {}) {
  // The admin endpoints authenticate with `adminAPIKey` (sent as `Authorization: Bearer
  // <key>`); the gateway key takes its place. `apiKey: null` so that only that key can be
  // sent. No retries: every request a test makes reaches the gateway exactly once.
  return new OpenAI({ apiKey: null, adminAPIKey: key, baseURL, maxRetries: 0, timeout: 30_000 });
}

const client = makeClient();
const users = client.admin.organization.users;

/** The `Cache-Status` header of a `Response` ("" when absent). */
function cacheStatus(response) {
  return response.headers.get("cache-status") ?? "";
}

/** The `;`-separated members of a `Cache-Status` value, trimmed. */
function cacheParams(status) {
  return status.split(";").map((p) => p.trim());
}

/** True for the gateway's `openai-admin-gateway; hit; ttl=N`. */
function isHit(response) {
  const params = cacheParams(cacheStatus(response));
  return params[0] === CACHE_NAME && params[1] === "hit";
}

function assertHit(response) {
  const status = cacheStatus(response);
  assert.ok(isHit(response), `expected a cache hit, Cache-Status: ${JSON.stringify(status)}`);
  assert.match(status, /; ttl=\d+$/, status);
}

/** A response the gateway fetched from the upstream (any `fwd=` reason), not a hit. */
function assertForwarded(response, reason) {
  const status = cacheStatus(response);
  const params = cacheParams(status);
  assert.equal(params[0], CACHE_NAME, `Cache-Status: ${JSON.stringify(status)}`);
  assert.equal(params[1], `fwd=${reason}`, `Cache-Status: ${JSON.stringify(status)}`);
  assert.ok(!isHit(response), status);
}

/** `assert.rejects` predicate: `err` is an instance of `cls` with `status`. */
function apiError(cls, status, more = () => {}) {
  return (err) => {
    assert.ok(err instanceof cls, `expected ${cls.name}, got ${err?.constructor?.name}: ${err}`);
    assert.ok(err instanceof OpenAI.APIError);
    assert.equal(err.status, status);
    more(err);
    return true;
  };
}

test("the installed SDK is the pinned one", () => {
  // Shows up in the output; makes it obvious which SDK was tested, and that npm ci
  // installed what package.json pins.
  const pinned = JSON.parse(readFileSync(new URL("./package.json", import.meta.url), "utf8"))
    .dependencies.openai;
  console.log(`openai SDK ${VERSION} (pinned ${pinned}), node ${process.version}`);
  assert.equal(VERSION, pinned);
});

test("retrieve a user", async () => {
  const user = await users.retrieve(USER_ID);
  assert.equal(user.id, USER_ID);
  assert.equal(user.object, "organization.user");
  assert.ok(Number.isInteger(user.added_at), `added_at ${user.added_at}`);
  assert.equal(typeof user.role, "string");
  assert.ok(user.role);
});

test("a user retrieved twice is fetched from the upstream once", async () => {
  // Nothing else retrieves OTHER_USER_ID: the first retrieve is the first the gateway sees.
  const first = await users.retrieve(OTHER_USER_ID).withResponse();
  assert.equal(first.response.status, 200);
  assertForwarded(first.response, "miss");
  assert.deepEqual(cacheParams(cacheStatus(first.response)).slice(2), ["stored"]);
  assert.equal(first.data.id, OTHER_USER_ID);

  const second = await users.retrieve(OTHER_USER_ID).withResponse();
  assert.equal(second.response.status, 200);
  assertHit(second.response);
  assert.deepEqual(second.data, first.data);
  // sdk_node.rs checks that the upstream got exactly one GET for this user.
});

test("the second retrieve is a cache hit", async () => {
  // `no-cache` forces a fresh fetch that is stored, whatever earlier tests did.
  const first = await users
    .retrieve(USER_ID, { headers: { "Cache-Control": "no-cache" } })
    .withResponse();
  assert.equal(first.response.status, 200);
  assertForwarded(first.response, "request");
  assert.ok(cacheParams(cacheStatus(first.response)).includes("stored"), cacheStatus(first.response));

  const second = await users.retrieve(USER_ID).withResponse();
  assert.equal(second.response.status, 200);
  assertHit(second.response);
  assert.match(second.response.headers.get("age") ?? "", /^\d+$/);
  assert.ok(second.response.headers.get("x-request-id"));
  assert.equal(second.request_id, second.response.headers.get("x-request-id"));
  assert.match(second.response.headers.get("content-type") ?? "", /^application\/json/);

  // A hit parses into the same object as the upstream response.
  assert.deepEqual(second.data, first.data);
  assert.equal(second.data.id, USER_ID);

  // `.asResponse()` gives the raw fetch Response: the stored bytes, unchanged.
  const raw = await users.retrieve(USER_ID).asResponse();
  assert.equal(raw.status, 200);
  assertHit(raw);
  assert.deepEqual(JSON.parse(await raw.text()), first.data);
});

test("list users", async () => {
  const page = await users.list({ limit: 100 });
  const ids = page.data.map((u) => u.id);
  assert.ok(ids.includes(USER_ID), JSON.stringify(ids));
  assert.ok(ids.includes(OTHER_USER_ID), JSON.stringify(ids));
  assert.ok(page.data.every((u) => u.object === "organization.user"));
  assert.equal(page.has_more, false);

  const { response } = await users.list({ limit: 100 }).withResponse();
  assert.equal(response.status, 200);
  // Lists are forwarded, never served from the user cache.
  assertForwarded(response, "bypass");
  assert.ok(response.headers.get("x-request-id"));

  // Auto-pagination follows `after=<last_id>` through the gateway's query forwarding and
  // sees the same users as the one big page.
  const paged = [];
  for await (const user of users.list({ limit: 10 })) {
    paged.push(user.id);
  }
  assert.ok(ids.length > 10, `only ${ids.length} users: nothing to paginate`);
  assert.deepEqual(paged, ids);
});

test("a wrong key raises AuthenticationError", async () => {
  const bad = makeClient({ key: "sk-not-a-gateway-key" });
  await assert.rejects(
    bad.admin.organization.users.retrieve(USER_ID),
    apiError(OpenAI.AuthenticationError, 401, (err) => {
      // The gateway's error body parses the way an OpenAI error does.
      assert.equal(err.code, "invalid_api_key");
      assert.equal(err.type, "invalid_request_error");
      assert.equal(typeof err.error?.message, "string");
      assert.ok(err.error.message);
      assert.equal(err.param, null);
      assert.ok(Object.hasOwn(err.error, "param"), JSON.stringify(err.error));
      // Made by the gateway itself: its own `req_...` request id.
      assert.match(err.requestID ?? "", /^req_/);
      assert.match(err.headers.get("content-type") ?? "", /^application\/json/);
    }),
  );
});

test("a wrong key on list and update raises AuthenticationError", async () => {
  const bad = makeClient({ key: "sk-not-a-gateway-key" }).admin.organization.users;
  const invalidKey = (err) => assert.equal(err.code, "invalid_api_key");
  await assert.rejects(bad.list(), apiError(OpenAI.AuthenticationError, 401, invalidKey));
  await assert.rejects(
    bad.update(USER_ID, { role: "reader" }),
    apiError(OpenAI.AuthenticationError, 401, invalidKey),
  );
});

test("a path outside the prefix raises NotFoundError", async () => {
  const outside = new URL("/not-the-prefix", BASE_URL).href;
  await assert.rejects(
    makeClient({ baseURL: outside }).admin.organization.users.retrieve(USER_ID),
    apiError(OpenAI.NotFoundError, 404, (err) => {
      assert.equal(err.code, "not_found");
      assert.equal(err.type, "invalid_request_error");
    }),
  );
});

test("an id with a slash in it raises BadRequestError (invalid_path)", async () => {
  // The SDK percent-encodes the id ("a%2Fb"); an encoded slash could name another
  // resource after any hop that decodes it, so the gateway refuses it.
  await assert.rejects(
    users.retrieve("a/b"),
    apiError(OpenAI.BadRequestError, 400, (err) => {
      assert.equal(err.code, "invalid_path");
      assert.equal(err.type, "invalid_request_error");
    }),
  );
});

test("an unknown user raises NotFoundError from the upstream", async () => {
  await assert.rejects(
    users.retrieve("user-does-not-exist-0000"),
    apiError(OpenAI.NotFoundError, 404, (err) => {
      assert.equal(err.code, "user_not_found");
      // Passed through: the upstream's request id, not one the gateway made.
      assert.match(err.requestID ?? "", /^upstream-req-\d+$/);
    }),
  );
});

test("an update evicts the cached user", async () => {
  const before = await users.retrieve(USER_ID);
  // Make sure the current version is cached, so the update has to evict it.
  const hit = await users.retrieve(USER_ID).withResponse();
  assertHit(hit.response);

  const newRole = before.role === "owner" ? "reader" : "owner";
  const updated = await users.update(USER_ID, { role: newRole });
  assert.equal(updated.id, USER_ID);
  assert.equal(updated.role, newRole);

  const after = await users.retrieve(USER_ID).withResponse();
  assertForwarded(after.response, "miss");
  assert.equal(after.data.role, newRole);
  // And the fresh version is what is cached now.
  const again = await users.retrieve(USER_ID).withResponse();
  assertHit(again.response);
  assert.equal(again.data.role, newRole);

  const restored = await users.update(USER_ID, { role: before.role });
  assert.equal(restored.role, before.role);
  assert.equal((await users.retrieve(USER_ID)).role, before.role);
});

test("a delete evicts the cached user (runs last)", async () => {
  // Removes the user upstream.
  await users.retrieve(USER_ID);
  const hit = await users.retrieve(USER_ID).withResponse();
  assertHit(hit.response);

  const deleted = await users.delete(USER_ID);
  assert.equal(deleted.id, USER_ID);
  assert.equal(deleted.deleted, true);
  assert.equal(deleted.object, "organization.user.deleted");

  await assert.rejects(
    users.retrieve(USER_ID),
    apiError(OpenAI.NotFoundError, 404, (err) => assert.equal(err.code, "user_not_found")),
  );
});
