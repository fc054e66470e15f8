package supervise

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/nitroinit/nitroinit/internal/cgroup"
	"github.com/nitroinit/nitroinit/internal/logs"
	"github.com/nitroinit/nitroinit/internal/unit"
	"golang.org/x/sys/unix"
)

// State is a service's state as shown by list and status.
type State int

const (
	stateInactive    State = iota // not running, never started or stopped by request
	stateWaiting                  // queued to start, waiting for services it is ordered after
	stateStarting                 // Type=notify, started, READY=1 not yet received
	stateRunning                  // running (and ready)
	stateStopping                 // stop signal sent, waiting for the exit
	stateAutoRestart              // exited, restarting after RestartSec
	stateExited                   // exited and not restarted by its policy
	stateFailed                   // start limit hit, requirement failed, or could not start
	stateHeld                     // held back by a dependency cycle or missing requirement
	stateInvalid                  // the service file is broken
)

func (s State) String() string {
	return [...]string{"inactive", "waiting", "starting", "running", "stopping", "auto-restart", "exited", "failed", "held", "invalid"}[s]
}

// service is one supervised service. Only the loop goroutine touches it.
type service struct {
	name     string
	unit     *unit.Unit // definition in effect for the current or last run
	pending  *unit.Unit // newer definition on disk, applied at the next start
	entryErr error      // why the service file could not be used
	disabled bool       // disabled on disk (suffix or ServiceEnable=false)
	app      bool       // the AWS /cmd application: its exit shuts down
	removed  bool       // its file is gone; forget it once stopped
	// wanted marks a disabled service started by hand (or pulled in by
	// one): the plan treats it as enabled until it is stopped, so that it
	// is ordered and awaited as at boot.
	wanted bool
	// remain marks a oneshot with RemainAfterExit that succeeded: it is
	// "active (exited)" until stopped.
	remain bool

	state    State
	reason   string
	since    time.Time
	held     string
	pid      int
	gen      int // bumped at every launch, to ignore stale timers and messages
	lastExit *Exit
	restarts int
	manual   bool // stopped on request: the restart policy does not apply
	timedOut bool // init killed it after a start or stop timeout
	// restartAfter starts the service again once its current process is
	// gone (its file was removed, then restored while it was stopping).
	restartAfter bool
	stopWhy      string
	limiter      StartLimiter
	status       string // last STATUS= from sd_notify

	restartTimer Timer
	stopTimer    Timer
	startTimer   Timer
	notify       *notifySocket
	log          *logs.Log
	// cg is the service's cgroup while a run of it may have processes
	// (nil without containment); oomBase is its oom_kill count at the
	// start of the run; draining is set while init waits for the group
	// to empty after the main process exited.
	cg       *cgroup.Group
	oomBase  uint64
	draining bool
	// oomStopped is set once init ended the run because the OOM killer
	// killed one of its processes (systemd's OOMPolicy=stop).
	oomStopped bool
	waiters    []chan struct{} // closed when the service is no longer active
	settled    []chan struct{} // closed when the service is no longer waiting or starting
}

func (s *Supervisor) newService(name string) *service {
	sv := &service{name: name, since: time.Now()}
	l, err := logs.Open(s.cfg.Logs, name)
	if err != nil {
		s.logf("supervise: %s: log: %v (output will be discarded)", name, err)
	} else {
		sv.log = l
	}
	return sv
}

// def is the definition that the next start will use.
func (sv *service) def() *unit.Unit {
	if sv.pending != nil {
		return sv.pending
	}
	return sv.unit
}

func (sv *service) enabled() bool {
	return sv.entryErr == nil && sv.def() != nil && !sv.disabled
}

func (sv *service) isActive() bool {
	return sv.state == stateStarting || sv.state == stateRunning || sv.state == stateStopping
}

// apply takes a freshly loaded entry for this service.
func (sv *service) apply(e *unit.Entry) {
	sv.entryErr = e.Err
	if e.Err != nil {
		if !sv.isActive() {
			sv.state, sv.reason, sv.since = stateInvalid, e.Err.Error(), time.Now()
		}
		return
	}
	sv.disabled = !e.Unit.Enabled()
	switch {
	case sv.unit == nil:
		sv.unit = e.Unit
	case sv.unit.Hash == e.Unit.Hash:
		sv.pending = nil
	case sv.isActive() || sv.state == stateAutoRestart:
		sv.pending = e.Unit
	default:
		sv.unit, sv.pending = e.Unit, nil
	}
	if sv.state == stateInvalid {
		sv.state, sv.reason = stateInactive, ""
	}
	u := sv.def()
	sv.limiter.Burst, sv.limiter.Interval = u.StartLimitBurst, u.StartLimitInterval
}

