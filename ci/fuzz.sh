#!/usr/bin/env bash
# fuzz.sh [TIME]: run every go test -fuzz target of the module, one after
# another, each for TIME (default 2m). Targets are found by name (func FuzzX
# in a _test.go file), so a new target is fuzzed without editing this file.
# A crasher is written by go test to PKG/testdata/fuzz/FuzzX/ and from then
# on runs as a regression case under plain go test; commit it with the fix.
# FUZZ_PARALLEL sets the workers per target (default 1: the CI machine has
# two cores shared with other jobs). FUZZ_MINIMIZE_TIME caps the time spent
# minimizing each new corpus entry (default 10s; go test's own default of
# 60s left the config and unit targets minimizing, with no new inputs run,
# for most of a 2 minute run). Exits non-zero if any target failed.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${1:-2m}
parallel=${FUZZ_PARALLEL:-1}
minimize=${FUZZ_MINIMIZE_TIME:-10s}

# "pkgdir target" pairs, sorted so that runs are in a stable order.
mapfile -t targets < <(grep -rE --include='*_test.go' -o '^func Fuzz[A-Za-z0-9_]+\(' . |
	grep -v '^./vendor/' |
	sed -E 's#^(.*)/[^/]+_test\.go:func (Fuzz[A-Za-z0-9_]+)\($#\1 \2#' | sort -u)
if [ ${#targets[@]} -eq 0 ]; then
	echo "fuzz.sh: no fuzz targets found" >&2
	exit 1
fi

failed=()
for t in "${targets[@]}"; do
	read -r dir name <<<"$t"
	echo "== $name in $dir for $fuzztime"
	if ! "${GO:-ci/go}" test -count=1 -run '^$' -fuzz "^${name}\$" -fuzztime "$fuzztime" -fuzzminimizetime "$minimize" -parallel "$parallel" "$dir"; then
		failed+=("$dir $name")
	fi
done

echo
echo "fuzz.sh: ${#targets[@]} targets, ${#failed[@]} failed"
for f in "${failed[@]}"; do
	echo "  FAILED: $f (crasher in $(echo "$f" | cut -d' ' -f1)/testdata/fuzz/$(echo "$f" | cut -d' ' -f2)/)"
done
[ ${#failed[@]} -eq 0 ]
