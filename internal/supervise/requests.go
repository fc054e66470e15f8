package supervise

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/nitroinit/nitroinit/internal/control"
	"github.com/nitroinit/nitroinit/internal/logs"
	"github.com/nitroinit/nitroinit/internal/unit"
	"github.com/nitroinit/nitroinit/internal/wire"
)

// The methods in this file answer the control requests (they implement
// control.Handler). They run on the caller's goroutine and reach service
// state through call.

var _ control.Handler = (*Supervisor)(nil)

func (sv *service) info() wire.ServiceInfo {
	inf := wire.ServiceInfo{
		Name:    sv.name,
		Enabled: sv.enabled(),
		Active:  sv.isActive() || sv.remain,
		State:   sv.state.String(),
		Error:   sv.reason,
	}
	inf.RestartCount = sv.restarts
	if u := sv.def(); u != nil {
		inf.RestartPolicy = string(u.Restart)
	}
	if sv.state == stateInactive && sv.disabled {
		inf.State = "disabled"
	}
	return inf
}

// snapshot is an immutable view of every service, for the read-only
// control requests (list, status, ps), which are the most frequent.
type snapshot struct {
	version uint64
	list    []wire.ServiceInfo
	status  map[string]wire.ServiceStatus
	pids    map[int]string
	groups  map[string]string // cgroup path by service name, for live figures
	// groupPaths is the set of the paths in groups.
	groupPaths map[string]bool
	logs       map[string]*logs.Log // read at answer time: see logstate.go
}

// snapshot returns a view that is current: the one built at the loop's
// present version, or a new one built on the loop. Building happens only
// after a state change, so a steady system answers reads without waking
// the loop.
func (s *Supervisor) snapshot() *snapshot {
	if sn := s.snap.Load(); sn != nil && sn.version == s.version.Load() {
		return sn
	}
	var sn *snapshot
	ok := s.run(event{readOnly: true, f: func() {
		sn = &snapshot{
			version:    s.version.Load(),
			status:     make(map[string]wire.ServiceStatus, len(s.services)),
			pids:       map[int]string{},
			groups:     map[string]string{},
			groupPaths: map[string]bool{},
			logs:       map[string]*logs.Log{},
		}
		for _, n := range s.sortedNames() {
			sv := s.services[n]
			sn.list = append(sn.list, sv.info())
			sn.status[n] = sv.statusInfo()
			if sv.pid > 0 {
				sn.pids[sv.pid] = n
			}
			if sv.cg != nil {
				sn.groups[n] = sv.cg.Path
				sn.groupPaths[sv.cg.Path] = true
			}
			if sv.log != nil {
				sn.logs[n] = sv.log
			}
		}
		s.snap.Store(sn)
	}})
	if !ok {
		// The loop has ended: the last view is as good as it gets.
		if sn = s.snap.Load(); sn == nil {
			sn = &snapshot{status: map[string]wire.ServiceStatus{}, pids: map[int]string{}}
		}
	}
	return sn
}

// Services lists every service by name.
// Memory and task figures are read from the cgroups at each call, since
// they change without any event.
func (s *Supervisor) Services() []wire.ServiceInfo {
	sn := s.snapshot()
	list := sn.withLogErrors()
	if len(sn.groups) == 0 {
		return list
	}
	list = append([]wire.ServiceInfo(nil), list...)
	for i := range list {
		if p := sn.groups[list[i].Name]; p != "" {
			addStats(p, &list[i])
		}
	}
	return list
}

// ServiceStatus describes one service.
func (s *Supervisor) ServiceStatus(name string) (wire.ServiceStatus, error) {
	st, _, _, err := s.ServiceStatusAt(name)
	return st, err
}

