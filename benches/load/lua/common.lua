-- Appended to every scenario script by bench.py: reports one machine-readable
-- line (latencies in microseconds) and how many requests the threads built.
local bench_threads = {}

function setup(thread)
  table.insert(bench_threads, thread)
end

function done(summary, latency, requests)
  local sent = 0
  for _, t in ipairs(bench_threads) do
    sent = sent + (t:get("sent") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"duration_us":%d,"requests":%d,"bytes":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"mean_us":%.1f,"sent":%d}\n',
    summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, sent))
end
