#!/usr/bin/env bash
# The whole suite, exactly as a developer runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
make test
