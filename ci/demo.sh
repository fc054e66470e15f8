#!/usr/bin/env bash
# demo.sh: see nitroinit work in one command. Builds init, initctl and the
# example service program, builds an enclave image, boots it in the enclave
# simulator (QEMU + our userspace vsock device), manages it with initctl from
# the host through the hybrid vsock socket, shows an attestation document from
# the simulated /dev/nsm, and shuts it down; then goes from a container image
# to an EIF, prints its PCRs and boots it.
#
# Needs: what `make deps` installs (QEMU, the test kernel); ci/go provides Go.
# Extra arguments go to `initramfs demo` (for example --keep, -v, --accel tcg).
set -euo pipefail
cd "$(dirname "$0")/.."
export CGO_ENABLED=0

if ! command -v qemu-system-x86_64 >/dev/null && [ -z "${VMTEST_QEMU:-}" ]; then
	echo "demo: QEMU is missing: run ci/install-deps.sh (or make deps)" >&2
	exit 1
fi
if [ -z "${NITROINIT_KERNEL:-}" ] && [ ! -e "${NITROINIT_CACHE:-$HOME/.cache/nitroinit}/kernel/current/VERSION" ]; then
	echo "demo: no test kernel yet, fetching it" >&2
	ci/fetch-kernel.sh
fi

# ci/go finds (or installs) the Go toolchain go.mod asks for.
GO=${GO:-ci/go}
echo "==> Building bin/init, bin/initctl, bin/initramfs, bin/svc, bin/nsmcheck"
mkdir -p bin
for p in init initctl initramfs; do
	"$GO" build -trimpath -o "bin/$p" "./$p"
done
"$GO" build -trimpath -o bin/svc ./internal/testprog/svc
"$GO" build -trimpath -o bin/nsmcheck ./internal/testprog/nsmcheck

bin/initramfs demo --init bin/init --initctl bin/initctl --svc bin/svc --nsmcheck bin/nsmcheck "$@"
echo
echo "==> From a container image to a booted EIF"
exec bin/initramfs demo-eif --init bin/init --initctl bin/initctl --svc bin/svc "$@"