func (s *Supervisor) setState(sv *service, st State, reason string) {
	sv.state, sv.reason, sv.since = st, reason, time.Now()
	if !sv.isActive() && st != stateWaiting {
		for _, w := range sv.waiters {
			close(w)
		}
		sv.waiters = nil
	}
	if st != stateWaiting && st != stateStarting {
		for _, w := range sv.settled {
			close(w)
		}
		sv.settled = nil
		s.checkSettled()
	}
}

func (sv *service) cancelTimers() {
	for _, t := range []*Timer{&sv.restartTimer, &sv.stopTimer, &sv.startTimer} {
		if *t != nil {
			(*t).Stop()
			*t = nil
		}
	}
}

func (sv *service) logLine(format string, args ...any) {
	if sv.log != nil {
		sv.log.Printf(format, args...)
	}
}

// launch starts the service's main process. auto marks a start by the
// restart policy, which is subject to the start limit.
func (s *Supervisor) launch(sv *service, auto bool) {
	if sv.pending != nil {
		sv.unit, sv.pending = sv.pending, nil
		sv.limiter.Burst, sv.limiter.Interval = sv.unit.StartLimitBurst, sv.unit.StartLimitInterval
	}
	u := sv.unit
	if !auto {
		sv.limiter.Reset()
	}
	if !sv.limiter.Allow(s.ops.Now()) {
		why := fmt.Sprintf("start limit hit: %d starts within %s; use initctl start, restart or reload to try again",
			u.StartLimitBurst, u.StartLimitInterval)
		s.setState(sv, stateFailed, why)
		s.logf("supervise: %s: %s", sv.name, why)
		sv.logLine("init: %s", why)
		s.kick()
		return
	}
	sv.remain = false
	if auto {
		// Counted here, once allowed: a restart the limit refused
		// did not happen.
		sv.restarts++
	}
	sv.manual = false
	sv.gen++
	gen := sv.gen
	sv.status = ""
	sv.oomStopped = false

	base := s.cfg.Env
	if sv.app {
		base = nil // see Config.App
	}
	env := mergeEnv(base, u.Environment)
	if u.Type == unit.TypeNotify {
		ns, err := listenNotify(sv.name, filepath.Join(s.cfg.RuntimeDir, "notify", sv.name), func(msg string, pid int) {
			s.post(func() { s.onNotify(sv, gen, msg, pid) })
		}, s.logf)
		if err != nil {
			s.failStart(sv, gen, fmt.Errorf("notify socket: %w", err))
			return
		}
		sv.notify = ns
		env = mergeEnv(env, []string{"NOTIFY_SOCKET=" + ns.path})
	}

	cgfd, err := s.contain(sv, u)
	if err != nil {
		s.failStart(sv, gen, err)
		return
	}
	atExec := s.procLimits(sv, u)
	if sv.cg != nil && cgfd == nil {
		atExec = s.moveInto(sv, atExec)
	}
	onExit := func(pid int, ws syscall.WaitStatus) {
		s.post(func() { s.onExit(sv, gen, exitFromStatus(ws)) })
	}
	pid, err := s.spawn(u.Argv, env, u, sv.log, cgfd, atExec, onExit)
	if cgfd != nil {
		cgfd.Close()
		if err != nil && cgroup.CloneIntoUnsupported(err) {
			// Linux before 5.7: start it, and move it in before it runs.
			s.noCloneInto = true
			s.logf("supervise: this kernel cannot start a process inside a cgroup (clone3 CLONE_INTO_CGROUP: %v); services are moved into theirs before they run instead", err)
			pid, err = s.spawn(u.Argv, env, u, sv.log, nil, s.moveInto(sv, s.procLimits(sv, u)), onExit)
		}
	}
	if err != nil {
		s.failStart(sv, gen, err)
		return
	}
	sv.pid = pid
	if sv.notify != nil {
		cg := ""
		if sv.cg != nil {
			cg = sv.cg.Path
		}
		sv.notify.setPID(pid, cg)
	}
	sv.logLine("init: started %s (pid %d)", u.ExecStart, pid)
	s.logf("supervise: %s: started (pid %d)", sv.name, pid)
	if u.Type == unit.TypeNotify || u.Type == unit.TypeOneshot {
		if u.Type == unit.TypeNotify {
			s.setState(sv, stateStarting, "waiting for READY=1")
		} else {
			s.setState(sv, stateStarting, "running to completion")
		}
		if u.TimeoutStartSec > 0 {
			sv.startTimer = s.ops.AfterFunc(u.TimeoutStartSec, func() {
				s.post(func() { s.onStartTimeout(sv, gen) })
			})
		}
		return
	}
	s.setState(sv, stateRunning, "")
	s.kick()
}