// ServiceStatusAt is ServiceStatus with the version of the snapshot it
// was read from: two answers with the same version and live false are
// equal, so the control server may reuse an answer's encoding. live is
// true when the answer carries what was read at this call (cgroup
// figures, a failing log).
func (s *Supervisor) ServiceStatusAt(name string) (st wire.ServiceStatus, version uint64, live bool, err error) {
	sn := s.snapshot()
	st, ok := sn.status[name]
	if !ok {
		return st, sn.version, false, notFound(name)
	}
	group, lerr := sn.live(name)
	if group != "" {
		addStatusStats(group, &st)
		live = true
	}
	if lerr != nil {
		st.State, st.Error = withLogError(st.State, st.Error, lerr)
		live = true
	}
	return st, sn.version, live, nil
}

// live returns what of name's status is read at each call rather than kept
// in the snapshot: the cgroup its figures come from, and its log's failure.
func (sn *snapshot) live(name string) (group string, logErr error) {
	if l := sn.logs[name]; l != nil {
		logErr = l.Err()
	}
	return sn.groups[name], logErr
}

// StatusVersion returns, without waiting for the loop, the version
// ServiceStatusAt would report for name with live false; ok is false when
// it cannot say so at once: the view is out of date (only the loop makes
// a new one), the service is unknown, or its answer would be live.
func (s *Supervisor) StatusVersion(name string) (version uint64, ok bool) {
	sn := s.snap.Load()
	if sn == nil || sn.version != s.version.Load() {
		return 0, false
	}
	if _, known := sn.status[name]; !known {
		return 0, false
	}
	if group, lerr := sn.live(name); group != "" || lerr != nil {
		return 0, false
	}
	return sn.version, true
}

