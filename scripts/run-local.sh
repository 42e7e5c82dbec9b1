#!/usr/bin/env bash
# `make run`: Redis (unless REDIS_URL names one that already answers), one worker and
# the proxy, in the foreground.
#
# Ctrl-C, SIGTERM or a closed terminal (SIGHUP) stops them in order, so nothing accepted
# is lost: the proxy first (it stops accepting and answers what it holds while the worker
# still works), then the worker (it finishes what it holds), then Redis. A second Ctrl-C
# stops everything at once. Either way nothing this script started is left running.
set -euo pipefail
cd "$(dirname "$0")/.."

export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
export PORT="${PORT:-8080}"
export BIND_HOST="${BIND_HOST:-127.0.0.1}"
export METRICS_PORT="${METRICS_PORT:-9100}"
# The proxy's own /metrics port (its METRICS_PORT), apart from the worker's.
export PROXY_METRICS_PORT="${PROXY_METRICS_PORT:-9101}"
py=.venv/bin/python
data_dir="${REDIS_DATA_DIR:-.data/redis}"

# Each child runs in its own session (setsid), so the terminal's Ctrl-C reaches only this
# script, which decides the order; each child's process group (gunicorn's master and its
# workers) can then be killed as one.
proxy_pid=""
worker_pid=""
redis_pid=""

stop_now() {  # a second signal while stopping: kill every group, wait for them, leave nothing
    trap '' INT TERM HUP
    echo "stopping everything at once" >&2
    for pid in "$proxy_pid" "$worker_pid" "$redis_pid"; do
        [ -n "$pid" ] && kill -KILL -- "-$pid" 2>/dev/null || true
    done
    for pid in "$proxy_pid" "$worker_pid" "$redis_pid"; do
        [ -n "$pid" ] && wait "$pid" 2>/dev/null || true
    done
    echo "stopped"
    exit 137
}

stop_in_order() {  # PID WHAT: SIGTERM, then wait for it; the process bounds its own grace period
    local pid="$1"
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    echo "stopping $2" >&2
    # wait returns early when a trapped signal arrives; stop_now then takes over and exits.
    # 127: no longer our child (reaped already), so stop waiting even if its pid was reused.
    while kill -0 "$pid" 2>/dev/null; do
        wait "$pid" 2>/dev/null && break
        [ $? -eq 127 ] && break
    done
}

stop_all() {
    local status=$?
    trap - EXIT
    trap stop_now INT TERM HUP
    stop_in_order "$proxy_pid" "the proxy: no new requests; it answers those it holds (Ctrl-C again stops everything at once)"
    stop_in_order "$worker_pid" "the worker: it finishes what it holds"
    stop_in_order "$redis_pid" "Redis"
    echo "stopped"
    exit "$status"
}
trap stop_all EXIT
trap 'exit 129' HUP
trap 'exit 130' INT TERM

port_free() {  # HOST PORT: true when nothing listens there (binding is the only sure test)
    # SO_REUSEADDR, as every server sets it: connections of a run that just ended linger in
    # TIME-WAIT for a minute and would otherwise look like a listener.
    "$py" - "$1" "$2" <<'PY' 2>/dev/null
import socket, sys
with socket.socket() as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], int(sys.argv[2])))
PY
}

refuse_taken_port() {  # PORT VARIABLE WHAT
    port_free "$BIND_HOST" "$1" && return 0
    cat >&2 <<MSG
Port $1 ($3) is already in use, so nothing was started.
  See what holds it:  ss -ltnp 'sport = :$1'   (a 'make run' left running? stop that process)
  Or use another one: $2=<free port> make run
MSG
    exit 1
}

# Which Redis answers at REDIS_URL: "none", "ours PID" (one a 'make run' started on this
# data folder and never stopped) or "other".
redis_state() {
    "$py" - "$data_dir" <<'PY' 2>/dev/null || echo none
import os, sys, redis
client = redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=1, socket_connect_timeout=1)
try:
    client.ping()
except redis.RedisError:
    print("none")
    raise SystemExit
