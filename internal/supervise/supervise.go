// Package supervise runs services: it starts them in dependency order,
// captures their output, restarts them by policy, stops them with escalation,
// applies reloads as a diff, and shuts everything down in reverse order.
//
// All service state is owned by one goroutine, the loop started by Run.
// Everything else (exit statuses from the reaper, timers, sd_notify
// messages, control requests) reaches that state by posting a function to
// the loop, so there are no locks around service state.
package supervise

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nitroinit/nitroinit/internal/cgroup"
	"github.com/nitroinit/nitroinit/internal/depgraph"
	"github.com/nitroinit/nitroinit/internal/logs"
	"github.com/nitroinit/nitroinit/internal/reap"
	"github.com/nitroinit/nitroinit/internal/unit"
	"github.com/nitroinit/nitroinit/internal/wire"
)

// Config configures a Supervisor.
type Config struct {
	ServiceDir string
	Logs       logs.Config // Dir, MaxSize, MaxFiles, RingLines
	// Env is the environment every service starts from (init's own
	// environment with init.yaml's environment applied).
	Env []string
	// RuntimeDir holds sd_notify sockets. It is created if missing.
	RuntimeDir string
	Reaper     *reap.Reaper
	// Ops starts and signals service processes and arms timers; nil means
	// the real system, with processes started through Reaper.
	Ops  Ops
	Logf func(format string, args ...any)
	// App, when set, is a service defined outside the service directory
	// (the AWS /cmd image layout). It is added only when the service
	// directory defines no enabled service, and when it exits the system
	// shuts down, as AWS's init does. Its environment is its own
	// Environment alone, not Env on top, as AWS's init gives its command
	// /env alone.
	App *unit.Unit
	// AppConsole, when set, also gets App's output as written (the
	// console, where AWS's init leaves its command's output). Write
	// errors are ignored; the output is captured as any service's.
	AppConsole io.Writer
	// Cgroups, when set, is the cgroup v2 subtree in which every service
	// gets its own group: limits apply, and a stop ends the whole group.
	// nil runs services contained by their process group only.
	Cgroups *cgroup.Tree
	// Info is copied into SystemStatus (mode, heartbeat, NSM, modules).
	Info wire.SystemStatus
	// Settled, when set, is called once, on the loop, when start-up has
	// settled: every service the boot started has left Waiting and
	// Starting (it runs, has exited or has failed). It must not block.
	Settled func()
}

// Supervisor owns every service. Create it with New and run it with Run.
type Supervisor struct {
	cfg    Config
	ops    Ops
	ownAdj int // init's own oom_score_adj, inherited by what it forks
	// noCloneInto is set (on the loop) once the kernel refused to start
	// a process inside a cgroup (before Linux 5.7).
	noCloneInto bool
	logf        func(string, ...any)
	events      chan event
	started     time.Time

	// Owned by the loop goroutine.
	services map[string]*service
	plan     depgraph.Plan
	stopping *shutdown
	adhoc    *logs.Log
	appOn    bool // the /cmd application is one of the services
	settling bool // start-up runs and Config.Settled is still to be called

	captures sync.WaitGroup // log capture goroutines, drained before the logs close

	// version counts the loop's state-changing events; snap is the view of
	// every service built at some version. Readers use snap while it is
	// current, which spares them a hop to the loop (see snapshot).
	version  atomic.Uint64
	snap     atomic.Pointer[snapshot]
	finished chan struct{} // closed when the shutdown sequence is complete
	exited   chan struct{} // closed when the loop has stopped running events
	rebootF  atomic.Bool   // the shutdown asked for a reboot
	shutting atomic.Bool
	running  atomic.Bool
}

