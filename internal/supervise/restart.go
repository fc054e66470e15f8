package supervise

import (
	"fmt"
	"syscall"
	"time"

	"github.com/nitroinit/nitroinit/internal/unit"
)

// Exit describes how a service's main process ended.
type Exit struct {
	Code     int            // exit code, when the process exited
	Signal   syscall.Signal // the signal that killed it, or 0
	ExecErr  error          // the exec itself failed
	TimedOut bool           // killed by init after a start or stop timeout
	// OOM says which limit the OOM killer enforced when it killed a
	// process of the service's cgroup during this run ("" if it did not).
	OOM string
}

// Clean reports whether the exit counts as a success: code 0, or death by
// one of the signals a well-behaved program is stopped with, as in systemd.
func (e Exit) Clean() bool {
	if e.ExecErr != nil || e.TimedOut || e.OOM != "" {
		return false
	}
	switch e.Signal {
	case 0:
		return e.Code == 0
	case syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM, syscall.SIGPIPE:
		return true
	}
	return false
}

// Success reports whether the process ran and exited with status 0 (and
// was not killed by a timeout): what a start that ends in an exit must
// achieve to count as done.
func (e Exit) Success() bool {
	return e.ExecErr == nil && !e.TimedOut && e.OOM == "" && e.Signal == 0 && e.Code == 0
}

// Abnormal reports a death by an unclean signal or a timeout.
func (e Exit) Abnormal() bool {
	if e.TimedOut || e.OOM != "" {
		return true
	}
	return e.Signal != 0 && !e.Clean()
}

// StatusCode is the exit status shown to users: the exit code, or 128+signal
// as a shell reports it.
func (e Exit) StatusCode() int {
	if e.Signal != 0 {
		return 128 + int(e.Signal)
	}
	if e.ExecErr != nil {
		return 127
	}
	return e.Code
}

func (e Exit) String() string {
	switch {
	case e.ExecErr != nil:
		return fmt.Sprintf("failed to start: %v", e.ExecErr)
	case e.OOM != "" && e.Signal == syscall.SIGKILL:
		return "killed by the OOM killer: " + e.OOM
	case e.OOM != "":
		return fmt.Sprintf("%s after the OOM killer killed one of its processes: %s", Exit{Code: e.Code, Signal: e.Signal}, e.OOM)
	case e.TimedOut && e.Signal != 0:
		return fmt.Sprintf("timed out, killed by %s", signalName(e.Signal))
	case e.Signal != 0:
		return fmt.Sprintf("killed by %s", signalName(e.Signal))
	}
	return fmt.Sprintf("exited with code %d", e.Code)
}

func exitFromStatus(ws syscall.WaitStatus) Exit {
	if ws.Signaled() {
		return Exit{Signal: ws.Signal()}
	}
	return Exit{Code: ws.ExitStatus()}
}

// ShouldRestart applies a restart policy to an exit.
func ShouldRestart(p unit.Restart, e Exit) bool {
	switch p {
	case unit.RestartAlways:
		return true
	case unit.RestartOnSuccess:
		return e.Clean()
	case unit.RestartOnFailure:
		return !e.Clean()
	case unit.RestartOnAbnormal:
		return e.Abnormal()
	}
	return false
}

// StartLimiter enforces StartLimitBurst starts within StartLimitInterval.
type StartLimiter struct {
	Burst    int
	Interval time.Duration // 0 disables the limit
	starts   []time.Time
}

// Allow records a start at now and reports whether it is within the limit.
// A refused start is not recorded.
func (l *StartLimiter) Allow(now time.Time) bool {
	if l.Interval <= 0 || l.Burst <= 0 {
		return true
	}
	cut := now.Add(-l.Interval)
	kept := l.starts[:0]
	for _, t := range l.starts {
		if t.After(cut) {
			kept = append(kept, t)
		}
	}
	l.starts = kept
	if len(l.starts) >= l.Burst {
		return false
	}
	l.starts = append(l.starts, now)
	return true
}

// Reset forgets past starts, as a manual start or a reload does.
func (l *StartLimiter) Reset() { l.starts = l.starts[:0] }

var signalNames = map[syscall.Signal]string{
	syscall.SIGHUP: "SIGHUP", syscall.SIGINT: "SIGINT", syscall.SIGQUIT: "SIGQUIT", syscall.SIGILL: "SIGILL",
	syscall.SIGTRAP: "SIGTRAP", syscall.SIGABRT: "SIGABRT", syscall.SIGBUS: "SIGBUS", syscall.SIGFPE: "SIGFPE",
	syscall.SIGKILL: "SIGKILL", syscall.SIGUSR1: "SIGUSR1", syscall.SIGSEGV: "SIGSEGV", syscall.SIGUSR2: "SIGUSR2",
	syscall.SIGPIPE: "SIGPIPE", syscall.SIGALRM: "SIGALRM", syscall.SIGTERM: "SIGTERM", syscall.SIGCHLD: "SIGCHLD",
	syscall.SIGCONT: "SIGCONT", syscall.SIGSTOP: "SIGSTOP", syscall.SIGTSTP: "SIGTSTP", syscall.SIGTTIN: "SIGTTIN",
	syscall.SIGTTOU: "SIGTTOU", syscall.SIGURG: "SIGURG", syscall.SIGXCPU: "SIGXCPU", syscall.SIGXFSZ: "SIGXFSZ",
	syscall.SIGVTALRM: "SIGVTALRM", syscall.SIGPROF: "SIGPROF", syscall.SIGWINCH: "SIGWINCH", syscall.SIGIO: "SIGIO",
	syscall.SIGPWR: "SIGPWR", syscall.SIGSYS: "SIGSYS",
}

func signalName(s syscall.Signal) string {
	if n, ok := signalNames[s]; ok {
		return n
	}
	return fmt.Sprintf("signal %d", int(s))
}

// terminating reports whether sending s to a service is meant to end it.
func terminating(s syscall.Signal) bool {
	switch s {
	case syscall.SIGTERM, syscall.SIGINT, syscall.SIGKILL, syscall.SIGQUIT, syscall.SIGABRT:
		return true
	}
	return false
}
