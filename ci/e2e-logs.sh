#!/usr/bin/env bash
# On failure: what every pod of the release said, and the namespace's events.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
namespace="${RSD_NAMESPACE:-redis-stream-demo}"
kubectl=.tools/kubectl
"$kubectl" -n "$namespace" get all -o wide
"$kubectl" -n "$namespace" get events --sort-by=.lastTimestamp
for pod in $("$kubectl" -n "$namespace" get pods -o name); do
    echo "===== $pod"
    "$kubectl" -n "$namespace" logs "$pod" --all-containers --prefix --tail=300
    "$kubectl" -n "$namespace" logs "$pod" --all-containers --prefix --previous --tail=100 2>/dev/null
done
