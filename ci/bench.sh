#!/usr/bin/env bash
# bench.sh [bench flags]: measure init against tini, runit, s6 and
# supervisor (installed by ci/install-deps.sh; a missing one is reported as
# "n/a (not installed)") and print the markdown table of docs/benchmarks.md.
# Run through `make bench`, which builds bin/init and bin/initctl first.
# BENCH_RUNS sets the runs per figure (default 5). Progress goes to stderr;
# the table goes to stdout and, with -o FILE, to FILE.
set -euo pipefail
cd "$(dirname "$0")/.."
for b in bin/init bin/initctl; do
	[ -x "$b" ] || { echo "bench.sh: $b missing: run make build (or make bench)" >&2; exit 1; }
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
CGO_ENABLED=0 "${GO:-ci/go}" build -o "$tmp/bench" ./bench
"$tmp/bench" -runs "${BENCH_RUNS:-5}" -init bin/init -initctl bin/initctl "$@"
