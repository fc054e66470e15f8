#!/usr/bin/env bash
# fetch-kernel.sh: put a test kernel for the enclave simulator into the cache.
#
# Result (stable layout, read by internal/enclavesim.FindKernel):
#   ${NITROINIT_CACHE:-$HOME/.cache/nitroinit}/kernel/current -> <release>/
#   <release>/vmlinuz               the bzImage as shipped
#   <release>/vmlinux               uncompressed ELF with a PVH entry note (boots faster under TCG)
#   <release>/modules/<name>.ko*    vsock, vmw_vsock_virtio_transport_common,
#                                   vmw_vsock_virtio_transport, vsock_loopback, nsm, virtio_mmio
#   <release>/modules/ORDER         module names in load order (a name absent from modules/ is built in)
#   <release>/modules/cuse.ko*      optional extra, not in ORDER: only images built with
#                                   `initramfs build --nsm` load it (the simulated /dev/nsm)
#   <release>/config                the kernel's .config
#   <release>/VERSION               kernel release (uname -r)
#   <release>/SOURCE                which route and package produced it
#
# Routes, in order:
#   1. NITROINIT_KERNEL (+ NITROINIT_MODULES_DIR) set: nothing is downloaded; the files are checked and
#      Go code uses them directly. VMTEST_QEMU names the QEMU binary.
#   2. Debian: linux-image-6.12-cloud-amd64 (meta package) resolved to its versioned package.
#   3. Ubuntu and other apt systems without it: linux-image-kvm or linux-image-virtual, plus the
#      matching linux-modules / linux-modules-extra packages.
# The script is idempotent: a complete release directory is reused as is.
set -euo pipefail

CACHE=${NITROINIT_CACHE:-$HOME/.cache/nitroinit}
KDIR=$CACHE/kernel
# Load order matters: each module needs the ones before it.
# virtio_mmio: the vsock device on QEMU's microvm machine (boot --machine microvm), as on Nitro.
MODULES=(vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport vsock_loopback nsm virtio_mmio)
# Modules without which the simulator cannot work (nsm and the loopback are optional extras).
REQUIRED=(vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport)
# Optional modules copied next to the others but left out of ORDER: only some images load them
# (cuse: the simulated /dev/nsm of `initramfs build --nsm`).
EXTRA=(cuse)

say() { echo "fetch-kernel: $*" >&2; }
die() {
	echo "fetch-kernel: error: $*" >&2
	exit 1
}

as_root() {
	if [ "$(id -u)" = 0 ]; then
		"$@"
	elif command -v sudo >/dev/null; then
		sudo "$@"
	else
		die "need root to run '$*' (install it yourself, or run this script as root)"
	fi
}

# ensure_qemu installs qemu-system-x86 when neither VMTEST_QEMU nor qemu-system-x86_64 is there.
ensure_qemu() {
	if [ -n "${VMTEST_QEMU:-}" ]; then
		local q=${VMTEST_QEMU%% *}
		command -v "$q" >/dev/null || die "VMTEST_QEMU=$VMTEST_QEMU: $q not found"
		say "QEMU from VMTEST_QEMU: $VMTEST_QEMU"
		return
	fi
	if command -v qemu-system-x86_64 >/dev/null; then
		say "QEMU: $(command -v qemu-system-x86_64)"
		return
	fi
	command -v apt-get >/dev/null || die "qemu-system-x86_64 not found and no apt-get: install QEMU or set VMTEST_QEMU"
	say "installing qemu-system-x86"
	apt_updated_once
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-x86 >/dev/null
}

APT_UPDATED=0
apt_updated_once() {
	[ "$APT_UPDATED" = 1 ] && return
	say "apt-get update"
	as_root apt-get update -qq >/dev/null || say "apt-get update failed; trying with the lists we have"
	APT_UPDATED=1
}

# pkg_available NAME: true when apt knows a candidate for NAME.
pkg_available() {
	local cand
	cand=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')
	[ -n "$cand" ] && [ "$cand" != "(none)" ]
}

