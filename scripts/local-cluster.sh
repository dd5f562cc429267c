#!/usr/bin/env bash
# Three gateway replicas (by default) sharing one Redis, all on loopback: try what several
# replicas do (one rate-limit budget per client across the replicas; a write through one
# replica evicts the user on every replica) without a cluster.
#
#   OPENAI_ADMIN_KEY=sk-admin-... scripts/local-cluster.sh   # replicas in front of api.openai.com
#   scripts/local-cluster.sh --fake-upstream                 # in front of a local fake Admin API
#   scripts/local-cluster.sh --check [--fake-upstream]       # start, probe every replica, stop
#
# What it does:
#   1. builds the debug binary (cargo build --bin openai-admin-gateway; honours
#      CARGO_TARGET_DIR), and with --fake-upstream the bench_upstream example too;
#   2. starts redis-server on a free loopback port (installed with apt when missing and
#      running as root, as scripts/test.sh does), no persistence;
#   3. writes one config per replica into a temp dir: config/gateway.example.toml with
#      the listen addresses changed, [redis] added, shutdown_grace_secs = 5, and one extra
#      client "local-cluster" whose fresh key is printed (the example's own clients only
#      have hashes, so no key for them exists);
#   4. starts the replicas, waits until every /readyz answers, prints the URLs and the
#      client key, and streams the replicas' logs;
#   5. on Ctrl-C, SIGTERM or any exit (a replica that dies takes the rest down too),
#      stops everything it started and removes the temp dir.
#
# The admin key: the replicas read it from OPENAI_ADMIN_KEY, as the example config says
# (upstream.admin_key_env). With a wrong key everything still starts, and requests get
# 502 upstream_auth_failed from the gateway once the upstream refuses it. With
# --fake-upstream, nothing leaves the machine: examples/bench_upstream.rs runs on a free
# loopback port as the upstream (upstream.base_url = "http://127.0.0.1:PORT/v1"),
# accepting OPENAI_ADMIN_KEY (a made-up one when unset). It answers
# GET /v1/organization/users/{id} with a user carrying that id, echoes any POST back with
# 200 (so a POST of a user is a successful write that evicts it), and 404s the rest.
#
# Environment:
#   GATEWAY_PORTS    client ports, one per replica (default "8081 8082 8083")
#   ADMIN_PORTS      admin ports, same count      (default "9091 9092 9093")
#   RUST_LOG         the replicas' log filter     (default info)
# A port already in use is an error (pick others with the variables above).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"

die() { printf 'local-cluster: %s\n' "$*" >&2; exit 1; }
note() { printf 'local-cluster: %s\n' "$*"; }

FAKE=0 CHECK=0
for arg in "$@"; do
  case "$arg" in
    --fake-upstream) FAKE=1 ;;
    --check) CHECK=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $arg (see --help)" ;;
  esac
done

read -r -a PUBLIC <<<"${GATEWAY_PORTS:-8081 8082 8083}"
read -r -a ADMIN <<<"${ADMIN_PORTS:-9091 9092 9093}"
[ "${#PUBLIC[@]}" -ge 1 ] || die "GATEWAY_PORTS is empty"
[ "${#PUBLIC[@]}" = "${#ADMIN[@]}" ] || die "GATEWAY_PORTS and ADMIN_PORTS need the same number of ports"
N="${#PUBLIC[@]}"

# ------------------------------------------------------------------ helpers
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
  local p _
  for _ in $(seq 100); do
    p=$((20000 + RANDOM % 30000))
    if ! port_in_use "$p"; then echo "$p"; return 0; fi
  done
  die "found no free loopback port"
}

# http_status PORT PATH: the status code of GET PATH on 127.0.0.1:PORT (bash only).
http_status() {
  ( exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\n\r\n' "$2" "$1" >&3
    IFS=' ' read -r -t 2 _proto status _rest <&3 || exit 1
    echo "$status" ) 2>/dev/null
}

# ------------------------------------------------------------------ preconditions
for p in "${PUBLIC[@]}" "${ADMIN[@]}"; do
  [[ "$p" =~ ^[0-9]+$ ]] || die "port '$p' is not a number"
  if port_in_use "$p"; then
    die "127.0.0.1:$p is already in use; choose free ports with GATEWAY_PORTS=\"...\" ADMIN_PORTS=\"...\""
  fi
done
if [ "$(printf '%s\n' "${PUBLIC[@]}" "${ADMIN[@]}" | sort -u | wc -l)" != $((2 * N)) ]; then
  die "GATEWAY_PORTS and ADMIN_PORTS must all differ"
fi

if [ -z "${OPENAI_ADMIN_KEY:-}" ]; then
  if [ "$FAKE" = 1 ]; then
    OPENAI_ADMIN_KEY="sk-admin-local-fake-$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')"
  else
    die "OPENAI_ADMIN_KEY is not set. The replicas forward to api.openai.com with the
