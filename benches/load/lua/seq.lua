-- Ids in sequence from BENCH_START: every request a new id (misses, cache
-- fills), or, with BENCH_IDS > 0, cycling through BENCH_IDS ids (warm-up).
local tag = os.getenv("BENCH_TAG")
local start = tonumber(os.getenv("BENCH_START") or "0")
local mod = tonumber(os.getenv("BENCH_IDS") or "0")
local base = "/v1/organization/users/user-" .. tag
sent = 0

function request()
  local i = start + sent
  if mod > 0 then i = i % mod end
  sent = sent + 1
  return wrk.format(nil, string.format("%s%012d", base, i))
end