# resolve_image META: prints the versioned linux-image package the meta package depends on.
resolve_image() {
	apt-cache depends "$1" 2>/dev/null |
		awk '/Depends:/ {print $2}' |
		grep -E '^linux-image-(unsigned-)?[0-9]' | head -n1
}

# extract_vmlinux BZIMAGE OUT: decompress the kernel payload of a bzImage.
# The x86 boot protocol (2.08+) header says where the payload is: protected-mode code starts after
# (setup_sects+1)*512 bytes; payload_offset (0x248) and payload_length (0x24c) are relative to it.
# The payload ends with the 4-byte uncompressed size, which the decompressors must not see.
# When the header does not point at a known magic, fall back to scanning for the first one.
extract_vmlinux() {
	local img=$1 out=$2 hdr sects off len start magic
	hdr=$(dd if="$img" bs=1 skip=$((0x202)) count=4 2>/dev/null)
	[ "$hdr" = HdrS ] || die "$img: no 'HdrS' boot header at 0x202: not an x86 bzImage"
	sects=$(od -An -tu1 -j $((0x1f1)) -N1 "$img" | tr -d ' ')
	[ "$sects" = 0 ] && sects=4
	off=$(od -An -tu4 -j $((0x248)) -N4 "$img" | tr -d ' ')
	len=$(od -An -tu4 -j $((0x24c)) -N4 "$img" | tr -d ' ')
	start=$(((sects + 1) * 512 + off))
	magic=$(od -An -tx1 -j "$start" -N6 "$img" | tr -d ' \n')
	local dec=""
	case $magic in
	fd377a585a00*) dec="xz -dc" ;;
	28b52ffd*) dec="zstd -dcq" ;;
	1f8b08*) dec="gzip -dc" ;;
	02214c18*) dec="lz4 -dc" ;;
	425a68*) dec="bzip2 -dc" ;;
	5d0000*) dec="xz -dc --format=lzma" ;;
	esac
	if [ -n "$dec" ]; then
		say "payload at byte $start, $len bytes, decompressing with ${dec%% *}"
		tail -c +$((start + 1)) "$img" | head -c $((len - 4)) | $dec >"$out" 2>/dev/null || true
	fi
	if ! is_elf "$out"; then
		say "header did not lead to a kernel ELF; scanning $img for a compressed payload"
		local m pos
		for m in 'xz:\xfd\x37\x7a\x58\x5a\x00' 'zstd:\x28\xb5\x2f\xfd' 'gzip:\x1f\x8b\x08' 'lz4:\x02\x21\x4c\x18'; do
			pos=$(LC_ALL=C grep -obUaP "${m#*:}" "$img" | head -n1 | cut -d: -f1) || true
			[ -n "$pos" ] || continue
			tail -c +$((pos + 1)) "$img" | "${m%%:*}" -dc >"$out" 2>/dev/null || true
			is_elf "$out" && break
		done
	fi
	is_elf "$out" || die "$img: could not extract an ELF vmlinux (decompressor missing? need xz, zstd, gzip or lz4)"
	if command -v readelf >/dev/null; then
		# XEN_ELFNOTE_PHYS32_ENTRY (type 18) is the PVH entry point QEMU's -kernel looks for.
		if readelf -n "$out" 2>/dev/null | grep -qE 'Xen.*(\(0x00000012\)|PHYS32)'; then
			say "vmlinux has a PVH entry note"
		else
			say "vmlinux has no PVH note (CONFIG_PVH unset?): removing it, vmlinuz will be used"
			rm -f "$out"
		fi
	else
		say "readelf missing: PVH note not checked here (enclavesim checks it before use)"
	fi
}