// statusInfo builds the status of one service; the loop calls it.
func (sv *service) statusInfo() wire.ServiceStatus {
	inf := sv.info()
	st := wire.ServiceStatus{
		Name: sv.name, Enabled: inf.Enabled, Active: inf.Active, RestartPolicy: inf.RestartPolicy,
		RestartCount: sv.restarts, State: inf.State, Error: sv.reason, StatusText: sv.status,
		ChangedOnDisk: sv.pending != nil, Since: sv.since.Unix(),
		Dependencies: wire.Dependencies{Before: []string{}, After: []string{}, Requires: []string{}, RequiredBy: []string{}},
	}
	if sv.pid > 0 {
		pid := sv.pid
		st.PID = &pid
	}
	if sv.lastExit != nil {
		code := sv.lastExit.StatusCode()
		st.ExitStatus = &code
	}
	u := sv.unit
	if u == nil {
		u = sv.pending
	}
	if u != nil {
		st.ExecStart = u.ExecStart
		st.RestartSec = uint64(u.RestartSec / time.Second)
		st.RestartMillis = uint64(u.RestartSec / time.Millisecond)
		st.Warnings = u.Warnings
		st.Type = string(u.Type)
		st.Path = u.Path
		if u.WorkingDirectory != "" {
			wd := u.WorkingDirectory
			st.WorkingDirectory = &wd
		}
		st.Dependencies = wire.Dependencies{
			Before: nonNil(u.Before), After: nonNil(u.After), Requires: nonNil(u.Requires), RequiredBy: nonNil(u.RequiredBy),
		}
	}
	return st
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// lookup finds a service for a request, or explains why it cannot be used.
func (s *Supervisor) lookup(name string) (*service, error) {
	if s.stopping != nil {
		return nil, errShuttingDown
	}
	sv := s.services[name]
	if sv == nil {
		return nil, notFound(name)
	}
	return sv, nil
}

// StartService starts a service and the services it requires, and waits
// until it is running or has failed.
func (s *Supervisor) StartService(name string) error {
	err := errShuttingDown // unless the loop runs the request
	var settled chan struct{}
	var timeout time.Duration
	s.call(func() {
		var sv *service
		if sv, err = s.lookup(name); err != nil {
			return
		}
		switch {
		case sv.entryErr != nil:
			err = fmt.Errorf("Service '%s' cannot start: %v", name, sv.entryErr)
			return
		case sv.isActive() || sv.remain:
			return
		}
		s.want(sv)
		if sv.held != "" {
			err = fmt.Errorf("Service '%s' is held back: %s", name, sv.held)
			return
		}
		sv.limiter.Reset()
		s.startSet([]string{name}, true)
		if sv.state == stateWaiting || sv.state == stateStarting {
			settled = make(chan struct{})
			sv.settled = append(sv.settled, settled)
		}
		// TimeoutStartSec 0 means no start timeout: wait as long as a
		// client may (initctl waits up to five minutes).
		timeout = 5 * time.Minute
		if t := sv.def().TimeoutStartSec; t > 0 {
			timeout = t + 5*time.Second
		}
	})
	if err != nil {
		return err
	}
	if settled != nil {
		select {
		case <-settled:
		case <-s.exited:
			return errShuttingDown
		case <-time.After(timeout):
		}
	}
	return s.startResult(name, timeout)
}

// want marks a service started by hand, and the disabled services it
// requires, as wanted, and replans: a hand-started set is ordered and
// awaited with the same graph as at boot.
func (s *Supervisor) want(sv *service) {
	changed := false
	seen := map[string]bool{}
	var mark func(n string)
	mark = func(n string) {
		x := s.services[n]
		if seen[n] || x == nil || x.isActive() || x.def() == nil {
			return
		}
		seen[n] = true
		if !x.enabled() && !x.wanted {
			x.wanted, changed = true, true
		}
		for _, r := range s.plan.Requires[n] {
			mark(r)
		}
	}
	mark(sv.name)
	if changed {
		s.replan()
	}
}

// startResult reports how a start ended: nil when the service is running,
// or has exited with status 0 (a oneshot, or a simple service that was
// quick), an error saying why otherwise.
func (s *Supervisor) startResult(name string, timeout time.Duration) error {
	var err error
	if !s.call(func() {
		sv := s.services[name]
		if sv == nil {
			err = notFound(name)
			return
		}
		err = settleError(name, sv.state, sv.reason, sv.lastExit, timeout)
	}) {
		return errShuttingDown
	}
	return err
}

// settleError judges the state a start settled in. It goes by the exit
// value, not by its text.
func settleError(name string, st State, reason string, last *Exit, timeout time.Duration) error {
	switch st {
	case stateRunning:
		return nil
	case stateExited:
		if last != nil && last.Success() {
			return nil
		}
		return fmt.Errorf("Service '%s' %s", name, reason)
	case stateWaiting, stateStarting:
		return fmt.Errorf("Service '%s' is still %s after %s", name, st, timeout)
	}
	if reason == "" {
		reason = st.String()
	}
	return fmt.Errorf("Service '%s' failed to start: %s", name, reason)
}

// StopService stops a service and waits for it to be gone.
func (s *Supervisor) StopService(name string) error {
	err := errShuttingDown // unless the loop runs the request
	var done chan struct{}
	var timeout time.Duration
	s.call(func() {
		var sv *service
		if sv, err = s.lookup(name); err != nil {
			return
		}
		s.stop(sv, "stopped by request")
		if sv.isActive() {
			done = make(chan struct{})
			sv.waiters = append(sv.waiters, done)
			timeout = sv.unit.TimeoutStopSec + 5*time.Second
		}
	})
	if err != nil || done == nil {
		return err
	}
	select {
	case <-done:
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("Service '%s' did not stop within %s", name, timeout)
	}
}

// RestartService stops a service (if running) and starts it again with its
// current definition on disk.
func (s *Supervisor) RestartService(name string) error {
	if err := s.StopService(name); err != nil {
		return err
	}
	return s.StartService(name)
}

// EnableService renames the service file to its enabled name (fixing a
// ServiceEnable = false inside it) and reloads.
func (s *Supervisor) EnableService(name string) error { return s.setEnabled(name, true) }

// DisableService renames the service file to name.service.disabled and
// reloads. A running service keeps running until it is stopped.
func (s *Supervisor) DisableService(name string) error { return s.setEnabled(name, false) }

func (s *Supervisor) setEnabled(name string, enable bool) error {
	if s.shutting.Load() {
		return errShuttingDown
	}
	if s.cfg.App != nil && name == s.cfg.App.Name {
		var isApp bool
		s.call(func() { isApp = s.services[name] != nil && s.services[name].app })
		if isApp {
			return fmt.Errorf("Service '%s' comes from /cmd and has no service file to enable or disable", name)
		}
	}
	if _, err := unit.SetEnabled(s.cfg.ServiceDir, name, enable); err != nil {
		return err
	}
	// Only this service's file is read again: a full reload would also
	// restart the services that their start limit stopped.
	err := errShuttingDown // unless the loop runs the request
	s.call(func() {
		if s.stopping == nil {
			err = s.load(false, name)
		}
	})
	if err != nil {
		return err
	}
	var got bool
	var found bool
	var why string
	if !s.call(func() {
		if sv := s.services[name]; sv != nil {
			found, got = true, sv.enabled()
			if sv.entryErr != nil {
				why = sv.entryErr.Error()
			}
		}
	}) {
		return errShuttingDown
	}
	switch {
	case !found:
		return notFound(name)
	case got != enable && why != "":
		return fmt.Errorf("Service '%s' is not usable: %s", name, why)
	case got != enable:
		return fmt.Errorf("Service '%s' is still %s after the change; check its file", name, map[bool]string{true: "enabled", false: "disabled"}[got])
	}
	return nil
}

// Reload re-reads the service directory and applies the difference.
func (s *Supervisor) Reload() error {
	err := errShuttingDown // unless the loop runs the request
	s.call(func() {
		if s.stopping != nil {
			err = errShuttingDown
			return
		}
		err = s.load(false, "")
	})
	return err
}

func (s *Supervisor) serviceLog(name string) (*logs.Log, error) {
	var l *logs.Log
	err := errShuttingDown // unless the loop runs the request
	s.call(func() {
		err = nil
		sv := s.services[name]
		switch {
		case name == unit.AdhocLog && s.adhoc != nil:
			// The output of ps start/run; control lets only exec peers,
			// who may start such processes, ask for it.
			l = s.adhoc
		case sv == nil:
			err = notFound(name)
		case sv.log == nil:
			err = fmt.Errorf("Service '%s' has no log", name)
		default:
			l = sv.log
		}
	})
	return l, err
}

// ServiceLogs returns the last n lines of a service's log.
func (s *Supervisor) ServiceLogs(name string, n int) (control.LogTail, error) {
	l, err := s.serviceLog(name)
	if err != nil {
		return nil, err
	}
	return l.Tail(n), nil
}

// ClearServiceLogs empties a service's log files and memory.
func (s *Supervisor) ClearServiceLogs(name string) error {
	l, err := s.serviceLog(name)
	if err != nil {
		return err
	}
	return l.Clear()
}

// SubscribeLogs returns the last history lines of a service's log and
// follows it from there.
func (s *Supervisor) SubscribeLogs(name string, history int) (control.LogTail, control.LogSubscription, error) {
	l, err := s.serviceLog(name)
	if err != nil {
		return nil, nil, err
	}
	tail, sub := l.Follow(history, 1024)
	return tail, &subscription{sub: sub}, nil
}

type subscription struct{ sub *logs.Subscription }

func (s *subscription) Next(ctx context.Context) (string, uint64, error) {
	select {
	case ev, ok := <-s.sub.C():
		if !ok {
			return "", 0, errors.New("log closed")
		}
		return ev.Line, ev.Missed, nil
	case <-ctx.Done():
		return "", 0, ctx.Err()
	}
}

func (s *subscription) Close() { s.sub.Close() }

// ManagedPIDs maps main PIDs to service names.
func (s *Supervisor) ManagedPIDs() map[int]string {
	return s.snapshot().pids
}

// StartProcess runs an unmanaged process with its output in the log of
// ad-hoc processes (adhoc.log).
func (s *Supervisor) StartProcess(command string, args, env []string) (int, error) {
	if s.shutting.Load() {
		return 0, errShuttingDown
	}
	if command == "" {
		return 0, errors.New("no command given")
	}
	argv := append([]string{command}, args...)
	for _, kv := range env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return 0, fmt.Errorf("environment entry %q is not KEY=VALUE", kv)
		}
	}
	var l *logs.Log
	s.call(func() { l = s.adhoc })
	var pid int
	pid, err := s.spawn(argv, mergeEnv(s.cfg.Env, env), nil, l, nil, s.procLimits(nil, nil), func(p int, ws syscall.WaitStatus) {
		if l != nil {
			l.Printf("init: process %d (%s) %s", p, command, exitFromStatus(ws))
		}
	})
	if err != nil {
		return 0, fmt.Errorf("cannot start %s: %w", command, err)
	}
	if l != nil {
		l.Printf("init: started process %d: %s", pid, strings.Join(argv, " "))
	}
	return pid, nil
}

