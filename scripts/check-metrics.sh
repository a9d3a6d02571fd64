#!/usr/bin/env bash
# Checks what operators scrape and alert on: starts a node (on RabbitMQ when
# RABBITMQ_URL is set, so the dead-letter gauges exist), runs one order through it,
# then `promtool check metrics` on its /metrics, `promtool check rules` and
# `promtool test rules` on ops/prometheus, and checks that every metric the Grafana
# dashboard and the alert rules use is in the node's exposition.
#
# Environment: CARGO_TARGET_DIR (default /var/tmp/swiftlogistics-target), SWIFT_BIN
# (use this binary instead of building one), RABBITMQ_URL.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/swiftlogistics-target}"
log() { echo "check-metrics: $*" >&2; }

command -v promtool >/dev/null || { log "promtool is missing (Debian package prometheus)"; exit 1; }
promtool check rules ops/prometheus/alerts.yml
(cd ops/prometheus && promtool test rules alerts.test.yml)

bin="${SWIFT_BIN:-}"
if [ -z "$bin" ]; then
    cargo build --locked --quiet
    bin="$CARGO_TARGET_DIR/debug/swiftlogistics"
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
data=$(mktemp -d)
node_log="$data/node.log"
export SWIFT__STORE__PATH="$data/store" SWIFT__AUTH__ADMIN_PASSWORD=check-metrics-admin
export SWIFT__SIMULATORS__CMS_BIND=127.0.0.1:0 SWIFT__SIMULATORS__ROS_BIND=127.0.0.1:0
export SWIFT__SIMULATORS__WMS_BIND=127.0.0.1:0 SWIFT__SIMULATORS__CONTROL_BIND=127.0.0.1:0
if [ -n "${RABBITMQ_URL:-}" ]; then
    export SWIFT__BUS__KIND=amqp SWIFT__BUS__NAMESPACE="check-metrics-$$"
fi
"$bin" --bind "127.0.0.1:$port" serve >"$node_log" 2>&1 &
node=$!
trap 'kill "$node" 2>/dev/null || true; wait "$node" 2>/dev/null || true; rm -rf "$data"' EXIT
base="http://127.0.0.1:$port"
for _ in $(seq 1 120); do
    curl -sf "$base/health" >/dev/null && break
    kill -0 "$node" 2>/dev/null || { cat "$node_log"; log "the node died"; exit 1; }
    sleep 0.5
done

json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
account='{"name":"Metrics Check","email":"metrics-check@example.com","password":"correct-horse-battery"}'
# Registration answers 202 either way; the token comes from logging in.
curl -sf "$base/api/auth/register" -H 'content-type: application/json' -d "$account" >/dev/null
token=$(curl -sf "$base/api/auth/login" -H 'content-type: application/json' -d "$account" | json '["token"]')
order=$(curl -sf "$base/api/orders" -H "authorization: Bearer $token" -H 'content-type: application/json' \
    -d '{"pickupLocation":{"lat":40.7,"lng":-74.0,"address":"1 A St"},"deliveryAddress":{"lat":40.8,"lng":-73.9,"address":"2 B St"},"packageDetails":{"weight":1.5,"description":"Box","fragile":false}}' \
    | json '["orderId"]')
for _ in $(seq 1 120); do
    status=$(curl -sf "$base/api/orders/$order" -H "authorization: Bearer $token" | json '["status"]')
    [ "$status" = READY_FOR_DELIVERY ] && break
    sleep 0.5
done
[ "$status" = READY_FOR_DELIVERY ] || { log "order $order stuck at $status"; exit 1; }
sleep 3 # a telemetry tick sets the mailbox gauges

exposition="$data/metrics.txt"
curl -sf "$base/metrics" >"$exposition"
promtool check metrics <"$exposition"

missing=0
for name in $(grep -ohE '\b(swift|process)_[a-z_]+' ops/grafana/*.json ops/prometheus/alerts.yml | sort -u); do
    if ! grep -qE "^${name}(\{| )" "$exposition"; then
        log "$name is used by a dashboard or rule but not exported"
        missing=1
    fi
done
[ "$missing" = 0 ] || exit 1
log "exposition, rules and dashboard agree ($(grep -c '^# TYPE' "$exposition") metrics)"
