#!/usr/bin/env bash
# bench.sh [bench flags]: measure init against tini, runit, s6 and
# supervisor (installed by ci/install-deps.sh; a missing one is reported as
# "n/a (not installed)") and print the markdown table of docs/benchmarks.md,
# then run the Go benchmarks the rest of that page, docs/vsockdev.md and
# docs/simulator.md quote, so that one run gives every figure they need.
# Run through `make bench`, which builds bin/init and bin/initctl first.
#
# BENCH_RUNS sets the runs per figure of the table (default 5). Progress goes
# to stderr; the results go to stdout and, with -o FILE, the table also to
# FILE. BENCH_GO=0 runs the table only (the Go benchmarks boot QEMU guests
# under TCG and take most of the time). Flags are passed to ./bench; with
# -only or -quick the Go benchmarks are skipped as well.
set -euo pipefail
cd "$(dirname "$0")/.."
for b in bin/init bin/initctl; do
	[ -x "$b" ] || { echo "bench.sh: $b missing: run make build (or make bench)" >&2; exit 1; }
done
go=${GO:-ci/go}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
began=$(date +%s)
# Figures are only worth what the machine was doing: say it, with the
# commit. The load average is read before and after; the orphan storm of
# row 1 raises it by itself (10 000 runnable processes for a moment).
echo "Commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)'); load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)."
echo
CGO_ENABLED=0 "$go" build -o "$tmp/bench" ./bench
"$tmp/bench" -runs "${BENCH_RUNS:-5}" -init bin/init -initctl bin/initctl "$@"

gobench=${BENCH_GO:-1}
for a in "$@"; do
	case $a in -only* | -quick*) gobench=0 ;; esac
done
if [ "$gobench" != 0 ]; then
	# The VM benchmarks find the kernel where make deps put it, as ci/test.sh.
	export NITROINIT_CACHE=${NITROINIT_CACHE:-$HOME/.cache/nitroinit}
	# name | package | flags: the forms the documents give.
	while IFS='|' read -r name pkg flags; do
		echo
		echo "### $name"
		echo
		echo '```'
		echo "go test -run '^\$' $(printf '%q ' $flags)$pkg"
		# A benchmark that fails is reported and the others still run.
		CGO_ENABLED=0 "$go" test -run '^$' $flags "$pkg" 2>&1 | grep -E '^(Benchmark|--- |FAIL|ok|PASS|goos|cpu|.*skip)' || true
		echo '```'
	done <<-'EOF'
		EIF build (docs/benchmarks.md)|./initramfs|-bench BuildEIF -benchtime 2x -count 4 -benchmem
		Forwarders against socat (docs/benchmarks.md)|./internal/forward|-bench . -benchtime 2s -count 3
		vsock device alone (docs/vsockdev.md)|./internal/vsockdev|-bench DeviceRoundTrip -count 7
		vsock device in a VM (docs/vsockdev.md)|./internal/vsockdev|-bench ^Benchmark(HostToGuest|GuestToHost|RoundTrip)$ -count 3
		Boot to heartbeat (docs/simulator.md)|./internal/enclavesim|-bench BootToHeartbeat -benchtime 3x
		The simulated NSM (docs/benchmarks.md)|./vmtests|-bench NSMDescribePCR -benchtime 1x -count 3
	EOF
fi
echo
echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg). The whole run took $(($(date +%s) - began)) s."