organization's admin key from that variable (config/gateway.example.toml: admin_key_env).
Set it, or run with --fake-upstream to try everything against a local fake Admin API."
  fi
fi
export OPENAI_ADMIN_KEY

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    note "installing redis-server with apt"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null
  else
    die "redis-server missing: install it (apt-get install redis-server)"
  fi
fi
command -v cargo >/dev/null || die "cargo not found (a Rust toolchain is needed to build the gateway)"

# ------------------------------------------------------------------ build
build=(cargo build --bin openai-admin-gateway)
[ "$FAKE" = 0 ] || build+=(--example bench_upstream)
note "building: ${build[*]}"
"${build[@]}"
TARGET="${CARGO_TARGET_DIR:-target}"
case "$TARGET" in /*) ;; *) TARGET="$ROOT/$TARGET" ;; esac
BIN="$TARGET/debug/openai-admin-gateway"
FAKE_BIN="$TARGET/debug/examples/bench_upstream"
[ -x "$BIN" ] || die "$BIN was not built"

# ------------------------------------------------------------------ start, and stop on exit
WORK="$(mktemp -d "${TMPDIR:-/tmp}/openai-admin-gateway-cluster.XXXXXX")"
PIDS=() GATEWAY_PIDS=()
cleanup() {
  local pid alive
  trap - EXIT
  trap '' INT TERM   # a second Ctrl-C must not cut the clean-up short
  for pid in "${GATEWAY_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  # The replicas drain for at most shutdown_grace_secs (5); give them a little more.
  for _ in $(seq 70); do
    alive=0
    for pid in "${GATEWAY_PIDS[@]}"; do if kill -0 "$pid" 2>/dev/null; then alive=1; fi; done
    [ "$alive" = 1 ] || break
    sleep 0.1
  done
  for pid in "${GATEWAY_PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      note "replica pid $pid did not stop in time: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${GATEWAY_PIDS[@]}" "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
  note "stopped everything it started (${#GATEWAY_PIDS[@]} replicas, ${#PIDS[@]} other processes)"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Redis: loopback only, nothing written to disk.
REDIS_PORT="$(free_port)"
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
  --dir "$WORK" --daemonize no --loglevel warning >"$WORK/redis.log" 2>&1 &
PIDS+=("$!")
for _ in $(seq 50); do
  [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && break
  kill -0 "${PIDS[-1]}" 2>/dev/null || { cat "$WORK/redis.log" >&2; die "redis-server did not start"; }
  sleep 0.1
done
[ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] || die "redis-server on 127.0.0.1:$REDIS_PORT does not answer PING"
REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"

UPSTREAM="https://api.openai.com/v1"
if [ "$FAKE" = 1 ]; then
  FAKE_PORT="$(free_port)"
  "$FAKE_BIN" --listen "127.0.0.1:$FAKE_PORT" --admin-key "$OPENAI_ADMIN_KEY" >"$WORK/fake-upstream.log" 2>&1 &
  PIDS+=("$!")
  for _ in $(seq 50); do port_in_use "$FAKE_PORT" && break; sleep 0.1; done
  port_in_use "$FAKE_PORT" || { cat "$WORK/fake-upstream.log" >&2; die "the fake upstream did not start"; }
  UPSTREAM="http://127.0.0.1:$FAKE_PORT/v1"
fi

# One client key for this run, valid on every replica.
keyout="$("$BIN" new-key --prefix oag_local_)"
CLIENT_KEY="$(printf '%s\n' "$keyout" | sed -n 's/^key: *//p')"
CLIENT_HASH="$(printf '%s\n' "$keyout" | sed -n 's/^key_sha256: *//p')"
[ -n "$CLIENT_KEY" ] && [ -n "$CLIENT_HASH" ] || die "could not parse the output of new-key: $keyout"

EXAMPLE="$ROOT/config/gateway.example.toml"
for i in $(seq 0 $((N - 1))); do
  cfg="$WORK/gateway-$((i + 1)).toml"
  sed -E \
    -e "s|^listen = .*|listen = \"127.0.0.1:${PUBLIC[i]}\"|" \
    -e "s|^admin_listen = .*|admin_listen = \"127.0.0.1:${ADMIN[i]}\"|" \
    -e "s|^shutdown_grace_secs = .*|shutdown_grace_secs = 5|" \
    -e "s|^base_url = .*|base_url = \"$UPSTREAM\"|" \
    "$EXAMPLE" >"$cfg"
  for want in "listen = \"127.0.0.1:${PUBLIC[i]}\"" "admin_listen = \"127.0.0.1:${ADMIN[i]}\"" "base_url = \"$UPSTREAM\""; do
    grep -qF "$want" "$cfg" || die "could not set '$want' in a copy of $EXAMPLE (has its layout changed?)"
  done
  cat >>"$cfg" <<EOF

