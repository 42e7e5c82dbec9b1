#!/usr/bin/env bash
# Builds the images with buildah where no registry can be reached (make image-test, make e2e-local):
# a minimal Debian with Python is made with debootstrap (from the mirror apt already uses) and
# committed as a local base image, then Dockerfile.proxy and Dockerfile.worker are built on it
# as localhost/redis-stream-demo-<component>:test. With --with-redis, also an image of Debian's
# redis-server on the same base (localhost/redis-stream-demo-redis:test) for the chart's Redis.
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
if [ "${1:-}" = "--with-redis" ]; then
    buildah build --isolation chroot --layers=false --build-arg BASE_IMAGE="$base" \
        -f tests/e2e/Containerfile.redis -t localhost/redis-stream-demo-redis:test tests/e2e
fi