// SignalProcess sends a signal to a process; for a service's main process a
// stop (or a terminating signal) stops the service.
func (s *Supervisor) SignalProcess(pid int, sig syscall.Signal, stop bool) (string, error) {
	var msg string
	s.call(func() {
		for _, sv := range s.services {
			if sv.pid != pid || pid <= 0 {
				continue
			}
			if !stop && !terminating(sig) {
				break
			}
			sv.manual = true
			sv.stopWhy = "stopped by ps " + map[bool]string{true: "stop", false: "kill"}[stop]
			if stop {
				s.stop(sv, sv.stopWhy)
				msg = fmt.Sprintf("%s sent to process %d (service '%s' stopped)", signalName(sv.unit.KillSignal), pid, sv.name)
			} else {
				s.signalStop(sv, sig, false)
				msg = fmt.Sprintf("Signal %d sent to process %d (service '%s' stopped)", int(sig), pid, sv.name)
			}
			return
		}
	})
	if msg != "" {
		return msg, nil
	}
	if err := s.ops.Kill(pid, sig); err != nil {
		if err == syscall.ESRCH {
			return "", fmt.Errorf("Process %d not found", pid)
		}
		return "", fmt.Errorf("cannot signal process %d: %w", pid, err)
	}
	if stop {
		return fmt.Sprintf("SIGTERM sent to process %d", pid), nil
	}
	return fmt.Sprintf("Signal %d sent to process %d", int(sig), pid), nil
}

// RestartProcess restarts the service whose main process is pid.
func (s *Supervisor) RestartProcess(pid int) (string, error) {
	name := s.ManagedPIDs()[pid]
	if name == "" {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err != nil {
			return "", fmt.Errorf("Process %d not found", pid)
		}
		return "", fmt.Errorf("Process %d is not managed by init, cannot restart", pid)
	}
	if err := s.RestartService(name); err != nil {
		return "", err
	}
	return fmt.Sprintf("Service '%s' restarted", name), nil
}

// Shutdown begins an orderly shutdown and returns at once.
func (s *Supervisor) Shutdown(reboot bool) {
	go s.post(func() { s.beginShutdown(reboot) })
}

// SystemStatus reports counts and the boot information.
func (s *Supervisor) SystemStatus() wire.SystemStatus {
	st := s.cfg.Info
	st.UptimeSecs = uint64(time.Since(s.started) / time.Second)
	st.ServiceDir = s.cfg.ServiceDir
	st.LogDir = s.cfg.Logs.Dir
	s.call(func() {
		for _, sv := range s.services {
			st.TotalServices++
			if sv.enabled() {
				st.EnabledServices++
			}
			if sv.isActive() || sv.remain {
				st.ActiveServices++
			}
		}
	})
	return st
}
