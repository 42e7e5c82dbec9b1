#!/usr/bin/env bash
# Chart lint and offline validation: helm lint --strict, kubernetes-validate 1.29-1.35, checkov.
set -euo pipefail
cd "$(dirname "$0")/.."
make setup
.venv/bin/python -m pytest tests/chart -q