// failStart handles a service whose process could not be started at all.
func (s *Supervisor) failStart(sv *service, gen int, err error) {
	s.logf("supervise: %s: cannot start: %v", sv.name, err)
	sv.logLine("init: cannot start: %v", err)
	sv.closeNotify()
	s.onExit(sv, gen, Exit{ExecErr: err})
}

func (sv *service) closeNotify() {
	if sv.notify != nil {
		sv.notify.Close()
		sv.notify = nil
	}
}

// onExit handles the end of the main process of generation gen.
func (s *Supervisor) onExit(sv *service, gen int, e Exit) {
	if gen != sv.gen || sv.draining {
		return
	}
	if sv.cg != nil && !s.release(sv, gen, &e) {
		return // called again once the group is empty
	}
	if sv.timedOut {
		e.TimedOut = true
		sv.timedOut = false
	}
	if sv.pid > 0 {
		// Whatever is left of the process group goes with its leader, as
		// with systemd's default control-group kill mode.
		s.ops.Kill(-sv.pid, syscall.SIGKILL)
	}
	sv.pid = 0
	sv.cancelTimers()
	sv.closeNotify()
	sv.lastExit = &e
	sv.logLine("init: %s", e)
	s.logf("supervise: %s: %s", sv.name, e)

	switch {
	case s.stopping != nil:
		s.setState(sv, stateInactive, sv.stopWhy)
		s.stopping.progress(s)
	case sv.app:
		// As with AWS's init, the enclave ends with its command, however
		// the command ended (a manual stop included).
		s.setState(sv, stateExited, e.String())
		s.logf("supervise: application %s ended (%s): shutting down", sv.name, e)
		s.beginShutdown(false)
	case sv.unit.Type == unit.TypeOneshot && sv.state == stateStarting && e.Success():
		// The start is complete; what is ordered after it may start.
		sv.remain = sv.unit.RemainAfterExit
		s.setState(sv, stateExited, e.String())
	case sv.manual || sv.removed:
		s.setState(sv, stateInactive, sv.stopWhy)
		if sv.removed {
			s.forget(sv)
		} else if sv.restartAfter {
			sv.restartAfter = false
			s.startSet([]string{sv.name}, false)
		}
	case ShouldRestart(sv.unit.Restart, e):
		s.setState(sv, stateAutoRestart, e.String())
		delay := sv.unit.RestartSec
		g := sv.gen
		sv.restartTimer = s.ops.AfterFunc(delay, func() {
			s.post(func() {
				if sv.gen != g || sv.state != stateAutoRestart {
					return
				}
				sv.restartTimer = nil
				switch {
				case sv.entryErr != nil:
					s.setState(sv, stateInvalid, sv.entryErr.Error())
				case sv.held != "":
					s.setState(sv, stateHeld, sv.held)
				default:
					s.launch(sv, true)
				}
			})
		})
	case e.ExecErr != nil, sv.unit.Type == unit.TypeOneshot && !e.Success():
		s.setState(sv, stateFailed, e.String())
	default:
		s.setState(sv, stateExited, e.String())
	}
	s.kick()
}

func (s *Supervisor) onStartTimeout(sv *service, gen int) {
	if gen != sv.gen || sv.state != stateStarting || sv.pid <= 0 {
		return // a pid of 0 (the main process exited) must never reach kill(2)
	}
	why := fmt.Sprintf("no READY=1 within %s", sv.unit.TimeoutStartSec)
	if sv.unit.Type == unit.TypeOneshot {
		why = fmt.Sprintf("did not finish within %s (TimeoutStartSec)", sv.unit.TimeoutStartSec)
	}
	s.logf("supervise: %s: %s, killing it", sv.name, why)
	sv.logLine("init: %s, killing it", why)
	sv.timedOut = true
	s.ops.Kill(-sv.pid, syscall.SIGKILL)
	s.killGroup(sv)
}