// New returns a supervisor for cfg.
func New(cfg Config) *Supervisor {
	logf := cfg.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	if cfg.Reaper == nil {
		cfg.Reaper = reap.New(logf)
	}
	ops := cfg.Ops
	if ops == nil {
		ops = systemOps{cfg.Reaper}
	}
	return &Supervisor{
		cfg:      cfg,
		ops:      ops,
		ownAdj:   ownOOMScoreAdj(),
		logf:     logf,
		events:   make(chan event, 4096),
		started:  time.Now(),
		services: map[string]*service{},
		finished: make(chan struct{}),
		exited:   make(chan struct{}),
	}
}

// post queues f to run on the loop goroutine. It is safe from any goroutine
// but the loop itself.
func (s *Supervisor) post(f func()) {
	select {
	case s.events <- event{f: f}:
	case <-s.exited:
	}
}

// event is a function for the loop to run. A read-only one promises not to
// change service state, so it does not invalidate the snapshot.
type event struct {
	f        func()
	readOnly bool
}

// call runs f on the loop and waits for it.
// It reports false, without running f, once the loop has ended (after a
// shutdown), so that no caller waits forever for a loop that is gone.
func (s *Supervisor) call(f func()) bool {
	return s.run(event{f: f})
}

// run hands e to the loop and waits until it has run, or the loop has ended.
func (s *Supervisor) run(e event) bool {
	done := make(chan struct{})
	f := e.f
	e.f = func() {
		defer close(done)
		f()
	}
	select {
	case s.events <- e:
	case <-s.exited:
		return false
	}
	select {
	case <-done:
		return true
	case <-s.exited:
		return false
	}
}

// Run loads the service directory, starts every enabled service and
// supervises them until a shutdown (ctx ending counts as a power-off
// request) has stopped them all. It reports whether a reboot was asked for.
func (s *Supervisor) Run(ctx context.Context) (reboot bool) {
	if err := os.MkdirAll(filepath.Join(s.cfg.RuntimeDir, "notify"), 0o755); err != nil {
		s.logf("supervise: runtime dir: %v (Type=notify services will fail)", err)
	}
	if l, err := logs.Open(s.cfg.Logs, unit.AdhocLog); err != nil {
		s.logf("supervise: log for ad-hoc processes: %v", err)
	} else {
		s.adhoc = l
	}
	s.running.Store(true)
	s.load(true, "")
	s.settling = s.cfg.Settled != nil
	s.checkSettled()
	if s.cfg.Cgroups != nil {
		go s.watchOOM()
	}
	done := ctx.Done()
	for {
		select {
		case e := <-s.events:
			// Bump the version before a state change, not after: a
			// reader woken by the change itself (a stop's waiter, say)
			// must already see the snapshot as stale.
			if !e.readOnly {
				s.version.Add(1)
			}
			s.safely(e.f)
		case <-done:
			done = nil
			s.version.Add(1)
			s.beginShutdown(false)
		case <-s.finished:
			close(s.exited)
			s.closeLogs()
			return s.rebootF.Load()
		}
	}
}

// checkSettled calls Config.Settled once no service is Waiting or Starting
// any more, the first time after start-up; it runs on the loop.
func (s *Supervisor) checkSettled() {
	if !s.settling {
		return
	}
	for _, sv := range s.services {
		if sv.state == stateWaiting || sv.state == stateStarting {
			return
		}
	}
	s.settling = false
	s.cfg.Settled()
}

func (s *Supervisor) safely(f func()) {
	defer func() {
		if v := recover(); v != nil {
			s.logf("supervise: panic: %v\n%s", v, debug.Stack())
		}
	}()
	f()
}

// closeLogs waits (briefly) for the output of the stopped services to be
// drained into their logs, then flushes and closes them.
func (s *Supervisor) closeLogs() {
	drained := make(chan struct{})
	go func() {
		s.captures.Wait()
		close(drained)
	}()
	select {
	case <-drained:
	case <-time.After(3 * time.Second):
		s.logf("supervise: some service output still open after 3s (a process left its process group?); closing logs anyway")
	}
	for _, sv := range s.services {
		if sv.log != nil {
			sv.log.Flush()
			sv.log.Close()
		}
	}
	if s.adhoc != nil {
		s.adhoc.Close()
	}
}

