package control

import (
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"syscall"

	"github.com/nitroinit/nitroinit/internal/procfs"
	"github.com/nitroinit/nitroinit/internal/wire"
)

// MaxSignal is the highest signal number ps kill accepts (SIGRTMAX).
const MaxSignal = 64

// dispatch carries out every request that has a single response built in
// memory (ServiceLogs and ServiceLogsFollow are streamed; see handle).
func (s *Server) dispatch(req wire.Request, peer Peer) wire.Response {
	b := s.cfg.Handler
	done := func(err error, format string) wire.Response {
		if err != nil {
			return wire.Errorf("%v", err)
		}
		return wire.Success(fmt.Sprintf(format, req.Name))
	}
	switch req.Kind {
	case wire.KindPing:
		return wire.Response{Kind: wire.KindPong}
	case wire.KindListServices:
		return wire.Response{Kind: wire.KindServiceList, Services: b.Services()}
	case wire.KindServiceStatus:
		st, err := b.ServiceStatus(req.Name)
		if err != nil {
			return wire.Errorf("%v", err)
		}
		return wire.Response{Kind: wire.KindServiceStatus, Status: &st}
	case wire.KindServiceStart:
		return done(b.StartService(req.Name), "Service '%s' started")
	case wire.KindServiceStop:
		return done(b.StopService(req.Name), "Service '%s' stopped")
	case wire.KindServiceRestart:
		return done(b.RestartService(req.Name), "Service '%s' restarted")
	case wire.KindServiceEnable:
		return done(b.EnableService(req.Name), "Service '%s' enabled")
	case wire.KindServiceDisable:
		return done(b.DisableService(req.Name), "Service '%s' disabled")
	case wire.KindServiceLogsClear:
		return done(b.ClearServiceLogs(req.Name), "Logs cleared for service '%s'")
	case wire.KindServiceLogsStream:
		return s.startStream(req, peer)
	case wire.KindServiceLogsStreamStop:
		return s.stopStreams(req.Name, req.VsockPort)
	case wire.KindSystemReload:
		if err := b.Reload(); err != nil {
			return wire.Errorf("%v", err)
		}
		return wire.Success("Service configurations reloaded")
	case wire.KindSystemReboot:
		b.Shutdown(true)
		return wire.Success("System reboot initiated")
	case wire.KindSystemShutdown:
		b.Shutdown(false)
		return wire.Success("System shutdown initiated")
	case wire.KindSystemStatus:
		st := b.SystemStatus()
		if n, err := s.cfg.Proc.Count(); err == nil {
			st.TotalProcesses = n
		}
		st.Policy = s.cfg.Policy.Info(peer)
		return wire.Response{Kind: wire.KindSystemStatus, System: &st}
	case wire.KindProcessList:
		list, err := s.cfg.Proc.List()
		if err != nil {
			return wire.Errorf("listing processes: %v", err)
		}
		managed := b.ManagedPIDs()
		out := make([]wire.ProcessInfo, len(list))
		for i, p := range list {
			out[i] = processInfo(p, managed)
		}
		return wire.Response{Kind: wire.KindProcessList, Processes: out}
	case wire.KindProcessStatus:
		p, err := s.cfg.Proc.Process(req.PID)
		if errors.Is(err, procfs.ErrNoProcess) {
			return wire.Errorf("Process %d not found", req.PID)
		}
		if err != nil {
			return wire.Errorf("reading process %d: %v", req.PID, err)
		}
		info := processInfo(p, b.ManagedPIDs())
		return wire.Response{Kind: wire.KindProcessStatus, Process: &info}
	case wire.KindProcessStart:
		if req.Command == "" {
			return wire.Errorf("ProcessStart needs a command")
		}
		pid, err := b.StartProcess(req.Command, req.Args, req.Env)
		if err != nil {
			return wire.Errorf("%v", err)
		}
		return wire.Response{Kind: wire.KindProcessStarted, PID: pid, Message: fmt.Sprintf("Process started with PID %d", pid)}
	case wire.KindProcessStop:
		if r, bad := refusePID(req.PID); bad {
			return r
		}
		msg, err := b.SignalProcess(req.PID, syscall.SIGTERM, true)
		return message(msg, err)
	case wire.KindProcessKill:
		if r, bad := refusePID(req.PID); bad {
			return r
		}
		if req.Signal < 1 || req.Signal > MaxSignal {
			return wire.Errorf("Invalid signal %d: want 1 to %d", req.Signal, MaxSignal)
		}
		msg, err := b.SignalProcess(req.PID, syscall.Signal(req.Signal), false)
		return message(msg, err)
	case wire.KindProcessRestart:
		if r, bad := refusePID(req.PID); bad {
			return r
		}
		msg, err := b.RestartProcess(req.PID)
		return message(msg, err)
	}
	return wire.Errorf("%v", &wire.UnknownRequestError{Kind: req.Kind})
}

func message(msg string, err error) wire.Response {
	if err != nil {
		return wire.Errorf("%v", err)
	}
	return wire.Success(msg)
}

// refusePID keeps signals away from init itself and from the kill(2) forms
// that reach groups (0, negative) before they reach the handler.
//
// The kernel's pid_t is 32 bits: a larger number would be truncated by
// kill(2) (4294967297 becomes 1, 4294967295 becomes -1), so it is refused
// here rather than passed on. init's own PID is refused too when init is not
// PID 1 (supervisor mode).
func refusePID(pid int) (wire.Response, bool) {
	switch {
	case pid == 1 || pid == os.Getpid() || initThread(pid):
		return wire.Errorf("Refusing to signal PID %d (init itself); use initctl shutdown or reboot", pid), true
	case pid <= 0 || pid > math.MaxInt32:
		return wire.Errorf("Invalid PID %d: must be a process ID between 2 and %d", pid, math.MaxInt32), true
	}
	return wire.Response{}, false
}

// initThread reports whether pid is one of init's own threads: kill(2) of
// any thread id signals the whole thread group, that is, init.
func initThread(pid int) bool {
	if pid <= 0 {
		return false
	}
	_, err := os.Stat("/proc/self/task/" + strconv.Itoa(pid))
	return err == nil
}

// processInfo is the wire form of a process; managed maps the main PIDs
// of services to their names.
func processInfo(p procfs.Process, managed map[int]string) wire.ProcessInfo {
	info := wire.ProcessInfo{
		PID: p.PID, PPID: p.PPID, Name: p.Name, Cmdline: p.Cmdline, State: p.State,
		CPUPercent: wire.Float(p.CPUPercent), MemoryKB: p.MemoryKB, StartTime: p.StartTime,
	}
	if name, ok := managed[p.PID]; ok {
		info.Managed = true
		info.ServiceName = &name
		addServiceFigures(&info)
	}
	return info
}
