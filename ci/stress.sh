#!/usr/bin/env bash
# stress.sh [N [COMMAND...]]: run COMMAND (default: make test) beside N
# CPU-bound loops (default 4), the way a busy, shared CI machine runs it.
# The loops are this script's own children and are ended by their PIDs when
# the command ends, however it ends. Exits with the command's status and
# prints how long it took.
#
#   ci/stress.sh            # make test beside 4 loops
#   ci/stress.sh 8 make vmtest
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-4}
shift || true
[ "$#" -gt 0 ] || set -- make test
case $n in
'' | *[!0-9]*)
	echo "stress.sh: N must be a number of loops, not '$n'" >&2
	exit 2
	;;
esac

pids=()
stop() {
	for p in "${pids[@]}"; do
		kill "$p" 2>/dev/null || true
	done
	for p in "${pids[@]}"; do
		wait "$p" 2>/dev/null || true
	done
}
trap stop EXIT
trap 'exit 130' INT TERM

for ((i = 0; i < n; i++)); do
	# A subshell spinning without system calls: pure CPU load.
	(while :; do :; done) &
	pids+=($!)
done
echo "stress.sh: $n CPU-bound loops running (PIDs ${pids[*]}) on $(nproc) CPUs; running: $*" >&2

start=$SECONDS
set +e
"$@"
rc=$?
set -e
echo "stress.sh: '$*' exited $rc after $((SECONDS - start))s beside $n loops" >&2
exit $rc