is_elf() {
	[ -s "$1" ] && [ "$(head -c4 "$1" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ]
}

# install_release ROOT RELEASE SOURCE: copy kernel and modules from an unpacked package tree into the
# cache, atomically (build in a temporary directory, then rename).
install_release() {
	local root=$1 rel=$2 source=$3 tmp mdir f name
	tmp=$(mktemp -d "$KDIR/.tmp-$rel.XXXXXX")
	TMPREL=$tmp # removed by the EXIT trap if we die half-way
	f=$root/boot/vmlinuz-$rel
	[ -f "$f" ] || die "package tree has no boot/vmlinuz-$rel (looked in $root/boot: $(ls "$root/boot" 2>/dev/null | tr '\n' ' '))"
	cp "$f" "$tmp/vmlinuz"
	chmod 0644 "$tmp/vmlinuz"
	[ -f "$root/boot/config-$rel" ] && cp "$root/boot/config-$rel" "$tmp/config"
	for mdir in "$root/lib/modules/$rel" "$root/usr/lib/modules/$rel"; do
		[ -d "$mdir" ] && break
	done
	mkdir -p "$tmp/modules"
	: >"$tmp/modules/ORDER"
	for name in "${MODULES[@]}"; do
		f=$(find "$mdir" -name "$name.ko" -o -name "$name.ko.xz" -o -name "$name.ko.zst" -o -name "$name.ko.gz" 2>/dev/null | head -n1)
		if [ -n "$f" ]; then
			cp "$f" "$tmp/modules/"
			echo "$name" >>"$tmp/modules/ORDER"
			say "module $name: $(basename "$f")"
		elif grep -qE "/$name\.ko\$" "$mdir/modules.builtin" 2>/dev/null ||
			grep -qE "^CONFIG_$(module_config "$name")=y" "$tmp/config" 2>/dev/null; then
			echo "$name" >>"$tmp/modules/ORDER"
			say "module $name: built into the kernel"
		elif printf '%s\n' "${REQUIRED[@]}" | grep -qx "$name"; then
			die "module $name is neither in $mdir nor built in: this kernel cannot run the simulator"
		else
			say "module $name: not available in this kernel (optional, skipped)"
		fi
	done
	copy_extras "$mdir" "$tmp"
	extract_vmlinux "$tmp/vmlinuz" "$tmp/vmlinux"
	echo "$source" >"$tmp/SOURCE"
	wanted >"$tmp/modules/WANTED" # the lists it was made for: a longer list refetches
	echo "$rel" >"$tmp/VERSION" # written last: its presence marks a complete directory
	chmod 0755 "$tmp"
	rm -rf "${KDIR:?}/$rel"
	mv "$tmp" "$KDIR/$rel"
	TMPREL=
	ln -sfn "$rel" "$KDIR/current"
}

# copy_extras MODDIR RELDIR: copy the EXTRA modules found in MODDIR into RELDIR/modules.
copy_extras() {
	local mdir=$1 reldir=$2 name f
	for name in "${EXTRA[@]}"; do
		f=$(find "$mdir" -name "$name.ko" -o -name "$name.ko.xz" -o -name "$name.ko.zst" -o -name "$name.ko.gz" 2>/dev/null | head -n1)
		if [ -n "$f" ]; then
			cp "$f" "$reldir/modules/"
			say "extra module $name: $(basename "$f")"
		else
			say "extra module $name: not a module in this kernel (optional, skipped)"
		fi
	done
}

# wanted: the module lists a release directory is made for (modules/WANTED).
wanted() {
	echo "${MODULES[*]} extra: ${EXTRA[*]}"
}

# module_config NAME: the Kconfig symbol of a module, for kernels without modules.builtin.
module_config() {
	case $1 in
	vsock) echo VSOCKETS ;;
	vmw_vsock_virtio_transport_common) echo VIRTIO_VSOCKETS_COMMON ;;
	vmw_vsock_virtio_transport) echo VIRTIO_VSOCKETS ;;
	vsock_loopback) echo VSOCKETS_LOOPBACK ;;
	nsm) echo NSM ;;
	virtio_mmio) echo VIRTIO_MMIO ;;
	cuse) echo CUSE ;;
	esac
}

