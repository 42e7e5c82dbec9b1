#!/usr/bin/env bash
# `make image-test`: builds both images with buildah and smoke-runs each entrypoint.
# No base image can be pulled here, so a minimal Debian with Python is made with
# debootstrap (from the mirror apt already uses) and committed as a local base image.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-debian-package.sh buildah buildah
scripts/ensure-debian-package.sh debootstrap debootstrap
export STORAGE_DRIVER="${STORAGE_DRIVER:-vfs}"   # works inside containers, no overlay needed
work="$PWD/.data/image-test"
base="localhost/redis-stream-demo-base:bookworm"
mkdir -p "$work"

if ! buildah inspect --type image "$base" >/dev/null 2>&1; then
    mirror="$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -n1)"
    mirror="${mirror:-$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null)}"
    : "${mirror:?no Debian mirror found in the apt sources}"
    rm -rf "$work/rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$work/rootfs" "$mirror"
    rm -rf "$work/rootfs/var/cache/apt/archives"/*.deb "$work/rootfs/var/lib/apt/lists"/*
    tar -C "$work/rootfs" -cf "$work/rootfs.tar" .
    container="$(buildah from scratch)"
    buildah add "$container" "$work/rootfs.tar" /
    buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd python3 "$container"
    buildah commit --rm "$container" "$base"
fi

ca_args=()
if [ -n "${SSL_CERT_FILE:-}" ] && [ -f "$SSL_CERT_FILE" ]; then
    # The build's pip must trust the same CAs this machine does (e.g. a TLS-inspecting proxy).
    ca_args=(--secret "id=pip_ca,src=$SSL_CERT_FILE")
fi
for component in proxy worker; do
    start=$(date +%s)
    buildah build --isolation chroot --layers=false "${ca_args[@]}" \
        --build-arg BASE_IMAGE="$base" --build-arg VERSION=image-test \
        -f "Dockerfile.$component" -t "localhost/redis-stream-demo-$component:test" .
    echo "built $component in $(( $(date +%s) - start )) s"
done

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
