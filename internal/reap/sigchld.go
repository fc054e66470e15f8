package reap

import (
	"syscall"

	"github.com/nitroinit/nitroinit/internal/sigdisp"
)

// quietChildSignal sets SIGCHLD's disposition to SIG_DFL. The Go runtime
// installs a handler for SIGCHLD whether or not anyone asked for the
// signal, so every child's exit wakes some thread of the process to run it
// and return. With SIG_DFL the kernel discards SIGCHLD when it is sent,
// waking no one; exits are still reported to wait calls and children are
// still left as zombies to reap (only SIG_IGN or SA_NOCLDWAIT would have
// the kernel reap them itself). As a consequence signal.Notify for SIGCHLD
// receives nothing afterwards, which is why the reaper is the only owner
// of SIGCHLD in this module.
func quietChildSignal() error { return sigdisp.Default(syscall.SIGCHLD) }