// load reads the service directory and brings the running set in line with
// it. At boot every enabled service starts; on reload only new ones do,
// changed ones keep running and take their new definition at the next
// start, removed ones are stopped, and failed ones start again. With only
// set, just that service's file is applied (enable and disable), and no
// other service is started or stopped.
func (s *Supervisor) load(boot bool, only string) error {
	entries, dirErr := unit.LoadDir(s.cfg.ServiceDir)
	if dirErr != nil {
		s.logf("supervise: %v", dirErr)
	}
	if only != "" {
		entries = slices.DeleteFunc(entries, func(e *unit.Entry) bool { return e.Name != only })
	}
	seen := map[string]bool{}
	anyEnabled := false
	for _, e := range entries {
		if e.Unit != nil && e.Unit.Enabled() {
			anyEnabled = true
		}
	}
	// Whether the /cmd application runs is decided once, at boot; a reload
	// neither adds it later nor takes it away.
	if boot && s.cfg.App != nil {
		s.appOn = !anyEnabled
		if !s.appOn {
			s.logf("supervise: /cmd ignored: the service directory %s defines enabled services", s.cfg.ServiceDir)
		}
	}
	if s.appOn {
		entries = append(entries, &unit.Entry{Name: s.cfg.App.Name, Path: s.cfg.App.Path, Unit: s.cfg.App})
	}
	var toStart []string
	for _, e := range entries {
		seen[e.Name] = true
		sv, ok := s.services[e.Name]
		if !ok {
			sv = s.newService(e.Name)
			s.services[e.Name] = sv
			sv.app = s.cfg.App != nil && e.Unit == s.cfg.App
		}
		// A service whose file could not be used before is new as far as
		// starting goes: it never ran from this definition.
		isNew := !ok || sv.state == stateInvalid
		if sv.removed {
			// Its file came back while it was stopping: start it again
			// once it is down.
			sv.removed = false
			sv.restartAfter = sv.isActive()
			isNew = !sv.restartAfter
		}
		sv.apply(e)
		if e.Err != nil {
			s.logf("supervise: %v", e.Err)
			continue
		}
		for _, w := range e.Unit.Warnings {
			s.logf("supervise: warning: %s", w)
		}
		switch {
		case !sv.enabled():
		case boot || isNew:
			toStart = append(toStart, sv.name)
		case sv.state == stateFailed && !sv.isActive() && only == "":
			// A reload clears a start-limit failure.
			sv.limiter.Reset()
			toStart = append(toStart, sv.name)
		}
	}
	for name, sv := range s.services {
		if seen[name] || only != "" && name != only || sv.app {
			continue
		}
		s.logf("supervise: %s: service file removed", name)
		sv.removed = true
		s.stop(sv, "service file removed")
		if !sv.isActive() {
			s.forget(sv) // nothing to wait for; otherwise onExit forgets it
		}
	}
	var wasHeld []string
	for name, sv := range s.services {
		if sv.state == stateHeld && only == "" {
			wasHeld = append(wasHeld, name)
		}
	}
	s.replan()
	// A service held back until now whose cause is gone (the missing
	// requirement was added, the cycle broken) starts, as at boot.
	for _, name := range wasHeld {
		if sv := s.services[name]; sv != nil && sv.state == stateInactive && sv.enabled() {
			toStart = append(toStart, name)
		}
	}
	s.startSet(toStart, false)
	return dirErr
}

// replan recomputes the dependency plan from the current definitions and
// marks services held back by it.
func (s *Supervisor) replan() {
	var nodes []depgraph.Node
	for _, sv := range s.services {
		if sv.removed || sv.def() == nil {
			continue
		}
		u := sv.def()
		nodes = append(nodes, depgraph.Node{
			Name: sv.name, Disabled: !sv.enabled() && !sv.wanted,
			Before: u.Before, After: u.After, Requires: u.Requires, RequiredBy: u.RequiredBy,
		})
	}
	s.plan = depgraph.Resolve(nodes)
	for _, sv := range s.services {
		reason, held := s.plan.Held[sv.name]
		sv.held = reason
		if held && !sv.isActive() && sv.state != stateHeld {
			s.setState(sv, stateHeld, reason)
			s.logf("supervise: %s: held back: %s", sv.name, reason)
		} else if !held && sv.state == stateHeld {
			s.setState(sv, stateInactive, "")
		}
	}
}

