#!/usr/bin/env bash
# test.sh KIND PACKAGES...: run go test over PACKAGES, print each case as
# `go test -v` does and a closing count of passed, failed and skipped cases.
# KIND is "unit" or "vmtest"; for vmtests a skipped case fails the run,
# because on this project's CI machine nothing may be missing.
set -euo pipefail
kind=$1
shift
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# go test's timeout only catches a test binary that hangs outright: the
# tests' own waits fail on a stall (internal/wait). It is long enough for a
# machine ten times slower than the 2-core CI machine.
timeout=60m
args=(-count=1 -json)
if [ "$kind" = vmtest ]; then
	args+=(-p 1 -timeout "$timeout")
	# Tell the vmtests where the kernel is (ci/fetch-kernel.sh put it there).
	export NITROINIT_CACHE=${NITROINIT_CACHE:-$HOME/.cache/nitroinit}
else
	args+=(-timeout "$timeout")
fi

set +e
"${GO:-go}" test "${args[@]}" "$@" >"$out/json"
rc=$?
set -e
# In CI (root, everything installed by ci/install-deps.sh and
# ci/fetch-kernel.sh) a skipped test means it silently did not run, so no
# test may skip. Elsewhere unit tests may skip (some need root); vmtests
# never may.
strict=()
if [ "${CI:-}" = true ] || [ -n "${NITROINIT_STRICT:-}" ]; then
	strict=(-strict)
fi
"${GO:-go}" run ./ci/report -kind "$kind" "${strict[@]}" <"$out/json" || rc=1
exit $rc