func (s *Supervisor) onNotify(sv *service, gen int, msg string, pid int) {
	if gen != sv.gen {
		return
	}
	// Only the service's own processes (its process group or its
	// cgroup, as systemd's NotifyAccess=all) may speak for it: the socket
	// is writable by all.
	if pid <= 0 || pid != sv.pid && !inGroup(pid, sv.pid) && !(sv.cg != nil && cgroup.OfProcess(pid) == sv.cg.Path) {
		s.logf("supervise: %s: ignoring a notification from pid %d, which is not the service's", sv.name, pid)
		return
	}
	for _, line := range strings.Split(msg, "\n") {
		k, v, _ := strings.Cut(line, "=")
		switch k {
		case "READY":
			if v == "1" && sv.state == stateStarting {
				if sv.startTimer != nil {
					sv.startTimer.Stop()
					sv.startTimer = nil
				}
				s.setState(sv, stateRunning, "")
				s.logf("supervise: %s: ready", sv.name)
				sv.logLine("init: ready")
				s.kick()
			}
		case "STATUS":
			sv.status = v
		case "STOPPING":
			// The service announces its own exit; nothing to do until it exits.
		}
	}
}

// stop stops a service on request: KillSignal to the process group, SIGKILL
// after TimeoutStopSec. A stop is remembered, so the restart policy does not
// bring the service back.
func (s *Supervisor) stop(sv *service, why string) {
	sv.manual = true
	sv.wanted = false
	sv.stopWhy = why
	if sv.draining {
		return // the main process is gone and the rest is being killed
	}
	switch sv.state {
	case stateWaiting, stateAutoRestart:
		sv.cancelTimers()
		s.setState(sv, stateInactive, why)
		return
	case stateExited:
		if sv.remain {
			sv.remain = false
			if sv.cg != nil {
				// What the oneshot left running goes now.
				s.killGroup(sv)
				sv.cg = nil // the next start makes the group anew (contain)
			}
			s.setState(sv, stateInactive, why)
		}
		return
	case stateStarting, stateRunning:
	default:
		return
	}
	s.signalStop(sv, sv.unit.KillSignal, true)
}

// signalStop sends sig (to the whole group when group is set) and arms the
// SIGKILL escalation.
func (s *Supervisor) signalStop(sv *service, sig syscall.Signal, group bool) {
	if sv.pid <= 0 {
		return // never kill(0) or kill(-0): that would be init's own group
	}
	target := sv.pid
	if group {
		target = -sv.pid
	}
	s.setState(sv, stateStopping, sv.stopWhy)
	if err := s.ops.Kill(target, sig); err != nil && err != syscall.ESRCH {
		s.logf("supervise: %s: kill %d %s: %v", sv.name, target, signalName(sig), err)
	}
	if group && sv.cg != nil {
		// Processes that left the process group (a double-forked
		// daemon) are still in the cgroup.
		if sig == syscall.SIGKILL {
			s.killGroup(sv)
		} else {
			sv.cg.Signal(sig)
		}
	}
	if sig == syscall.SIGKILL {
		return
	}
	gen := sv.gen
	timeout := sv.unit.TimeoutStopSec
	if sv.stopTimer != nil {
		sv.stopTimer.Stop()
	}
	sv.stopTimer = s.ops.AfterFunc(timeout, func() {
		s.post(func() {
			if sv.gen == gen && sv.state == stateStopping && sv.pid > 0 {
				s.logf("supervise: %s: did not stop within %s, sending SIGKILL to its process group", sv.name, timeout)
				sv.logLine("init: did not stop within %s, sending SIGKILL", timeout)
				sv.timedOut = true
				s.ops.Kill(-sv.pid, syscall.SIGKILL)
				s.killGroup(sv)
			}
		})
	})
}

// forget drops a service whose file is gone and which is no longer running.
func (s *Supervisor) forget(sv *service) {
	for _, w := range append(sv.waiters, sv.settled...) {
		close(w)
	}
	sv.waiters, sv.settled = nil, nil
	sv.cancelTimers()
	sv.closeNotify()
	if sv.log != nil {
		sv.log.Close()
	}
	delete(s.services, sv.name)
}

// mergeEnv returns base with extra applied: a later KEY=VALUE replaces an
// earlier one with the same key, and the first occurrence keeps its place.
// An entry without "=" is skipped.
func mergeEnv(base, extra []string) []string {
	out := make([]string, 0, len(base)+len(extra))
	idx := map[string]int{}
	for _, kv := range append(append([]string(nil), base...), extra...) {
		k, _, ok := strings.Cut(kv, "=")
		if !ok {
			// A bare NAME (Environment = ["NAME"]) keeps the value
			// base has, if any.
			continue
		}
		if i, ok := idx[k]; ok {
			out[i] = kv
			continue
		}
		idx[k] = len(out)
		out = append(out, kv)
	}
	return out
}

