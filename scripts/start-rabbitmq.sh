#!/usr/bin/env bash
# Runs a RabbitMQ broker for development and tests, without systemd and as root.
#
#   scripts/start-rabbitmq.sh [start] [PORT]   install if missing, start, wait until ready
#   scripts/start-rabbitmq.sh stop [PORT]      graceful shutdown
#   scripts/start-rabbitmq.sh kill [PORT]      kill -9 (an outage, for resilience tests)
#   scripts/start-rabbitmq.sh status [PORT]    exit 0 when the broker answers AMQP
#   scripts/start-rabbitmq.sh cluster PORT...  fresh brokers on PORT... joined into one
#                                              RabbitMQ cluster (stop or kill each by port)
#
# PORT defaults to $RABBITMQ_PORT, else 5672. Each port is its own broker (node
# rabbit<PORT>@localhost) with its state under $RABBITMQ_STATE_DIR, default
# /var/tmp/swift-rabbitmq-<PORT>, so several brokers can run side by side and keep
# their durable queues across restarts (RABBITMQ_FRESH=1 starts a broker that is not
# running from an empty state instead). `start` is idempotent and prints
# RABBITMQ_URL=amqp://guest:guest@127.0.0.1:<PORT>/%2f as its last line; `cluster`
# prints every broker's URL in that line, separated by commas (what the node takes).
#
# Why the odd invocation: the /usr/sbin wrappers switch user and use another Erlang
# cookie (rabbitmqctl then hangs), so we call /usr/lib/rabbitmq/bin directly with
# HOME set to the state dir, where the cookie lives.
set -euo pipefail

command="start"
case "${1:-}" in
start | stop | kill | status)
    command="$1"
    shift
    ;;
cluster)
    shift
    (($# >= 2)) || {
        echo "usage: $0 cluster PORT PORT..." >&2
        exit 2
    }
    unset RABBITMQ_STATE_DIR # each member keeps its own default dir
    # One Erlang cookie for all: brokers only cluster with peers that share it.
    cookie="$(od -An -N16 -tx1 /dev/urandom | tr -dc '0-9a-f' | tr 'a-f' 'A-F')"
    pids=()
    for p in "$@"; do
        RABBITMQ_FRESH=1 RABBITMQ_COOKIE="$cookie" "$0" start "$p" >/dev/null &
        pids+=("$!")
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
    first="$1"
    shift
    for p in "$@"; do
        # Any state dir holds the shared cookie; rabbitmqctl reads it from HOME.
        for step in stop_app "join_cluster rabbit$first@localhost" start_app; do
            # shellcheck disable=SC2086
            HOME="/var/tmp/swift-rabbitmq-$p" ERL_EPMD_ADDRESS=127.0.0.1 timeout 60 \
                /usr/lib/rabbitmq/bin/rabbitmqctl -q -n "rabbit$p@localhost" $step >&2
        done
        echo "start-rabbitmq: rabbit$p joined rabbit$first" >&2
    done
    urls=""
    for p in "$first" "$@"; do urls="$urls${urls:+,}amqp://guest:guest@127.0.0.1:$p/%2f"; done
    echo "RABBITMQ_URL=$urls"
    exit 0
    ;;
esac
port="${1:-${RABBITMQ_PORT:-5672}}"
if ! [[ "$port" =~ ^[0-9]+$ ]] || ((port < 1 || port > 45535)); then
    echo "usage: $0 [start|stop|kill|status] [PORT]  (PORT 1..45535)" >&2
    exit 2
fi

state_dir="${RABBITMQ_STATE_DIR:-/var/tmp/swift-rabbitmq-$port}"
rabbit_bin="/usr/lib/rabbitmq/bin"
ready_timeout_secs="${RABBITMQ_READY_TIMEOUT:-60}"

export HOME="$state_dir"
export RABBITMQ_NODENAME="rabbit$port@localhost"
export RABBITMQ_NODE_IP_ADDRESS="127.0.0.1"
export RABBITMQ_NODE_PORT="$port"
# The inter-node port, kept apart per broker (5672 gets the usual 25672).
export RABBITMQ_DIST_PORT="$((port + 20000))"
export RABBITMQ_MNESIA_BASE="$state_dir/mnesia"
export RABBITMQ_LOG_BASE="$state_dir/log"
export RABBITMQ_PID_FILE="$state_dir/rabbit.pid"
export RABBITMQ_CONFIG_FILE="$state_dir/rabbitmq.conf"
export RABBITMQ_ENABLED_PLUGINS_FILE="$state_dir/enabled_plugins"
export ERL_EPMD_ADDRESS="127.0.0.1"

log() { echo "start-rabbitmq: $*" >&2; }

# True when something on the port answers the AMQP 0-9-1 protocol header with a frame.
answers_amqp() {
    timeout 3 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$0" || exit 1
        printf "AMQP\x00\x00\x09\x01" >&3
        first=$(head -c 1 <&3 | od -An -tx1 | tr -d " \n")
        [ "$first" = "01" ]
    ' "$port" 2>/dev/null
}

broker_pid() {
    [ -f "$RABBITMQ_PID_FILE" ] || return 1
    local pid
    pid="$(tr -dc '0-9' <"$RABBITMQ_PID_FILE")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    # A pid file left by a crash or a reboot may name another process by now (or a
    # zombie, whose environment is empty): only this broker's Erlang VM counts.
    tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ" |
        grep -x "RABBITMQ_NODENAME=$RABBITMQ_NODENAME" >/dev/null || return 1
    echo "$pid"
}

# Waits, at most 30 s, until the process has exited (or is a zombie nobody reaps).
wait_gone() {
    local pid="$1" deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]; do
        if ((SECONDS >= deadline)); then
            log "process $pid still there after 30s"
            return 1
        fi
        sleep 0.05
    done
}

