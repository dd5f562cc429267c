-- Hits spread over BENCH_IDS ids: each request picks one uniformly at random.
-- ids: user-<BENCH_TAG (12 chars)><12 digits>, 29 characters like real ones.
local tag = os.getenv("BENCH_TAG")
local n = tonumber(os.getenv("BENCH_IDS"))
local base = "/v1/organization/users/user-" .. tag
math.randomseed(os.time())
sent = 0

function request()
  sent = sent + 1
  return wrk.format(nil, string.format("%s%012d", base, math.random(0, n - 1)))
end
