#!/usr/bin/env bash
# Browser tests of the tracking page (/) and the SRE page (/sre) in headless Chromium.
#
# Installs Debian's chromium and chromium-driver if missing, installs playwright-core
# from tests/browser/package-lock.json, builds the node if needed, starts it on free
# loopback ports with a fresh data directory and a known admin password, runs
# `node --test` in tests/browser, saves screenshots to $SCREENSHOT_DIR (default
# ./screenshots) and stops the node. The exit code is the tests' result.
#
# Environment: CARGO_TARGET_DIR (default /var/tmp/swiftlogistics-target),
# SCREENSHOT_DIR, SWIFT_BIN (use this binary instead of building one). Arguments go
# to `node --test`, e.g. `scripts/browser-tests.sh --test-name-pattern=phone`.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/swiftlogistics-target}"
SCREENSHOT_DIR="${SCREENSHOT_DIR:-$repo/screenshots}"
mkdir -p "$SCREENSHOT_DIR"
SCREENSHOT_DIR=$(cd "$SCREENSHOT_DIR" && pwd)
START_TIMEOUT_SECS=120

log() { echo "browser-tests: $*" >&2; }

# --- Chromium -----------------------------------------------------------------
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    log "installing chromium and chromium-driver"
    sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q chromium chromium-driver
fi
/usr/bin/chromium --version >&2

# --- playwright-core ----------------------------------------------------------
log "installing the test dependencies (npm ci)"
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)

# --- the node -----------------------------------------------------------------
if [ -n "${SWIFT_BIN:-}" ]; then
    bin="$SWIFT_BIN"
else
    log "building the node (cargo build)"
    cargo build --locked --bin swiftlogistics
    bin="$CARGO_TARGET_DIR/debug/swiftlogistics"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/swift-browser-tests.XXXXXX")
node_log="$work/node.log"
node_pid=""
# Runs from the EXIT trap: stops the node (TERM, then KILL after 10 s) and removes
# its data.
# shellcheck disable=SC2317
cleanup() {
    if [ -n "$node_pid" ] && kill -0 "$node_pid" 2>/dev/null; then
        kill -TERM "$node_pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$node_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$node_pid" 2>/dev/null || true
        wait "$node_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

admin_email="admin@swiftlogistics.local"
admin_password="browser-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"

log "starting the node (data in $work/data)"
# Every port is chosen by the OS. The tests register and sign in many times from one
# address, so the per-address budgets (5 logins a minute, 3 registrations an hour,
# 100 anonymous requests per 15 minutes by default) are raised for this node.
env \
    SWIFT__HTTP__BIND=127.0.0.1:0 \
    SWIFT__SIMULATORS__ENABLED=true \
    SWIFT__SIMULATORS__CMS_BIND=127.0.0.1:0 \
    SWIFT__SIMULATORS__ROS_BIND=127.0.0.1:0 \
    SWIFT__SIMULATORS__WMS_BIND=127.0.0.1:0 \
    SWIFT__SIMULATORS__CONTROL_BIND=127.0.0.1:0 \
    SWIFT__STORE__KIND=embedded \
    SWIFT__STORE__PATH="$work/data" \
    SWIFT__BUS__KIND=local \
    SWIFT__AUTH__ADMIN_EMAIL="$admin_email" \
    SWIFT__AUTH__ADMIN_PASSWORD="$admin_password" \
    SWIFT__AUTH__LOGIN_PER_MINUTE=600 \
    SWIFT__AUTH__REGISTER_PER_HOUR=10000 \
    SWIFT__RATE_LIMIT__ANONYMOUS_PER_WINDOW=1000000 \
    SWIFT__RATE_LIMIT__USER_PER_WINDOW=1000000 \
    SWIFT__LOG__FORMAT=json \
    "$bin" serve >"$node_log" 2>&1 &
node_pid=$!

banner="SwiftLogistics is running: API and pages at "
base_url=""
for _ in $(seq 1 $((START_TIMEOUT_SECS * 10))); do
    if ! kill -0 "$node_pid" 2>/dev/null; then
        log "the node exited before it was ready:"
        cat "$node_log" >&2
        exit 1
    fi
    line=$(grep -m1 -F "$banner" "$node_log" || true)
    if [ -n "$line" ]; then
        base_url=${line#*"$banner"}
        base_url=${base_url%%[[:space:]]*}
        break
    fi
    sleep 0.1
done
if [ -z "$base_url" ]; then
    log "the node did not print its address within ${START_TIMEOUT_SECS} s:"
    cat "$node_log" >&2
    exit 1
fi
# "  simulator control API: 127.0.0.1:PORT"
control=$(grep -m1 -o 'simulator control API: [0-9.:]*' "$node_log" | awk '{print $4}' || true)
if [ -z "$control" ]; then
    log "the node did not print the simulators' control address:"
    cat "$node_log" >&2
    exit 1
fi
log "node at $base_url, simulator control at http://$control"

# --- the tests ----------------------------------------------------------------
status=0
(
    cd tests/browser
    BASE_URL="$base_url" \
        ADMIN_EMAIL="$admin_email" \
        ADMIN_PASSWORD="$admin_password" \
        SIM_CONTROL_URL="http://$control" \
        SCREENSHOT_DIR="$SCREENSHOT_DIR" \
        CHROMIUM_PATH=/usr/bin/chromium \
        node --test --test-concurrency=1 --test-reporter=spec --test-timeout=180000 "$@" \
        tracking.test.mjs sre.test.mjs
) || status=$?

if [ "$status" != 0 ]; then
    log "tests failed; the node's last log lines:"
    tail -n 60 "$node_log" >&2
fi
log "screenshots in $SCREENSHOT_DIR"
exit "$status"
