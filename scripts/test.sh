#!/usr/bin/env bash
# The one command that runs the whole test suite:
#
#   scripts/test.sh            # every step, in order
#   scripts/test.sh STEP...    # only the named steps (see STEPS below)
#
# Works on a fresh machine (Rust toolchain with rustfmt/clippy, cargo-nextest
# if available, Python >= 3.9, Node.js >= 20 with npm, installed with apt when
# missing) and needs no running services: the tests start a fake OpenAI Admin
# API and the gateway in-process. Safe to run repeatedly.
#
# Environment:
#   PYTHON                  interpreter used to create .venv (default: python3)
#   GATEWAY_SKIP_SDK_TESTS  =1 skips the Python and Node SDK end-to-end tests
#                           (offline dev)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
VENV="$ROOT/.venv"
NODE_DIR="$ROOT/tests/node"

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_NO_INPUT=1
export PYTHONDONTWRITEBYTECODE=1
export NPM_CONFIG_UPDATE_NOTIFIER=false

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

# tests/node/node_modules with the official `openai` Node SDK pinned in
# tests/node/package-lock.json, for tests/sdk_node.rs.
step_node_env() {
    section "node: npm ci in tests/node (the official openai SDK)"
    local missing=()
    command -v node >/dev/null || missing+=(nodejs)
    command -v npm >/dev/null || missing+=(npm)
    if [ ${#missing[@]} -gt 0 ]; then
        [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || die "${missing[*]} missing: install Node.js >= 20 with npm"
        note "installing ${missing[*]} with apt"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    local major
    major="$(node -p 'process.versions.node.split(".")[0]')"
    [ "$major" -ge 20 ] || note "warning: node $(node --version) is older than the 20 the openai SDK supports"
    (cd "$NODE_DIR" && npm ci --no-audit --no-fund)
    local sdk
    sdk="$(cd "$NODE_DIR" && node -p 'require("openai/version").VERSION')"
    note "node $(node --version), npm $(npm --version), openai $sdk"
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
    section "cargo fmt --check (the crate and fuzz/)"
    cargo fmt --all -- --check
    cargo fmt --manifest-path fuzz/Cargo.toml -- --check
}

step_clippy() {
    section "cargo clippy --all-targets -- -D warnings"
    cargo clippy --quiet --all-targets -- -D warnings
}

# fuzz/ (cargo-fuzz targets, a workspace of its own): still compiles against
# the library. Plain `cargo check` on stable, so neither nightly nor
# cargo-fuzz is needed; libfuzzer-sys' build script compiles libFuzzer's C++
# with the machine's compiler. Shares the main target dir so the dependencies
# clippy already built are reused.
step_fuzz_build() {
    section "cargo check --manifest-path fuzz/Cargo.toml --bins"
    if ! command -v c++ >/dev/null; then
        [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || die "c++ missing: install g++ (libfuzzer-sys builds libFuzzer with it)"
        note "installing g++ with apt"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends g++ >/dev/null
    fi
    CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}" \
        cargo check --quiet --manifest-path fuzz/Cargo.toml --bins
}

step_tests() {
    export GATEWAY_TEST_PYTHON="$VENV/bin/python"
    if [ "${GATEWAY_SKIP_SDK_TESTS:-}" != 1 ] && [ ! -x "$GATEWAY_TEST_PYTHON" ]; then
        die "$GATEWAY_TEST_PYTHON missing: run the python_env step first"
    fi
    GATEWAY_TEST_NODE="$(command -v node || true)"
    export GATEWAY_TEST_NODE
    if [ "${GATEWAY_SKIP_SDK_TESTS:-}" != 1 ] && { [ -z "$GATEWAY_TEST_NODE" ] || [ ! -f "$NODE_DIR/node_modules/openai/package.json" ]; }; then
        die "node or tests/node/node_modules missing: run the node_env step first"
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
    node_env
    services
    fmt
    clippy
    fuzz_build
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
