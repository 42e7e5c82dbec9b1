#!/usr/bin/env bash
# Packages the chart at the release version and pushes it to an OCI registry.
# Env: VERSION (e.g. 1.2.3), REGISTRY (e.g. ghcr.io/owner/charts), REGISTRY_USER, REGISTRY_PASSWORD.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${VERSION:?}" "${REGISTRY:?}" "${REGISTRY_USER:?}" "${REGISTRY_PASSWORD:?}"
make tools
helm=.tools/helm
mkdir -p dist
"$helm" package charts/redis-stream-demo --version "$VERSION" --app-version "$VERSION" --destination dist
printf '%s' "$REGISTRY_PASSWORD" | "$helm" registry login "${REGISTRY%%/*}" --username "$REGISTRY_USER" --password-stdin
"$helm" push "dist/redis-stream-demo-$VERSION.tgz" "oci://$REGISTRY"
