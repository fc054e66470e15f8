// Package sigdisp reads and resets signal dispositions with rt_sigaction(2)
// directly, for the cases os/signal does not cover: the Go runtime keeps
// its own handler installed after signal.Reset, and leaves the signals
// libc reserves (32 and 33) alone.
package sigdisp

import (
	"fmt"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// kernelSigaction is the kernel's struct sigaction on amd64 and arm64 (the
// two architectures of Nitro Enclaves), which is not the C library's. Only
// the handler, first on every architecture, is read, and an all-zero value
// (SIG_DFL, no flags, empty mask) is written.
type kernelSigaction struct {
	handler  uintptr
	flags    uint64
	restorer uintptr
	mask     uint64
}

const sigIgn = 1

// Ignored reports whether sig's disposition is SIG_IGN.
func Ignored(sig syscall.Signal) (bool, error) {
	var old kernelSigaction
	if _, _, e := unix.RawSyscall6(unix.SYS_RT_SIGACTION, uintptr(sig), 0, uintptr(unsafe.Pointer(&old)), unsafe.Sizeof(old.mask), 0, 0); e != 0 {
		return false, fmt.Errorf("reading the disposition of signal %d: %w", sig, e)
	}
	return old.handler == sigIgn, nil
}

// Default sets sig's disposition to SIG_DFL, whatever handler the Go
// runtime or an ancestor installed. A later signal.Notify for sig does not
// reinstall the runtime's handler (the runtime believes it is still
// there), so the caller must be the only user of sig in the process.
func Default(sig syscall.Signal) error {
	var dfl kernelSigaction
	if _, _, e := unix.RawSyscall6(unix.SYS_RT_SIGACTION, uintptr(sig), uintptr(unsafe.Pointer(&dfl)), 0, unsafe.Sizeof(dfl.mask), 0, 0); e != 0 {
		return fmt.Errorf("setting signal %d to its default disposition: %w", sig, e)
	}
	return nil
}

// Ignore sets sig's disposition to SIG_IGN, as some parents of init do
// before they start it; tests use it to start init that way.
func Ignore(sig syscall.Signal) error {
	ign := kernelSigaction{handler: sigIgn}
	if _, _, e := unix.RawSyscall6(unix.SYS_RT_SIGACTION, uintptr(sig), uintptr(unsafe.Pointer(&ign)), 0, unsafe.Sizeof(ign.mask), 0, 0); e != 0 {
		return fmt.Errorf("ignoring signal %d: %w", sig, e)
	}
	return nil
}
