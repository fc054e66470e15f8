package supervise

import (
	"syscall"
	"time"

	"github.com/nitroinit/nitroinit/internal/reap"
)

// Ops is what the supervisor asks of the operating system for its services:
// start a process, signal one, arm a timer, read the clock. The system
// implementation forks through the reaper; tests replace it to drive the
// state machine in-process, with processes and time under their control
// (as internal/boot does with its Ops).
type Ops interface {
	// Start forks and execs path with argv and attr, and arranges for
	// onExit to be called once with the exit status. atExec, when not
	// nil, is called with the new pid after the exec and before the
	// program runs (see reap.Reaper.StartAtExec).
	Start(path string, argv []string, attr *syscall.ProcAttr, atExec func(pid int), onExit reap.ExitFunc) (int, error)
	// Kill sends sig to pid (a negative pid is a process group), as kill(2).
	Kill(pid int, sig syscall.Signal) error
	// AfterFunc calls f on its own goroutine after d, unless stopped.
	AfterFunc(d time.Duration, f func()) Timer
	// Now is the current time, for the start limit.
	Now() time.Time
}

// Timer is a timer armed by Ops.AfterFunc.
type Timer interface {
	// Stop prevents the call if it has not happened yet.
	Stop() bool
}

// systemOps is Ops on the real system, with processes started through r.
type systemOps struct{ r *reap.Reaper }

func (o systemOps) Start(path string, argv []string, attr *syscall.ProcAttr, atExec func(pid int), onExit reap.ExitFunc) (int, error) {
	if atExec == nil {
		return o.r.Start(path, argv, attr, onExit)
	}
	pid, _, err := o.r.StartAtExec(path, argv, attr, atExec, onExit)
	return pid, err
}

func (systemOps) Kill(pid int, sig syscall.Signal) error { return syscall.Kill(pid, sig) }

func (systemOps) AfterFunc(d time.Duration, f func()) Timer { return time.AfterFunc(d, f) }

func (systemOps) Now() time.Time { return time.Now() }