try:
    served_dir = client.config_get("dir").get("dir", "")
except redis.RedisError:  # CONFIG renamed or forbidden: not one of ours
    served_dir = ""
ours = served_dir and os.path.realpath(served_dir) == os.path.realpath(sys.argv[1])
print(f"ours {client.info('server')['process_id']}" if ours else "other")
PY
}

read -r redis_host redis_port < <("$py" -c '
import os
from urllib.parse import urlsplit
u = urlsplit(os.environ["REDIS_URL"])
print(u.hostname or "", u.port or 6379)')

refuse_taken_port "$PORT" PORT "the proxy"
refuse_taken_port "$METRICS_PORT" METRICS_PORT "the worker's HTTP port"
refuse_taken_port "$PROXY_METRICS_PORT" PROXY_METRICS_PORT "the proxy's metrics port"
read -r state orphan_pid < <(redis_state)
case "$state" in
ours)
    cat >&2 <<MSG
A Redis started by an earlier 'make run' is still running on ${redis_host}:${redis_port}
(pid $orphan_pid, data in $data_dir): that run did not stop it, so nothing was started.
  Stop it, then run again:  kill $orphan_pid
MSG
    exit 1
    ;;
other)
    echo "using the Redis that answers at ${redis_host}:${redis_port} (not started here, so left running at the end)"
    ;;
none)
    if [[ "$redis_host" != "localhost" && "$redis_host" != 127.* ]]; then
        echo "REDIS_URL points at ${redis_host}:${redis_port}, which does not answer" >&2
        exit 1
    fi
    refuse_taken_port "$redis_port" REDIS_URL "Redis, from REDIS_URL; it does not answer as Redis"
    mkdir -p "$data_dir"
    # AOF with fsync every second: queued requests survive a Redis restart.
    setsid redis-server --bind 127.0.0.1 --port "$redis_port" --dir "$data_dir" \
        --appendonly yes --appendfsync everysec --save "" --loglevel warning &
    redis_pid=$!
    for _ in $(seq 50); do [ "$(redis_state)" != none ] && break; sleep 0.1; done
    [ "$(redis_state)" != none ] || { echo "redis-server did not start on port $redis_port" >&2; exit 1; }
    echo "redis-server on ${redis_host}:${redis_port}, data in $data_dir"
    ;;
esac

setsid "$py" -m app.worker &
worker_pid=$!
METRICS_PORT="$PROXY_METRICS_PORT" setsid .venv/bin/gunicorn -c app/proxy/gunicorn.conf.py &
proxy_pid=$!

answers() {  # URL
    "$py" -c 'import sys, urllib.request as u; u.urlopen(sys.argv[1], timeout=1)' "$1" >/dev/null 2>&1
}
# Ready = the processes started here are alive and both answer; the ports were free
# before they started, so nothing else can be answering in their place.
ready=""
for _ in $(seq 300); do
    for pid in "$worker_pid" "$proxy_pid"; do
        kill -0 "$pid" 2>/dev/null || { echo "a process exited before it was ready; see its log above" >&2; exit 1; }
    done
    if answers "http://127.0.0.1:${PORT}/readyz" && answers "http://127.0.0.1:${METRICS_PORT}/readyz"; then
        ready=yes
        break
    fi
    sleep 0.1
done
[ -n "$ready" ] || { echo "the proxy and the worker did not become ready within 30 s; see their logs above" >&2; exit 1; }
cat <<MSG

The proxy is ready on http://127.0.0.1:${PORT} (metrics: proxy :${PROXY_METRICS_PORT}, worker :${METRICS_PORT}). Try:

  curl -s -X POST http://127.0.0.1:${PORT}/WeatherForecast/city \\
       -H 'Content-Type: application/json' -d '{"city": "Oslo", "location": "Norway"}'

  make load    # 10 requests a second for 30 s, with latency percentiles (what this worker serves: about 16/s)

Ctrl-C (or closing this terminal) stops the proxy, then the worker, then Redis; Ctrl-C again stops them at once.
MSG
# Stop everything as soon as one of them exits.
wait -n
