package reap

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// kernelSigaction is the kernel's struct sigaction on amd64 and arm64 (the
// two architectures of Nitro Enclaves), which is not the C library's.
type kernelSigaction struct {
	handler  uintptr
	flags    uint64
	restorer uintptr
	mask     uint64
}

// quietChildSignal sets SIGCHLD's disposition to SIG_DFL. The Go runtime
// installs a handler for SIGCHLD whether or not anyone asked for the
// signal, so every child's exit wakes some thread of the process to run it
// and return. With SIG_DFL the kernel discards SIGCHLD when it is sent,
// waking no one; exits are still reported to wait calls and children are
// still left as zombies to reap (only SIG_IGN or SA_NOCLDWAIT would have
// the kernel reap them itself). It is done with the system call because
// os/signal keeps the runtime's handler installed after signal.Reset; as a
// consequence, signal.Notify for SIGCHLD receives nothing afterwards, which
// is why the reaper is the only owner of SIGCHLD in this module.
func quietChildSignal() error {
	act := kernelSigaction{handler: 0} // SIG_DFL
	_, _, errno := unix.RawSyscall6(unix.SYS_RT_SIGACTION, uintptr(unix.SIGCHLD),
		uintptr(unsafe.Pointer(&act)), 0, unsafe.Sizeof(act.mask), 0, 0)
	if errno != 0 {
		return fmt.Errorf("setting SIGCHLD to its default disposition: %w", errno)
	}
	return nil
}
