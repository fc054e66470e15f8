#!/usr/bin/env bash
# actionlint.sh: lint the GitHub Actions workflows with actionlint, fetched
# as a Go module at a pinned version (no binary download).
set -euo pipefail
cd "$(dirname "$0")/.."
"${GO:-ci/go}" run github.com/rhysd/actionlint/cmd/actionlint@v1.7.7 -no-color .github/workflows/*.yml
echo "actionlint: ok"
