#!/usr/bin/env bash
# Side-by-side load benchmark on 127.0.0.1: the gateway (release) vs nginx
# proxy_cache doing the same job vs a bare hyper server (the ceiling) vs the
# fake upstream itself. Writes benches/load/results.json and benches/README.md.
#
# Usage: benches/load/run.sh
# Knobs (environment): DURATION=10 (s per wrk run), REPEATS=3, CONNS=64,256,
#   MEMORY=1 (100k / 1M users RSS test), MEMORY_POINTS=100000,1000000,
#   PROFILE=0 (1: perf profile of the gateway on hits), PIN=1 (taskset: server
#   on the upper half of the CPUs, wrk + upstream on the lower half),
#   BENCH_NICE=0 (e.g. -5 when other jobs share the machine), ONLY=scenario,...
#   TIME_LIMIT=2700 (s, hard stop for the measuring part).
# Needs root for apt-get (wrk, nginx, linux-perf when PROFILE=1) when missing.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
root=$(pwd)

DURATION=${DURATION:-10}
REPEATS=${REPEATS:-3}
CONNS=${CONNS:-64,256}
MEMORY=${MEMORY:-1}
MEMORY_POINTS=${MEMORY_POINTS:-100000,1000000}
PROFILE=${PROFILE:-0}
PIN=${PIN:-1}
BENCH_NICE=${BENCH_NICE:-0}
ONLY=${ONLY:-}
TIME_LIMIT=${TIME_LIMIT:-2700}

say() { printf '[run.sh] %s\n' "$*" >&2; }

# --- tools -----------------------------------------------------------------
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || missing+=(nginx)
command -v taskset >/dev/null || missing+=(util-linux)
command -v python3 >/dev/null || missing+=(python3)
if [[ $PROFILE == 1 ]] && ! command -v perf >/dev/null; then missing+=(linux-perf); fi
if ((${#missing[@]})); then
  say "installing ${missing[*]} (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { say "cargo is required"; exit 1; }

# --- build -----------------------------------------------------------------
say "building (release)"
cargo build --release --bin openai-admin-gateway --examples

# --- measure ---------------------------------------------------------------
# Many connections, and nginx's open_file_cache: use the hard fd limit.
ulimit -n "$(ulimit -Hn)"
say "load average before: $(cut -d' ' -f1-3 /proc/loadavg) (other jobs on this machine skew absolute numbers; the report says how much)"

args=(--out "$root/benches/load/results.json" --duration "$DURATION" --repeats "$REPEATS"
      --conns "$CONNS" --memory-points "$MEMORY_POINTS")
[[ $MEMORY == 1 ]] || args+=(--no-memory)
[[ $PROFILE == 1 ]] && args+=(--profile)
[[ $PIN == 1 ]] || args+=(--no-pin)
[[ -n $ONLY ]] && args+=(--only "$ONLY")

rm -f "$root/benches/load/results.json"
status=0
timeout --signal=TERM --kill-after=30 "$TIME_LIMIT" \
  nice -n "$BENCH_NICE" python3 "$root/benches/load/bench.py" "${args[@]}" || status=$?

# --- report (also for an aborted run: it says so) ----------------------------
if [[ -f $root/benches/load/results.json ]]; then
  python3 "$root/benches/load/report.py" "$root/benches/load/results.json" "$root/benches/README.md"
  say "wrote benches/README.md"
fi
if ((status != 0)); then
  say "benchmark FAILED (exit $status); see the messages above"
  exit "$status"
fi
