#!/usr/bin/env bash
# Side-by-side load benchmark on 127.0.0.1: the gateway (release) vs nginx
# proxy_cache doing the same job vs a bare hyper server (the ceiling on hits,
# a bare hyper proxy on pass-through) vs the fake upstream itself. Writes benches/load/results.json and benches/README.md.
#
# Usage: benches/load/run.sh            (the run of record: every scenario, 3 repeats)
#        BEFORE_BIN=old/openai-admin-gateway SCALING=scaling.json benches/load/run.sh
# Knobs (environment): DURATION=10 (s per wrk run), REPEATS=3 (>= 3 for a run
#   of record), CONNS=64,256, MEMORY=1 (100k / 1M users RSS test),
#   MEMORY_POINTS=100000,1000000, MEMORY_ONLY=0 (1: the memory test alone,
#   written to target/memory-only.json; the run of record is left as it is),
#   PROFILE=0 (1: perf profiles), SYSCALLS=1
#   (system calls per request, perf stat; 0: skip), PIN=1 (taskset
#   for the pinned scenarios: server on the upper half of the CPUs, wrk +
#   upstream on the lower half; hit_10k_unpinned is never pinned),
#   BENCH_NICE=0 (e.g. -5 when other jobs share the machine),
#   ONLY=scenario,... (hit_one hit_10k hit_10k_unpinned miss pass_get pass_post),
#   BEFORE_BIN=path (an older gateway binary: adds the target gateway_before,
#   interleaved with the others; BEFORE_LABEL=text says what it was built from),
#   SCALING=path (JSON of the in-process thread-scaling bench, for the Goals
#   table), BIN_DIR=dir (prebuilt binaries: skips the cargo build),
#   WORKERS=N (server.workers of the unpinned gateway), UNPINNED_THREADS=2
#   (wrk threads there), TIME_LIMIT=4200 (s, hard stop for the measuring part).
# The expected total time is printed at the start (a full run: about 25 min,
#   30 min with BEFORE_BIN).
# Needs root for apt-get (wrk, nginx, linux-perf when PROFILE=1) when missing.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
root=$(pwd)

DURATION=${DURATION:-10}
REPEATS=${REPEATS:-3}
CONNS=${CONNS:-64,256}
MEMORY=${MEMORY:-1}
MEMORY_POINTS=${MEMORY_POINTS:-100000,1000000}
MEMORY_ONLY=${MEMORY_ONLY:-0}
PROFILE=${PROFILE:-0}
SYSCALLS=${SYSCALLS:-1}
PIN=${PIN:-1}
BENCH_NICE=${BENCH_NICE:-0}
ONLY=${ONLY:-}
TIME_LIMIT=${TIME_LIMIT:-4200}
BEFORE_BIN=${BEFORE_BIN:-}
BEFORE_LABEL=${BEFORE_LABEL:-}
SCALING=${SCALING:-}
BIN_DIR=${BIN_DIR:-}
WORKERS=${WORKERS:-}
UNPINNED_THREADS=${UNPINNED_THREADS:-2}

say() { printf '[run.sh] %s\n' "$*" >&2; }

