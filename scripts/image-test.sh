#!/usr/bin/env bash
# `make image-test`: builds both images with buildah (scripts/build-images.sh) and smoke-runs each entrypoint.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/build-images.sh
export STORAGE_DRIVER="${STORAGE_DRIVER:-vfs}"
work="$PWD/.data/image-test"
mkdir -p "$work"

free_port() { .venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
redis_port=$(free_port)
metrics_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --daemonize no >/dev/null &
redis_pid=$!
trap 'kill "$redis_pid" 2>/dev/null || true' EXIT
sleep 0.5

run_image() {  # IMAGE [buildah run options] -- COMMAND...
    local image="$1"; shift
    local options=()
    while [ "$1" != "--" ]; do options+=("$1"); shift; done
    shift
    local container status=0
    container="$(buildah from "$image")"
    buildah run --isolation chroot "${options[@]}" "$container" -- "$@" || status=$?
    buildah rm "$container" >/dev/null
    return "$status"
}

echo "== proxy: settings validate and the app imports (gunicorn --check-config)"
run_image localhost/redis-stream-demo-proxy:test \
    --env "REDIS_URL=redis://127.0.0.1:$redis_port/0" --workingdir /srv -- \
    gunicorn -c app/proxy/gunicorn.conf.py --check-config
echo "== proxy: a bad setting is refused by name"
if run_image localhost/redis-stream-demo-proxy:test --env PORT=eighty --workingdir /srv -- \
        gunicorn -c app/proxy/gunicorn.conf.py --check-config 2>"$work/proxy-bad.txt"; then
    echo "the proxy accepted PORT=eighty" >&2; exit 1
fi
grep -q PORT "$work/proxy-bad.txt"
echo "== worker: starts, reads the stream, and stops on SIGTERM"
run_image localhost/redis-stream-demo-worker:test \
    --env "REDIS_URL=redis://127.0.0.1:$redis_port/0" --env "METRICS_PORT=$metrics_port" --env SHUTDOWN_GRACE_SECONDS=3 -- \
    timeout --signal TERM 5 python -m app.worker >"$work/worker.log" 2>&1 || true
grep -q '"worker started"' "$work/worker.log"
grep -q '"worker stopped"' "$work/worker.log"
echo "== worker: a bad setting is refused by name"
if run_image localhost/redis-stream-demo-worker:test --env WORKER_TERMINALS=0 -- python -m app.worker \
        2>"$work/worker-bad.txt"; then
    echo "the worker accepted WORKER_TERMINALS=0" >&2; exit 1
fi
grep -q WORKER_TERMINALS "$work/worker-bad.txt"
echo "image-test passed"
