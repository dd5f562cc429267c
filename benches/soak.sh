#!/usr/bin/env bash
# Soak run on 127.0.0.1: DURATION seconds of mixed traffic (hits, misses,
# writes, pass-through, stalls) against the release gateway while a fake
# upstream that knows the truth flaps between healthy and failing (5xx,
# resets, slow). Checks every body against the upstream's history, samples the
# gateway's RSS and descriptors every 10 s, and prints PASS/FAIL lines.
#
# Usage: benches/soak.sh            (10 minutes, the run of record)
#        DURATION=60 benches/soak.sh  (a quick check)
# Knobs (environment): DURATION=600 (s), CLIENTS=32, RATE=150 (req/s, all
#   clients together), SEED=1, OUT=benches/soak/results.json for the full
#   duration, benches/soak/results-${DURATION}s.json otherwise (not committed).
# Honours CARGO_TARGET_DIR (default ./target). Needs cargo and python3 only.
# Exit status: 0 PASS, 1 FAIL, 2 the run could not be done.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)

DURATION=${DURATION:-600}
CLIENTS=${CLIENTS:-32}
RATE=${RATE:-150}
SEED=${SEED:-1}
if [[ -z ${OUT:-} ]]; then
  if ((DURATION == 600)); then OUT=benches/soak/results.json; else OUT=benches/soak/results-${DURATION}s.json; fi
fi

case $OUT in /*) out_path=$OUT ;; *) out_path=$root/$OUT ;; esac

say() { printf '[soak.sh] %s\n' "$*" >&2; }

command -v cargo >/dev/null || { say "cargo is required"; exit 2; }
command -v python3 >/dev/null || { say "python3 is required"; exit 2; }

say "building (release)"
cargo build --release --bin openai-admin-gateway
target_dir=${CARGO_TARGET_DIR:-$root/target}
bin=$target_dir/release/openai-admin-gateway
[[ -x $bin ]] || { say "no binary at $bin"; exit 2; }
# Run a copy: a rebuild by someone else during the run changes nothing.
work=$(mktemp -d "${TMPDIR:-/tmp}/oag-soak-bin.XXXXXX")
cp "$bin" "$work/openai-admin-gateway"

driver=
cleanup() {
  # The driver runs in its own process group with everything it started.
  if [[ -n $driver ]] && kill -0 "$driver" 2>/dev/null; then
    kill -TERM -- "-$driver" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$driver" 2>/dev/null || break; sleep 1; done
    kill -KILL -- "-$driver" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "soak: ${DURATION}s, ${CLIENTS} clients, ~${RATE} req/s; results in $OUT"
# Hard stop: the load, then up to a few minutes of settling and checking.
limit=$((DURATION + 300))
setsid timeout --signal=TERM --kill-after=30 "$limit" \
  python3 "$root/benches/soak/soak.py" --gateway "$work/openai-admin-gateway" --out "$out_path" \
  --duration "$DURATION" --clients "$CLIENTS" --rate "$RATE" --seed "$SEED" &
driver=$!
status=0
wait "$driver" || status=$?
driver=
case $status in
  0) say "soak PASSED" ;;
  1) say "soak FAILED (see the FAIL lines above)" ;;
  124) say "soak did not finish within ${limit}s"; status=2 ;;
  *) say "soak could not be run (exit $status)" ;;
esac
exit "$status"
