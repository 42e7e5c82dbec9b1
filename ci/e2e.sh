#!/usr/bin/env bash
# End to end on a kind cluster (the e2e workflow creates it): build both images, load
# them into kind, install the chart with CI values, run `helm test` and the cluster smoke
# tests, then restart both Deployments under load and require zero failed requests.
set -euo pipefail
cd "$(dirname "$0")/.."

cluster="${KIND_CLUSTER:-rsd}"
namespace="${RSD_NAMESPACE:-redis-stream-demo}"
release="${RSD_RELEASE:-demo}"
tag="ci-${GITHUB_SHA:-local}"
export KUBECONFIG="${KUBECONFIG:-$HOME/.kube/config}" RSD_NAMESPACE="$namespace" RSD_RELEASE="$release"

make setup
helm=.tools/helm
kubectl=.tools/kubectl

for component in proxy worker; do
    docker build -f "Dockerfile.$component" -t "redis-stream-demo-$component:$tag" \
        --build-arg VERSION="$tag" --build-arg REVISION="${GITHUB_SHA:-local}" .
    kind load docker-image --name "$cluster" "redis-stream-demo-$component:$tag"
done

"$helm" upgrade --install "$release" charts/redis-stream-demo -n "$namespace" --create-namespace \
    -f ci/values-ci.yaml \
    --set proxy.image.repository=redis-stream-demo-proxy --set proxy.image.tag="$tag" \
    --set worker.image.repository=redis-stream-demo-worker --set worker.image.tag="$tag" \
    --wait --timeout 5m
"$helm" test "$release" -n "$namespace" --logs --timeout 3m
.venv/bin/python -m pytest tests/cluster -q

# Load from inside the cluster, so pods going away do not break a port-forward.
"$kubectl" -n "$namespace" run rolling-load --restart=Never --image="redis-stream-demo-proxy:$tag" \
    --image-pull-policy=Never --command -- python -c "$(cat ci/rolling_load.py)" \
    "http://$release-redis-stream-demo-proxy" 90
sleep 10
"$kubectl" -n "$namespace" rollout restart "deploy/$release-redis-stream-demo-proxy" "deploy/$release-redis-stream-demo-worker"
"$kubectl" -n "$namespace" rollout status "deploy/$release-redis-stream-demo-proxy" --timeout 5m
"$kubectl" -n "$namespace" rollout status "deploy/$release-redis-stream-demo-worker" --timeout 5m
"$kubectl" -n "$namespace" wait --for=jsonpath='{.status.phase}'=Succeeded pod/rolling-load --timeout 3m
"$kubectl" -n "$namespace" logs pod/rolling-load
