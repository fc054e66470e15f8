#!/usr/bin/env bash
# install-deps.sh: install the Debian/Ubuntu packages the tests need, quietly and only when missing.
#   qemu-system-x86  the enclave simulator's VMM
#   tini runit s6 supervisor  other supervisors the comparison tests and benchmarks run against
#   xz-utils cpio kmod  unpack kernel modules, inspect initramfs images, depmod/modinfo
#   umoci skopeo openssl  build and unpack the container images the image-import tests read; sign a test EIF
#   busybox-static socat  the apps in the network vmtests; the forwarder benchmark's baseline
# Safe to run repeatedly: a run with everything present does no apt work at all.
set -euo pipefail

PKGS=(qemu-system-x86 tini runit s6 supervisor xz-utils cpio kmod umoci skopeo openssl)
PKGS+=(busybox-static socat) # apps in the network vmtests; socat is the forwarder benchmark baseline
PKGS+=(python3-cbor2 python3-cryptography) # the independent attestation-document verifier (internal/nsm/testdata/verify.py)

say() { echo "install-deps: $*" >&2; }

command -v dpkg-query >/dev/null || {
	say "not a dpkg system: install ${PKGS[*]} (or their equivalents) yourself"
	exit 1
}

missing=()
for p in "${PKGS[@]}"; do
	# "install ok installed" is the only state that means the package is usable.
	if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]; then
		missing+=("$p")
	fi
done
if [ ${#missing[@]} -eq 0 ]; then
	say "all present: ${PKGS[*]}"
	exit 0
fi

SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo
say "installing ${missing[*]}"
$SUDO apt-get update -qq >/dev/null
# apt's own chatter (debconf notes) goes to stderr; failures still fail the script through set -e.
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
say "installed ${missing[*]}"