// spawn starts argv in its own session and process group, with stdin on
// /dev/null and stdout and stderr on one pipe into log.
// With cgfd set, the process starts inside that cgroup (clone3 with
// CLONE_INTO_CGROUP), so not even its first instruction runs outside it.
// atExec, if set, runs between the exec and the program's start.
func (s *Supervisor) spawn(argv, env []string, u *unit.Unit, log *logs.Log, cgfd *os.File, atExec func(int), onExit func(int, syscall.WaitStatus)) (int, error) {
	if len(argv) == 0 {
		return 0, fmt.Errorf("empty command")
	}
	path := argv[0]
	if !strings.Contains(path, "/") {
		p, err := lookPath(path, env)
		if err != nil {
			return 0, err
		}
		path = p
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return 0, err
	}
	defer devnull.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	attr := &syscall.ProcAttr{
		Env:   env,
		Files: []uintptr{devnull.Fd(), w.Fd(), w.Fd()},
		Sys:   &syscall.SysProcAttr{Setsid: true},
	}
	if cgfd != nil {
		attr.Sys.UseCgroupFD, attr.Sys.CgroupFD = true, int(cgfd.Fd())
	}
	if u != nil {
		attr.Dir = u.WorkingDirectory
		cred, err := u.Credential()
		if err != nil {
			r.Close()
			w.Close()
			return 0, err
		}
		attr.Sys.Credential = cred
	}
	if attr.Dir != "" {
		// chdir and exec fail with the same errno; tell them apart.
		if fi, err := os.Stat(attr.Dir); err != nil {
			r.Close()
			w.Close()
			return 0, fmt.Errorf("WorkingDirectory: %w", err)
		} else if !fi.IsDir() {
			r.Close()
			w.Close()
			return 0, fmt.Errorf("WorkingDirectory %s is not a directory", attr.Dir)
		}
	}
	pid, err := s.ops.Start(path, argv, attr, atExec, onExit)
	w.Close()
	if err != nil {
		r.Close()
		return 0, startError(path, err)
	}
	s.captures.Add(1)
	go func() {
		defer s.captures.Done()
		defer r.Close()
		defer func() {
			if v := recover(); v != nil {
				s.logf("supervise: log capture panic: %v", v)
			}
		}()
		var out io.Reader = r
		if u != nil && u == s.cfg.App && s.cfg.AppConsole != nil {
			out = io.TeeReader(r, ignoreErrors{s.cfg.AppConsole})
		}
		if log != nil {
			log.Capture(out)
		} else {
			buf := make([]byte, 32<<10)
			for {
				if _, err := out.Read(buf); err != nil {
					return
				}
			}
		}
	}()
	return pid, nil
}

// startError explains why fork or exec of path failed: which file, or
// which resource limit.
func startError(path string, err error) error {
	var lim unix.Rlimit
	switch {
	case errors.Is(err, syscall.EMFILE):
		unix.Getrlimit(unix.RLIMIT_NOFILE, &lim)
		return fmt.Errorf("fork %s: %w (init's open-file limit RLIMIT_NOFILE, %d, is reached)", path, err, lim.Cur)
	case errors.Is(err, syscall.ENFILE):
		return fmt.Errorf("fork %s: %w (the system-wide open-file limit, fs.file-max, is reached)", path, err)
	case errors.Is(err, syscall.EAGAIN):
		unix.Getrlimit(unix.RLIMIT_NPROC, &lim)
		return fmt.Errorf("fork %s: %w (the process limit is reached: RLIMIT_NPROC is %d for the service's user; or the system's kernel.pid_max / kernel.threads-max)", path, err, lim.Cur)
	case errors.Is(err, syscall.ENOENT):
		if _, serr := os.Stat(path); serr == nil {
			return fmt.Errorf("exec %s: %w (the file exists: its interpreter on the #! line or its dynamic loader is missing)", path, err)
		}
		return fmt.Errorf("exec %s: %w", path, err)
	}
	return fmt.Errorf("exec %s: %w", path, err)
}

// lookPath finds a bare command name in the PATH of the service's
// environment (or a sane default), as a shell would.
func lookPath(name string, env []string) (string, error) {
	pathVar := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			pathVar = v
		}
	}
	for _, dir := range filepath.SplitList(pathVar) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	if pathVar == "" {
		return "", fmt.Errorf("%s: command not found: PATH is empty (set PATH in init.yaml's environment or the service's Environment, or give an absolute path)", name)
	}
	return "", fmt.Errorf("%s: command not found in PATH %s", name, pathVar)
}

// ignoreErrors keeps a failing console from ending the capture it tees.
type ignoreErrors struct{ w io.Writer }

func (e ignoreErrors) Write(p []byte) (int, error) {
	e.w.Write(p)
	return len(p), nil
}
