package enclavesim

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Accelerators.
const (
	AccelTCG = "tcg"
	AccelKVM = "kvm"
)

// KVM ioctls (linux/kvm.h): _IO(0xAE, 0x00) and _IO(0xAE, 0x01).
const (
	kvmGetAPIVersion = 0xAE00
	kvmCreateVM      = 0xAE01
	kvmAPIVersion    = 12
)

// probeTimeout bounds the QEMU probe. A working KVM boots the kernel to its
// root-mount panic in about a second; broken ones (PVM hosts, nested setups
// without the right CPU features) hang or crawl.
const probeTimeout = 20 * time.Second

// detectAccel chooses the accelerator for QEMU: VMTEST_ACCEL when set, else
// KVM when it really works, else TCG. It returns the choice and why.
//
// /dev/kvm existing proves little: some hosts (PVM, for one) expose a
// /dev/kvm on which QEMU hangs or crashes. So the check opens /dev/kvm, asks
// its API version and creates a VM, and then boots kernel under QEMU with
// -accel kvm -cpu host until the kernel panics for want of a root file
// system (panic=-1 makes that a reboot, -no-reboot an exit). That answer is
// cached per host kernel, QEMU binary and kernel image in
// cacheDir()/accel/, because the probe of a broken KVM takes probeTimeout.
func detectAccel(ctx context.Context, qemu []string, kernel string) (accel, why string) {
	if a := os.Getenv("VMTEST_ACCEL"); a != "" {
		return a, "VMTEST_ACCEL=" + a
	}
	if err := kvmOpens(); err != nil {
		return AccelTCG, err.Error()
	}
	key, err := probeKey(qemu, kernel)
	if err != nil {
		return AccelTCG, "cannot key the KVM probe cache: " + err.Error()
	}
	cache := filepath.Join(cacheDir(), "accel", key)
	if b, err := os.ReadFile(cache); err == nil {
		a, reason, _ := strings.Cut(strings.TrimSpace(string(b)), " ")
		if a == AccelKVM || a == AccelTCG {
			return a, reason + " (cached in " + cache + ")"
		}
	}
	accel, why = probeKVM(ctx, qemu, kernel)
	if ctx.Err() == nil { // an interrupted probe proves nothing
		os.MkdirAll(filepath.Dir(cache), 0o755)
		os.WriteFile(cache, []byte(accel+" "+why+"\n"), 0o644)
	}
	return accel, why
}

// kvmOpens checks that /dev/kvm can be opened and can create a VM.
func kvmOpens() error {
	fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("/dev/kvm: %w", err)
	}
	defer unix.Close(fd)
	v, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), kvmGetAPIVersion, 0)
	if errno != 0 {
		return fmt.Errorf("/dev/kvm: KVM_GET_API_VERSION: %w", errno)
	}
	if v != kvmAPIVersion {
		return fmt.Errorf("/dev/kvm: API version %d, want %d", v, kvmAPIVersion)
	}
	vm, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), kvmCreateVM, 0)
	if errno != 0 {
		return fmt.Errorf("/dev/kvm: KVM_CREATE_VM: %w", errno)
	}
	unix.Close(int(vm))
	return nil
}

func probeKey(qemu []string, kernel string) (string, error) {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return "", err
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n", unix.ByteSliceToString(uts.Release[:]), unix.ByteSliceToString(uts.Version[:]))
	bin, err := exec.LookPath(qemu[0])
	if err != nil {
		return "", err
	}
	for _, p := range []string{bin, kernel} {
		fi, err := os.Stat(p)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s %d %d\n", p, fi.Size(), fi.ModTime().UnixNano())
	}
	fmt.Fprintf(h, "%q\n", qemu)
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

func probeKVM(ctx context.Context, qemu []string, kernel string) (string, string) {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	args := append(append([]string{}, qemu[1:]...),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-M", "q35", "-accel", "kvm", "-cpu", "host", "-m", "256",
		"-kernel", kernel, "-append", "console=ttyS0 panic=-1 no_timer_check quiet",
		"-serial", "stdio")
	cmd := exec.CommandContext(ctx, qemu[0], args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.WaitDelay = time.Second
	start := time.Now()
	err := cmd.Run()
	took := time.Since(start).Round(time.Millisecond)
	switch {
	case ctx.Err() != nil:
		return AccelTCG, fmt.Sprintf("KVM probe: the kernel did not reach its root mount within %s under -accel kvm -cpu host", probeTimeout)
	case err != nil:
		return AccelTCG, fmt.Sprintf("KVM probe: QEMU failed after %s: %v: %s", took, err, lastLine(out.String()))
	case !strings.Contains(out.String(), "Unable to mount root"):
		return AccelTCG, fmt.Sprintf("KVM probe: QEMU exited after %s without the kernel reaching its root mount: %s", took, lastLine(out.String()))
	}
	return AccelKVM, fmt.Sprintf("KVM probe booted the kernel in %s", took)
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return s
}

// vhostVsockUsable reports why the host kernel's vhost-vsock cannot be used,
// or nil when /dev/vhost-vsock opens read-write (what QEMU does).
func vhostVsockUsable() error {
	fd, err := unix.Open("/dev/vhost-vsock", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("/dev/vhost-vsock: %w (load vhost_vsock: modprobe vhost_vsock)", err)
		}
		return fmt.Errorf("/dev/vhost-vsock: %w", err)
	}
	unix.Close(fd)
	return nil
}