install_broker() {
    [ -x "$rabbit_bin/rabbitmq-server" ] && return 0
    log "installing rabbitmq-server with apt"
    # A private archive dir: the image clears apt's cache, and a concurrent apt run
    # could delete our .deb files mid-install.
    mkdir -p /tmp/apt-rmq/partial
    export DEBIAN_FRONTEND=noninteractive
    timeout 300 apt-get -o Dir::Cache::archives=/tmp/apt-rmq update -qq >&2
    timeout 600 apt-get -o Dir::Cache::archives=/tmp/apt-rmq install -y -qq \
        --no-install-recommends rabbitmq-server >&2
    [ -x "$rabbit_bin/rabbitmq-server" ] || {
        log "rabbitmq-server did not install"
        exit 1
    }
}

write_config() {
    mkdir -p "$state_dir" "$RABBITMQ_MNESIA_BASE" "$RABBITMQ_LOG_BASE"
    # No plugins: management and prometheus would need ports of their own per broker.
    echo "[]." >"$RABBITMQ_ENABLED_PLUGINS_FILE"
    cat >"$RABBITMQ_CONFIG_FILE" <<EOF
listeners.tcp.default = $port
loopback_users.guest = true
log.file.level = warning
log.console = false
EOF
}

start_broker() {
    if answers_amqp; then
        if broker_pid >/dev/null; then
            log "broker rabbit$port already running"
        else
            log "something already answers AMQP on port $port; using it"
        fi
        echo "RABBITMQ_URL=amqp://guest:guest@127.0.0.1:$port/%2f"
        return 0
    fi
    install_broker
    local stale
    if [ "${RABBITMQ_FRESH:-}" = 1 ] && stale="$(broker_pid)"; then
        # Up but not answering: still recovering a previous run's queues, which
        # can take minutes after a crash. A fresh start does not wait for it.
        log "rabbit$port is not answering; killing it to start afresh"
        kill -KILL "$stale" 2>/dev/null || true
        wait_gone "$stale"
    fi
    if ! broker_pid >/dev/null; then
        # RABBITMQ_FRESH=1 starts from nothing: a cluster member so that it joins no
        # stale cluster, CI so that it never waits on a crashed run's queues.
        if [ "${RABBITMQ_FRESH:-}" = 1 ]; then rm -rf "$state_dir"; fi
        write_config
        if [ -n "${RABBITMQ_COOKIE:-}" ]; then
            rm -f "$state_dir/.erlang.cookie"
            printf '%s' "$RABBITMQ_COOKIE" >"$state_dir/.erlang.cookie"
            chmod 400 "$state_dir/.erlang.cookie"
        fi
        log "starting rabbit$port (state in $state_dir)"
        "$rabbit_bin/rabbitmq-server" -detached >&2
    fi
    local deadline=$((SECONDS + ready_timeout_secs))
    until answers_amqp; do
        if ((SECONDS >= deadline)); then
            log "broker not ready after ${ready_timeout_secs}s; see $RABBITMQ_LOG_BASE"
            exit 1
        fi
        sleep 0.5
    done
    log "rabbit$port ready"
    echo "RABBITMQ_URL=amqp://guest:guest@127.0.0.1:$port/%2f"
}

stop_broker() {
    local pid
    if ! pid="$(broker_pid)"; then
        log "rabbit$port is not running"
        return 0
    fi
    if ! timeout 30 "$rabbit_bin/rabbitmqctl" -n "$RABBITMQ_NODENAME" shutdown >&2; then
        log "rabbitmqctl shutdown failed; sending SIGTERM"
        kill -TERM "$pid" 2>/dev/null || true
    fi
    local deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            log "rabbit$port still running after 30s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
    log "rabbit$port stopped"
}

kill_broker() {
    local pid
    if ! pid="$(broker_pid)"; then
        log "rabbit$port is not running"
        return 0
    fi
    kill -KILL "$pid"
    wait_gone "$pid"
    log "rabbit$port killed"
}

case "$command" in
start) start_broker ;;
stop) stop_broker ;;
kill) kill_broker ;;
status) answers_amqp ;;
esac