# --- tools -----------------------------------------------------------------
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || missing+=(nginx)
command -v taskset >/dev/null || missing+=(util-linux)
command -v python3 >/dev/null || missing+=(python3)
if [[ $PROFILE == 1 || $SYSCALLS == 1 ]] && ! command -v perf >/dev/null; then missing+=(linux-perf); fi
if ((${#missing[@]})); then
  say "installing ${missing[*]} (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# --- build -----------------------------------------------------------------
if [[ -z $BIN_DIR ]]; then
  command -v cargo >/dev/null || { say "cargo is required (or BIN_DIR=<prebuilt binaries>)"; exit 1; }
  say "building (release)"
  cargo build --release --bin openai-admin-gateway --examples
fi

# --- measure ---------------------------------------------------------------
# Many connections, and nginx's open_file_cache: use the hard fd limit.
ulimit -n "$(ulimit -Hn)"
say "load average before: $(cut -d' ' -f1-3 /proc/loadavg) (other jobs on this machine skew absolute numbers; the report says how much)"

# The command line the report shows: the knobs that differ from the
# defaults, with placeholders for paths (they belong to one machine).
shown=()
[[ $DURATION == 10 ]] || shown+=("DURATION=$DURATION")
[[ $REPEATS == 3 ]] || shown+=("REPEATS=$REPEATS")
[[ $CONNS == 64,256 ]] || shown+=("CONNS=$CONNS")
[[ $MEMORY == 1 ]] || shown+=("MEMORY=$MEMORY")
[[ $MEMORY_POINTS == 100000,1000000 ]] || shown+=("MEMORY_POINTS=$MEMORY_POINTS")
[[ $PROFILE == 0 ]] || shown+=("PROFILE=$PROFILE")
[[ $SYSCALLS == 1 ]] || shown+=("SYSCALLS=$SYSCALLS")
[[ $PIN == 1 ]] || shown+=("PIN=$PIN")
[[ $BENCH_NICE == 0 ]] || shown+=("BENCH_NICE=$BENCH_NICE")
[[ -z $ONLY ]] || shown+=("ONLY=$ONLY")
[[ -z $BIN_DIR ]] || shown+=("BIN_DIR=<prebuilt>")
[[ -z $BEFORE_BIN ]] || shown+=("BEFORE_BIN=<old binary>")
[[ -z $BEFORE_LABEL ]] || shown+=("BEFORE_LABEL=$(printf %q "$BEFORE_LABEL")")
[[ -z $SCALING ]] || shown+=("SCALING=<scaling.json>")
[[ -z $WORKERS ]] || shown+=("WORKERS=$WORKERS")
[[ $UNPINNED_THREADS == 2 ]] || shown+=("UNPINNED_THREADS=$UNPINNED_THREADS")
shown+=(benches/load/run.sh)

args=(--out "$root/benches/load/results.json" --duration "$DURATION" --repeats "$REPEATS"
      --conns "$CONNS" --memory-points "$MEMORY_POINTS" --unpinned-threads "$UNPINNED_THREADS"
      --command "${shown[*]}")
[[ $MEMORY == 1 ]] || args+=(--no-memory)
[[ $PROFILE == 1 ]] && args+=(--profile)
[[ $SYSCALLS == 1 ]] || args+=(--no-syscalls)
[[ $PIN == 1 ]] || args+=(--no-pin)
[[ -n $ONLY ]] && args+=(--only "$ONLY")
[[ -n $BIN_DIR ]] && args+=(--bin-dir "$BIN_DIR")
[[ -n $BEFORE_BIN ]] && args+=(--before-bin "$BEFORE_BIN" --before-label "$BEFORE_LABEL")
[[ -n $WORKERS ]] && args+=(--workers "$WORKERS")
if [[ $MEMORY_ONLY == 1 ]]; then
  mkdir -p "$root/target"
  args+=(--memory-only --out "$root/target/memory-only.json")
  python3 "$root/benches/load/bench.py" "${args[@]}"
  say "memory test only: target/memory-only.json (benches/README.md is left as it is)"
  exit 0
fi
((REPEATS >= 3)) || say "REPEATS=$REPEATS: fewer than 3 repeats is not a run of record"
python3 "$root/benches/load/bench.py" "${args[@]}" --plan >&2

rm -f "$root/benches/load/results.json"
status=0
timeout --signal=TERM --kill-after=30 "$TIME_LIMIT" \
  nice -n "$BENCH_NICE" python3 "$root/benches/load/bench.py" "${args[@]}" || status=$?

# --- report (also for an aborted run: it says so) ----------------------------
if [[ -f $root/benches/load/results.json ]]; then
  report=("$root/benches/load/results.json" "$root/benches/README.md")
  [[ -n $SCALING ]] && report+=(--scaling "$SCALING")
  python3 "$root/benches/load/report.py" "${report[@]}"
  say "wrote benches/README.md"
fi
if ((status != 0)); then
  say "benchmark FAILED (exit $status); see the messages above"
  exit "$status"
fi
