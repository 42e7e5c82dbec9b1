#!/usr/bin/env bash
# `make run`: Redis (unless REDIS_URL names one that already answers), one worker and
# the proxy, in the foreground. Ctrl-C, SIGTERM or a closed terminal (SIGHUP) stops all of them.
set -euo pipefail
cd "$(dirname "$0")/.."

export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
export PORT="${PORT:-8080}"
export BIND_HOST="${BIND_HOST:-127.0.0.1}"
export METRICS_PORT="${METRICS_PORT:-9100}"
py=.venv/bin/python
data_dir="${REDIS_DATA_DIR:-.data/redis}"

# Each child runs in its own session, so Ctrl-C reaches only this script, which then
# stops them in order: the proxy and the worker finish their requests while Redis is
# still there, and Redis goes last.
app_pids=()
redis_pid=""
stop_all() {
    trap - EXIT INT TERM
    for pid in "${app_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${app_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ -n "$redis_pid" ]; then
        kill -TERM "$redis_pid" 2>/dev/null || true
        wait "$redis_pid" 2>/dev/null || true
    fi
    echo "stopped"
}
trap stop_all EXIT
# The children do not get the terminal's hang-up (own sessions), so this script passes it on.
trap 'exit 129' HUP
trap 'exit 130' INT TERM

port_free() {  # HOST PORT: true when nothing listens there (binding is the only sure test)
    "$py" - "$1" "$2" <<'PY' 2>/dev/null
import socket, sys
with socket.socket() as s:
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

redis_answers() {
    "$py" - <<'PY' >/dev/null 2>&1
import os, redis
redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=1, socket_connect_timeout=1).ping()
PY
}

read -r redis_host redis_port < <("$py" -c '
import os
from urllib.parse import urlsplit
u = urlsplit(os.environ["REDIS_URL"])
print(u.hostname or "", u.port or 6379)')

refuse_taken_port "$PORT" PORT "the proxy"
refuse_taken_port "$METRICS_PORT" METRICS_PORT "the worker's HTTP port"
if redis_answers; then
    echo "using the Redis that answers at ${redis_host}:${redis_port}"
elif [[ "$redis_host" == "localhost" || "$redis_host" == 127.* ]]; then
    refuse_taken_port "$redis_port" REDIS_URL "Redis, from REDIS_URL; it does not answer as Redis"
    mkdir -p "$data_dir"
    # AOF with fsync every second: queued requests survive a Redis restart.
    setsid redis-server --bind 127.0.0.1 --port "$redis_port" --dir "$data_dir" \
        --appendonly yes --appendfsync everysec --save "" --loglevel warning &
    redis_pid=$!
    for _ in $(seq 50); do redis_answers && break; sleep 0.1; done
    redis_answers || { echo "redis-server did not start on port $redis_port" >&2; exit 1; }
    echo "redis-server on ${redis_host}:${redis_port}, data in $data_dir"
else
    echo "REDIS_URL points at ${redis_host}:${redis_port}, which does not answer" >&2
    exit 1
fi

setsid "$py" -m app.worker &
worker_pid=$!
app_pids+=("$worker_pid")
setsid .venv/bin/gunicorn -c app/proxy/gunicorn.conf.py &
proxy_pid=$!
app_pids+=("$proxy_pid")

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

The proxy is ready on http://127.0.0.1:${PORT} (worker metrics on :${METRICS_PORT}). Try:

  curl -s -X POST http://127.0.0.1:${PORT}/WeatherForecast/city \\
       -H 'Content-Type: application/json' -d '{"city": "Oslo", "location": "Norway"}'

Ctrl-C (or closing this terminal) stops the proxy, the worker and then Redis.
MSG
# Stop everything as soon as one of them exits.
wait -n
