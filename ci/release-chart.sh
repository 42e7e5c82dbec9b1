#!/usr/bin/env bash
# Packages the chart at the release version and pushes it to an OCI registry.
# Env: VERSION (e.g. 1.2.3), REGISTRY (e.g. ghcr.io/owner/charts), REGISTRY_USER, REGISTRY_PASSWORD.
# A registry with a private CA: SSL_CERT_FILE names the CA bundle (helm honours it).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${VERSION:?}" "${REGISTRY:?}" "${REGISTRY_USER:?}" "${REGISTRY_PASSWORD:?}"
make tools
helm=.tools/helm
mkdir -p dist
"$helm" package charts/redis-stream-demo --version "$VERSION" --app-version "$VERSION" --destination dist
printf '%s' "$REGISTRY_PASSWORD" | "$helm" registry login "${REGISTRY%%/*}" --username "$REGISTRY_USER" --password-stdin
# An OCI registry overwrites a tag without a word (a new package, a new digest, under the same
# version): a released version is never pushed again.
if "$helm" show chart "oci://$REGISTRY/redis-stream-demo" --version "$VERSION" >/dev/null 2>&1; then
    echo "redis-stream-demo $VERSION is already in oci://$REGISTRY: refusing to overwrite a released version" >&2
    exit 1
fi
"$helm" push "dist/redis-stream-demo-$VERSION.tgz" "oci://$REGISTRY"
