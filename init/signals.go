package main

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// kernelSigaction is the kernel's struct sigaction for rt_sigaction(2). Only
// the handler (first on every architecture) is read, and an all-zero value
// (SIG_DFL, no flags, empty mask) is written, so the position of the other
// fields does not matter.
type kernelSigaction struct {
	handler  uintptr
	flags    uint64
	restorer uintptr
	mask     uint64
}

const sigIgn = 1

// resetInheritedIgnores gives signals 32 and 33 their default disposition
// if init was started with them ignored. The Go runtime leaves those two
// alone (libc uses them internally), so an ignore inherited from whatever
// started init would otherwise pass on to every service; the runtime
// resets the others in children itself, and os/signal.Notify takes over
// SIGHUP and SIGINT.
func resetInheritedIgnores() {
	for _, sig := range []uintptr{32, 33} {
		var old kernelSigaction
		if _, _, e := unix.RawSyscall6(unix.SYS_RT_SIGACTION, sig, 0, uintptr(unsafe.Pointer(&old)), 8, 0, 0); e != 0 {
			continue
		}
		if old.handler == sigIgn {
			var dfl kernelSigaction
			unix.RawSyscall6(unix.SYS_RT_SIGACTION, sig, uintptr(unsafe.Pointer(&dfl)), 0, 8, 0, 0)
		}
	}
}
