#!/usr/bin/env bash
# Runs SecantusDB, a MongoDB-compatible server (MongoDB wire protocol on WiredTiger),
# for tests: no real mongod can be installed on this machine kind.
#
#   scripts/start-mongo.sh [start]   install (pinned, in a venv) if missing, start on a
#                                    free port with in-memory storage, wait until ready
#   scripts/start-mongo.sh stop      stop the server started by this script
#
# Environment: SECANTUS_PORT (default 0: a free port; fix it to restart a server where
# its clients expect it), SECANTUS_STORAGE (default :memory:; a directory keeps the
# data across restarts), SECANTUS_STATE_DIR (pid, port and log; one per server).
#
# The venv lives outside the clone ($SECANTUS_VENV, default /var/tmp/swift-secantus-venv)
# so a reused machine does not reinstall. `start` prints
# MONGODB_URI=mongodb://127.0.0.1:<PORT>/?directConnection=true&retryWrites=false as its
# last line (retryable writes make this server slow down as records accumulate).
set -euo pipefail

venv="${SECANTUS_VENV:-/var/tmp/swift-secantus-venv}"
state="${SECANTUS_STATE_DIR:-/var/tmp/swift-secantus}"
storage="${SECANTUS_STORAGE:-:memory:}"
port="${SECANTUS_PORT:-0}"
if ! [[ "$port" =~ ^[0-9]+$ ]] || ((port > 65535)); then
    echo "SECANTUS_PORT must be 0..65535, not '$port'" >&2
    exit 2
fi
version="0.7.0b3"
mkdir -p "$state"

stop() {
    if [ -f "$state/pid" ] && kill -0 "$(cat "$state/pid")" 2>/dev/null; then
        kill "$(cat "$state/pid")" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$(cat "$state/pid")" 2>/dev/null || break
            sleep 0.1
        done
    fi
    rm -f "$state/pid" "$state/port"
}

case "${1:-start}" in
stop)
    stop
    exit 0
    ;;
start) ;;
*)
    echo "usage: $0 [start|stop]" >&2
    exit 2
    ;;
esac

if [ -f "$state/pid" ] && kill -0 "$(cat "$state/pid")" 2>/dev/null && [ -f "$state/port" ]; then
    echo "MONGODB_URI=mongodb://127.0.0.1:$(cat "$state/port")/?directConnection=true&retryWrites=false"
    exit 0
fi

# Not `grep -q`: it would close the pipe early, pip would die of SIGPIPE, and pipefail
# would take that for a missing install (and reinstall on every start).
if [ ! -x "$venv/bin/secantusd-py" ] || ! "$venv/bin/pip" show SecantusDB 2>/dev/null | grep "^Version: $version$" >/dev/null; then
    echo "installing SecantusDB $version into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "SecantusDB==$version"
fi

log="$state/server.log"
: >"$log"
nohup "$venv/bin/secantusd-py" --host 127.0.0.1 --port "$port" --storage-path "$storage" >"$log" 2>&1 &
echo $! >"$state/pid"
for _ in $(seq 1 300); do
    listening=$(grep -oE 'listening on 127\.0\.0\.1:[0-9]+' "$log" | head -1 | cut -d: -f2 || true)
    if [ -n "$listening" ]; then
        echo "$listening" >"$state/port"
        echo "MONGODB_URI=mongodb://127.0.0.1:$listening/?directConnection=true&retryWrites=false"
        exit 0
    fi
    if ! kill -0 "$(cat "$state/pid")" 2>/dev/null; then
        echo "SecantusDB exited during start:" >&2
        cat "$log" >&2
        exit 1
    fi
    sleep 0.1
done
echo "SecantusDB did not report its port within 30 s:" >&2
cat "$log" >&2
exit 1