// startSet starts the named services (and, when pull is set, the services
// they require) in plan order, each after its ordering predecessors are
// ready.
func (s *Supervisor) startSet(names []string, pull bool) {
	want := map[string]bool{}
	var add func(n string)
	add = func(n string) {
		if want[n] {
			return
		}
		want[n] = true
		if pull {
			for _, r := range s.plan.Requires[n] {
				if sv, ok := s.services[r]; ok && !sv.isActive() {
					add(r)
				}
			}
		}
	}
	for _, n := range names {
		add(n)
	}
	for _, n := range s.sortedNames() {
		if !want[n] {
			continue
		}
		sv := s.services[n]
		if sv == nil || sv.isActive() || sv.remain || sv.state == stateWaiting || sv.held != "" || sv.entryErr != nil {
			continue
		}
		sv.cancelTimers()
		s.setState(sv, stateWaiting, "")
	}
	s.kick()
}

// kick starts every waiting service whose predecessors have settled, and
// fails those whose requirements failed. It runs after every state change
// that could unblock someone.
func (s *Supervisor) kick() {
	if s.stopping != nil {
		return
	}
	for progress := true; progress; {
		progress = false
		for _, n := range s.startOrder() {
			sv := s.services[n]
			if sv == nil || sv.state != stateWaiting {
				continue
			}
			blocked := false
			for _, p := range s.plan.Waits[n] {
				if ps := s.services[p]; ps != nil && (ps.state == stateWaiting || ps.state == stateStarting) {
					blocked = true
					break
				}
			}
			for _, r := range s.plan.Requires[n] {
				// A requirement between restarts may come back: wait.
				if rs := s.services[r]; rs != nil && rs.state == stateAutoRestart {
					blocked = true
				}
			}
			if blocked {
				continue
			}
			if why := s.unmetRequirement(sv); why != "" {
				s.setState(sv, stateFailed, why)
				s.logf("supervise: %s: not started: %s", sv.name, why)
				progress = true
				continue
			}
			s.launch(sv, false)
			progress = true
		}
	}
}

// startOrder is the plan's order followed by services outside the plan that
// were asked to start anyway (disabled ones, started by hand, as systemd
// allows), by name.
func (s *Supervisor) startOrder() []string {
	inPlan := make(map[string]bool, len(s.plan.Order))
	for _, n := range s.plan.Order {
		inPlan[n] = true
	}
	order := s.plan.Order
	for _, n := range s.sortedNames() {
		if !inPlan[n] && s.services[n].state == stateWaiting {
			order = append(order[:len(order):len(order)], n)
		}
	}
	return order
}

func (s *Supervisor) unmetRequirement(sv *service) string {
	for _, r := range s.plan.Requires[sv.name] {
		rs := s.services[r]
		switch {
		case rs == nil:
			return fmt.Sprintf("requirement %q does not exist", r)
		case rs.state == stateRunning:
		case rs.state == stateExited && rs.lastExit != nil && rs.lastExit.Clean():
			// A oneshot that completed, or a service that ended well.
		default:
			why := rs.state.String()
			if rs.reason != "" {
				why += ": " + rs.reason
			}
			return fmt.Sprintf("requirement %q failed (%s)", r, why)
		}
	}
	return ""
}

// Errors shared by the control methods.
var (
	errShuttingDown = errors.New("init is shutting down")
)

func notFound(name string) error { return fmt.Errorf("Service '%s' not found", name) }

// sortedNames returns the service names in order.
func (s *Supervisor) sortedNames() []string {
	names := make([]string, 0, len(s.services))
	for n := range s.services {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