# fetch_packages RELEASE SOURCE PKG...: download and unpack packages, then install the release.
fetch_packages() {
	local rel=$1 source=$2
	shift 2
	if [ -f "$KDIR/$rel/VERSION" ] && [ "$(cat "$KDIR/$rel/modules/WANTED" 2>/dev/null)" = "$(wanted)" ]; then
		say "kernel $rel already in $KDIR/$rel"
		ln -sfn "$rel" "$KDIR/current"
		return
	fi
	# Global, so the EXIT trap still sees it when die() exits from deeper down.
	WORK=$(mktemp -d)
	local work=$WORK
	# apt-get download drops privileges to _apt, which must be able to write here.
	chmod 0755 "$work"
	trap 'rm -rf "$WORK" "${TMPREL:-}"' EXIT
	local p
	for p in "$@"; do
		say "downloading $p"
		(cd "$work" && apt-get download -qq "$p" >/dev/null 2>&1) ||
			(cd "$work" && apt-get download "$p") || die "apt-get download $p failed"
	done
	for p in "$work"/*.deb; do
		say "unpacking $(basename "$p")"
		dpkg-deb -x "$p" "$work/root"
	done
	install_release "$work/root" "$rel" "$source"
	rm -rf "$work"
	trap - EXIT
}

route_env() {
	[ -f "$NITROINIT_KERNEL" ] || die "NITROINIT_KERNEL=$NITROINIT_KERNEL: no such file"
	say "kernel from NITROINIT_KERNEL: $NITROINIT_KERNEL (nothing downloaded)"
	if [ -n "${NITROINIT_MODULES_DIR:-}" ]; then
		[ -d "$NITROINIT_MODULES_DIR" ] || die "NITROINIT_MODULES_DIR=$NITROINIT_MODULES_DIR: no such directory"
		local name f
		for name in "${MODULES[@]}"; do
			f=$(find "$NITROINIT_MODULES_DIR" -name "$name.ko*" | head -n1)
			say "module $name: ${f:-not found (must be built in)}"
		done
	else
		say "NITROINIT_MODULES_DIR unset: the kernel must have vsock and virtio-vsock built in"
	fi
}

route_apt() {
	command -v apt-get >/dev/null || return 1
	mkdir -p "$KDIR"
	local meta img rel
	for meta in linux-image-6.12-cloud-amd64 linux-image-kvm linux-image-virtual; do
		pkg_available "$meta" || apt_updated_once
		pkg_available "$meta" || continue
		img=$(resolve_image "$meta")
		[ -n "$img" ] || continue
		rel=${img#linux-image-}
		rel=${rel#unsigned-}
		local ver
		ver=$(apt-cache policy "$img" | awk '/Candidate:/ {print $2}')
		say "$meta -> $img ($ver), release $rel"
		local pkgs=("$img")
		# Ubuntu splits modules out of the image package.
		local extra
		for extra in "linux-modules-$rel" "linux-modules-extra-$rel"; do
			pkg_available "$extra" && pkgs+=("$extra")
		done
		fetch_packages "$rel" "route=apt meta=$meta packages=${pkgs[*]} version=$ver" "${pkgs[@]}"
		return 0
	done
	return 1
}

main() {
	if [ -n "${NITROINIT_KERNEL:-}" ]; then
		route_env
	elif ! route_apt; then
		die "no kernel package found (tried linux-image-6.12-cloud-amd64, linux-image-kvm, linux-image-virtual).
Provide one yourself: NITROINIT_KERNEL=/path/to/bzImage-or-vmlinux with CONFIG_VIRTIO_PCI and vsock
(NITROINIT_MODULES_DIR=/dir/with/modules if vsock is modular), and VMTEST_QEMU=/path/to/qemu-system-x86_64."
	fi
	ensure_qemu
	if [ -z "${NITROINIT_KERNEL:-}" ]; then
		say "ready: $KDIR/current -> $(readlink "$KDIR/current")"
		ls -l "$KDIR/current/" >&2
	fi
}

main "$@"