# --- added by scripts/local-cluster.sh ---
[redis]
url = "$REDIS_URL"
key_prefix = "openai-admin-gateway:ratelimit:"
timeout_ms = 50

# Full access; one budget of 600/min (burst 20) shared by all the replicas.
[[clients]]
name = "local-cluster"
key_sha256 = "$CLIENT_HASH"
rate_limit = { requests_per_minute = 600, burst = 20 }
EOF
  "$BIN" check-config --config "$cfg" >"$WORK/check-$((i + 1)).log" 2>&1 \
    || { cat "$WORK/check-$((i + 1)).log" >&2; die "the derived config for replica $((i + 1)) is invalid"; }
done

for i in $(seq 0 $((N - 1))); do
  RUST_LOG="${RUST_LOG:-info}" NO_COLOR=1 "$BIN" --config "$WORK/gateway-$((i + 1)).toml" \
    >"$WORK/gateway-$((i + 1)).log" 2>&1 &
  GATEWAY_PIDS+=("$!")
done

# Every replica ready (its listeners bound), or a clear error with its log.
for i in $(seq 0 $((N - 1))); do
  ok=0
  for _ in $(seq 100); do
    if [ "$(http_status "${ADMIN[i]}" /readyz)" = 200 ]; then ok=1; break; fi
    kill -0 "${GATEWAY_PIDS[i]}" 2>/dev/null || break
    sleep 0.1
  done
  if [ "$ok" != 1 ]; then
    tail -n 30 "$WORK/gateway-$((i + 1)).log" >&2
    die "replica $((i + 1)) (127.0.0.1:${PUBLIC[i]}, admin ${ADMIN[i]}) did not become ready"
  fi
done

printf '\nopenai-admin-gateway local cluster: %s replicas sharing %s\n' "$N" "$REDIS_URL"
for i in $(seq 0 $((N - 1))); do
  printf '  replica %s   base URL http://127.0.0.1:%s/v1   admin http://127.0.0.1:%s\n' "$((i + 1))" "${PUBLIC[i]}" "${ADMIN[i]}"
done
printf '  upstream    %s%s\n' "$UPSTREAM" "$([ "$FAKE" = 1 ] && echo '   (fake: examples/bench_upstream.rs)')"
printf '  client key  export GATEWAY_KEY=%s\n' "$CLIENT_KEY"
printf '              (client "local-cluster": every method and path, 600/min burst 20 across all replicas)\n'
printf '  admin       /healthz /readyz /metrics, DELETE /cache/users/ID, DELETE /cache (no key)\n\n'

if [ "$CHECK" = 1 ]; then
  rc=0
  for i in $(seq 0 $((N - 1))); do
    h="$(http_status "${ADMIN[i]}" /healthz || true)"
    r="$(http_status "${ADMIN[i]}" /readyz || true)"
    # One authenticated request through each replica (a user with the fake upstream).
    a="$( ( exec 3<>"/dev/tcp/127.0.0.1/${PUBLIC[i]}" || exit 1
          printf 'GET /v1/organization/users/user_local_check HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\nConnection: close\r\n\r\n' "$CLIENT_KEY" >&3
          IFS=' ' read -r -t 10 _p s _r <&3 || exit 1; echo "$s" ) 2>/dev/null || true)"
    printf 'check: replica %s  /healthz %s  /readyz %s  GET a user %s\n' "$((i + 1))" "${h:-none}" "${r:-none}" "${a:-none}"
    if [ "$h" != 200 ] || [ "$r" != 200 ] || [ -z "$a" ]; then rc=1; fi
    if [ "$FAKE" = 1 ] && [ "$a" != 200 ]; then rc=1; fi
  done
  [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] || { echo "check: redis does not answer PING"; rc=1; }
  if [ "$rc" = 0 ]; then note "check passed: stopping"; else note "check FAILED: stopping"; fi
  exit "$rc"
fi

note "replica logs follow; Ctrl-C stops everything"
for i in $(seq 0 $((N - 1))); do
  tail -n +1 -F "$WORK/gateway-$((i + 1)).log" 2>/dev/null > >(sed -u "s/^/[replica $((i + 1))] /") &
  PIDS+=("$!")
done
# Until Ctrl-C, or until a replica exits on its own (then everything stops).
while :; do
  for i in $(seq 0 $((N - 1))); do
    if ! kill -0 "${GATEWAY_PIDS[i]}" 2>/dev/null; then
      die "replica $((i + 1)) exited; stopping the others"
    fi
  done
  sleep 1
done
