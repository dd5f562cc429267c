#!/usr/bin/env bash
# The one command that runs the whole test suite:
#
#   scripts/test.sh            # every step, in order
#   scripts/test.sh STEP...    # only the named steps (see STEPS below)
#
# Works on a fresh machine (Rust toolchain with rustfmt/clippy, cargo-nextest
# if available, Python >= 3.9) and needs no running services: the tests start
# a fake OpenAI Admin API and the gateway in-process. Safe to run repeatedly.
#
# Environment:
#   PYTHON                  interpreter used to create .venv (default: python3)
#   GATEWAY_SKIP_SDK_TESTS  =1 skips the Python SDK end-to-end test (offline dev)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
VENV="$ROOT/.venv"

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_NO_INPUT=1
export PYTHONDONTWRITEBYTECODE=1

section() { printf '\n==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------
# Steps. Each is a function; STEPS lists them in the order they run.
# ---------------------------------------------------------------------------

# Python venv with the newest official `openai` SDK, for tests/sdk_python.rs.
step_python_env() {
    section "python: venv at .venv with the newest openai SDK + pytest"
    local py="${PYTHON:-python3}"
    command -v "$py" >/dev/null || die "$py not found (set PYTHON=...)"
    # Recreate the venv when it is missing or its interpreter no longer runs
    # (e.g. the base Python moved).
    if ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
        rm -rf "$VENV"
        if ! "$py" -m venv "$VENV" >/dev/null 2>&1; then
            # Debian's system python needs python3-venv for ensurepip.
            if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
                note "installing python3-venv"
                rm -rf "$VENV"
                apt-get update -qq >/dev/null
                DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
                "$py" -m venv "$VENV"
            else
                die "could not create a venv with $py (install python3-venv)"
            fi
        fi
    fi
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q --upgrade openai pytest h2
    note "$("$VENV/bin/python" -c 'import sys, openai, pytest; print(f"python {sys.version.split()[0]}, openai {openai.__version__}, pytest {pytest.__version__}")')"
}

# redis-server for tests/redis_ratelimit.rs (replicas sharing rate limits).
# The tests start their own servers on free loopback ports; nothing runs as a
# service.
step_services() {
    section "services: redis-server"
    if ! command -v redis-server >/dev/null; then
        [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || die "redis-server missing: install it (apt-get install redis-server)"
        note "installing redis-server with apt"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null
    fi
    note "$(redis-server --version | cut -d' ' -f1-3)"
}

step_fmt() {
    section "cargo fmt --check"
    cargo fmt --all -- --check
}

step_clippy() {
    section "cargo clippy --all-targets -- -D warnings"
    cargo clippy --quiet --all-targets -- -D warnings
}

step_tests() {
    export GATEWAY_TEST_PYTHON="$VENV/bin/python"
    if [ "${GATEWAY_SKIP_SDK_TESTS:-}" != 1 ] && [ ! -x "$GATEWAY_TEST_PYTHON" ]; then
        die "$GATEWAY_TEST_PYTHON missing: run the python_env step first"
    fi
    if cargo nextest --version >/dev/null 2>&1; then
        section "cargo nextest run"
        cargo nextest run --no-fail-fast
    else
        section "cargo test (cargo-nextest not installed)"
        cargo test --no-fail-fast
    fi
}

# deploy/: every file checked with a real validator (installs them itself),
# plus check-config and a smoke run of the example configs on the debug build
# the tests just made.
step_deploy() {
    section "deploy/validate.sh --strict"
    GATEWAY_BIN="${GATEWAY_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/openai-admin-gateway}" bash deploy/validate.sh --strict
}

# ---------------------------------------------------------------------------
# Later steps (deploy validators, doc checks, ...) go here: define a
# step_NAME function above and add NAME to STEPS at the place it should run.
# ---------------------------------------------------------------------------
STEPS=(
    python_env
    services
    fmt
    clippy
    tests
    deploy
)

main() {
    local steps=("$@")
    [ ${#steps[@]} -gt 0 ] || steps=("${STEPS[@]}")
    local s
    for s in "${steps[@]}"; do
        declare -F "step_$s" >/dev/null || die "unknown step '$s' (known: ${STEPS[*]})"
    done
    for s in "${steps[@]}"; do
        "step_$s"
    done
    section "all steps passed: ${steps[*]}"
}

main "$@"
