package control

import (
	"context"
	"syscall"

	"github.com/nitroinit/nitroinit/internal/wire"
)

// Handler is what the control server needs from init. The supervisor
// implements it; the control package only authenticates, decodes, checks
// permissions and dispatches. Errors returned by Handler methods are sent to
// the client as {"Error":{"message": err.Error()}}, so they are written for
// the operator (for example "Service 'nosuch' not found").
type Handler interface {
	// Services lists every known service, sorted by name, including
	// disabled and invalid ones.
	Services() []wire.ServiceInfo
	ServiceStatus(name string) (wire.ServiceStatus, error)
	StartService(name string) error
	StopService(name string) error
	RestartService(name string) error
	EnableService(name string) error
	DisableService(name string) error
	// Reload re-reads the service directory and applies the difference.
	Reload() error

	// ServiceLogs returns the last n formatted lines of a service's log,
	// to be read with bounded memory whatever n is.
	ServiceLogs(name string, n int) (LogTail, error)
	ClearServiceLogs(name string) error
	// SubscribeLogs returns the last history lines of a service's log and
	// follows it from there, with no line lost or repeated in between.
	SubscribeLogs(name string, history int) (LogTail, LogSubscription, error)

	// ManagedPIDs maps the main PID of every running service to its name.
	ManagedPIDs() map[int]string
	// StartProcess runs an ad-hoc, unmanaged process with its output
	// captured in the log directory.
	StartProcess(command string, args, env []string) (pid int, err error)
	// SignalProcess sends sig to pid. For the main PID of a service a
	// terminating signal (or stop=true, for ps stop) is a stop of that
	// service, so its restart policy does not bring it back. It returns the
	// message to show.
	SignalProcess(pid int, sig syscall.Signal, stop bool) (string, error)
	// RestartProcess restarts the service whose main PID is pid.
	RestartProcess(pid int) (string, error)

	// Shutdown starts an orderly shutdown (power-off, or reboot when
	// reboot is true) and returns at once.
	Shutdown(reboot bool)
	// SystemStatus fills everything but TotalProcesses and Policy, which
	// the control package adds.
	SystemStatus() wire.SystemStatus
}

// LogSubscription is a live feed of one service's log lines.
type LogSubscription interface {
	// Next blocks until the next line. missed counts lines dropped before
	// it because the reader was too slow. It fails when ctx ends or the
	// subscription is closed (for example because the service was removed).
	Next(ctx context.Context) (line string, missed uint64, err error)
	Close()
}

// LogTail is the last lines of a log, taken at one instant and delivered
// later, oldest first, in bounded memory (*logs.Tail implements it).
type LogTail interface {
	// Each calls fn for every line (valid only during the call) until fn
	// fails, and returns fn's or a read error.
	Each(fn func(line []byte) error) error
	// Close releases what the tail holds; Each calls it too.
	Close()
}
