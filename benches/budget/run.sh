#!/usr/bin/env bash
# The organization's budget under load (issue 21's "Done when" figures): the
# upstream's request rate against upstream.rate_limit, and the polite client's
# latency with fair turns and with plain FIFO, on 127.0.0.1 against a fake
# upstream (benches/budget/budget.py, Python stdlib). Figures go to stdout.
#
# Usage: benches/budget/run.sh               (60 s per mode, about 2.5 minutes)
#        DURATION=10 benches/budget/run.sh   (a quick check)
# Knobs (environment): DURATION=60 (s per mode), MODES=fair,fifo,
#   BIN=<gateway binary> (run it instead of building the debug binary;
#   BIN_LABEL names it in the output),
#   JSON=<file> (also write the figures there); anything else budget.py takes
#   can follow on the command line, e.g. `-- --inflight 4 --rpm 300`.
# The debug build is enough: the budget (10 requests/s), not the CPU, sets
# the pace. Honours CARGO_TARGET_DIR (default ./target). Needs cargo, python3.
# Exit status: 0 the runs were done, 2 they could not be.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
root=$(pwd)

DURATION=${DURATION:-60}
MODES=${MODES:-fair,fifo}
[[ ${1:-} == -- ]] && shift

say() { printf '[budget/run.sh] %s\n' "$*" >&2; }
command -v python3 >/dev/null || { say "python3 is required"; exit 2; }

if [[ -n ${BIN:-} ]]; then
  bin=$BIN
  label=${BIN_LABEL:-"$BIN (given)"}
else
  command -v cargo >/dev/null || { say "cargo is required"; exit 2; }
  say "building (debug)"
  cargo build --bin openai-admin-gateway
  bin=${CARGO_TARGET_DIR:-$root/target}/debug/openai-admin-gateway
  commit=$(git -C "$root" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
  git -C "$root" diff --quiet HEAD 2>/dev/null || commit="$commit+changes"
  label="debug build of $commit"
fi
[[ -x $bin ]] || { say "no binary at $bin"; exit 2; }
# Run a copy: a rebuild by someone else during the run changes nothing.
work=$(mktemp -d "${TMPDIR:-/tmp}/oag-budget-bin.XXXXXX")
trap 'rm -rf "$work"' EXIT
cp "$bin" "$work/openai-admin-gateway"
label="$label, sha256 $(sha256sum "$work/openai-admin-gateway" | cut -c1-16)…"

modes=$(tr ',' '\n' <<<"$MODES" | grep -c .)
limit=$(((DURATION + 45) * modes + 30))
say "${DURATION}s per mode ($MODES); hard stop after ${limit}s"
args=(--gateway "$work/openai-admin-gateway" --gateway-label "$label"
  --duration "$DURATION" --modes "$MODES")
[[ -n ${JSON:-} ]] && args+=(--json "$JSON")
timeout --signal=TERM --kill-after=10 "$limit" \
  python3 "$root/benches/budget/budget.py" "${args[@]}" "$@"
