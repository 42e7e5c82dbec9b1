#!/usr/bin/env bash
# `make ci-local`: runs ci.yml's jobs with nektos/act on this host (no Docker: the host
# executor, -P ubuntu-24.04=-self-hosted). act skips actions/checkout of the local repository
# and copies the working tree for each job; actions/setup-python, which would download a
# Python from GitHub, is replaced by the stand-in in ci/actions/setup-python.
# Jobs: lint and chart; with CI_LOCAL_ALL=1 also test (that is `make test` itself).
# Prints act's job results and exits non-zero when a job fails.
# REPO (default: this checkout) runs another copy: the failure test uses it.
set -euo pipefail
cd "$(dirname "$0")/.."
here=$PWD
repo="${REPO:-$here}"
act="$here/.tools/act/bin/act"
jobs=(lint chart)
if [ "${CI_LOCAL_ALL:-0}" = 1 ]; then
    jobs+=(test)
fi
setup_python=$(sed -n 's/.*uses: \(actions\/setup-python@[0-9a-f]*\).*/\1/p' "$repo/.github/workflows/ci.yml" | sort -u)
if [ "$(wc -l <<<"$setup_python")" -ne 1 ]; then
    echo "ci.yml must pin one actions/setup-python commit; found: $setup_python" >&2
    exit 2
fi
status=0
for job in "${jobs[@]}"; do
    log=$(mktemp)
    echo "== act: ci.yml job $job"
    if (cd "$repo" && "$act" push --workflows .github/workflows/ci.yml --job "$job" \
            -P ubuntu-24.04=-self-hosted \
            --local-repository "$setup_python=$here/ci/actions/setup-python" >"$log" 2>&1); then
        result=succeeded
    else
        result=failed
        status=1
        tail -40 "$log" >&2
    fi
    # act's own step and job lines, without the steps' output.
    grep -E '^\[[^]]+\] +(⭐|✅|❌|🏁)' "$log" | sed -E 's/\x1b\[[0-9;]*m//g' || true
    echo "== job $job: $result"
    rm -f "$log"
done
exit "$status"
