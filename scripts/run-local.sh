#!/usr/bin/env bash
# `make run`: Redis (unless REDIS_URL names one that already answers), one worker and
# the proxy, in the foreground. Ctrl-C stops all of them.
set -euo pipefail
cd "$(dirname "$0")/.."

export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
export PORT="${PORT:-8080}"
export BIND_HOST="${BIND_HOST:-127.0.0.1}"
export METRICS_PORT="${METRICS_PORT:-9100}"
py=.venv/bin/python
data_dir=.data/redis

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
trap 'exit 130' INT TERM

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

if redis_answers; then
    echo "using the Redis that answers at ${redis_host}:${redis_port}"
elif [[ "$redis_host" == "localhost" || "$redis_host" == 127.* ]]; then
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
app_pids+=($!)
setsid .venv/bin/gunicorn -c app/proxy/gunicorn.conf.py &
app_pids+=($!)

for _ in $(seq 100); do
    "$py" -c 'import os, urllib.request as u; u.urlopen("http://127.0.0.1:%s/readyz" % os.environ["PORT"], timeout=1)' \
        >/dev/null 2>&1 && break
    sleep 0.1
done
cat <<MSG

The proxy is ready on http://127.0.0.1:${PORT} (worker metrics on :${METRICS_PORT}). Try:

  curl -s -X POST http://127.0.0.1:${PORT}/WeatherForecast/city \\
       -H 'Content-Type: application/json' -d '{"city": "Oslo", "location": "Norway"}'

Ctrl-C stops Redis, the worker and the proxy.
MSG
# Stop everything as soon as one of them exits.
wait -n
