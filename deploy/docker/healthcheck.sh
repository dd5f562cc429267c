#!/bin/bash
# Container HEALTHCHECK for openai-admin-gateway: `GET /healthz` on the admin listener
# must answer 200. Uses only bash's /dev/tcp, so the image needs no curl or wget, and
# the gateway needs no health subcommand (it has none).
#   GATEWAY_ADMIN_PORT  admin port (default 9090, the port in deploy/docker/gateway.toml)
#   GATEWAY_ADMIN_HOST  address to connect to (default 127.0.0.1: the check runs inside
#                       the container's network namespace, so 0.0.0.0:9090 is reachable)
# Exit 0 = healthy, 1 = unhealthy. Docker's --timeout bounds a hanging connect.
set -u
host="${GATEWAY_ADMIN_HOST:-127.0.0.1}"
port="${GATEWAY_ADMIN_PORT:-9090}"

exec 3<>"/dev/tcp/${host}/${port}" || exit 1
printf 'GET /healthz HTTP/1.1\r\nHost: %s:%s\r\nConnection: close\r\n\r\n' "$host" "$port" >&3 || exit 1
# Status line: "HTTP/1.1 200 OK"
IFS=' ' read -r -t 2 _proto status _rest <&3 || exit 1
exec 3<&-
[ "$status" = "200" ] || exit 1
