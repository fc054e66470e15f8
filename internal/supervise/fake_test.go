package supervise

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nitroinit/nitroinit/internal/logs"
	"github.com/nitroinit/nitroinit/internal/reap"
	"github.com/nitroinit/nitroinit/internal/wait"
)

// fakeOps is Ops with pretend processes and a hand-driven clock: a test
// says when a process exits and when a timer fires, so the state machine
// runs in-process and deterministically.
type fakeOps struct {
	mu      sync.Mutex
	now     time.Time
	next    int
	procs   map[int]*fakeProc
	order   []string // service names (argv[1]) in start order
	timers  []*fakeTimer
	startFn func(argv []string) error // when set, may refuse a start
}

// fakeProc is one pretend process. Its argv[0] is the path started; the
// tests put the service name in argv[1].
type fakeProc struct {
	pid     int
	argv    []string
	env     []string
	onExit  reap.ExitFunc
	ignore  map[syscall.Signal]bool // signals it survives (SIGKILL excepted)
	signals []syscall.Signal
	dead    bool
}

type fakeTimer struct {
	d       time.Duration
	f       func()
	stopped bool
	fired   bool
}

func (t *fakeTimer) Stop() bool {
	was := !t.stopped && !t.fired
	t.stopped = true
	return was
}

func newFakeOps() *fakeOps {
	return &fakeOps{now: time.Unix(1_700_000_000, 0), next: 1000, procs: map[int]*fakeProc{}}
}

func (o *fakeOps) Start(path string, argv []string, attr *syscall.ProcAttr, _ func(int), onExit reap.ExitFunc) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.startFn != nil {
		if err := o.startFn(argv); err != nil {
			return 0, err
		}
	}
	o.next++
	p := &fakeProc{pid: o.next, argv: argv, env: attr.Env, onExit: onExit, ignore: map[syscall.Signal]bool{}}
	if slices.Contains(argv, "stubborn") {
		p.ignore[syscall.SIGTERM] = true
	}
	o.procs[p.pid] = p
	name := ""
	if len(argv) > 1 {
		name = argv[1]
	}
	o.order = append(o.order, name)
	return p.pid, nil
}

func (o *fakeOps) Kill(pid int, sig syscall.Signal) error {
	if pid < 0 {
		pid = -pid
	}
	o.mu.Lock()
	p := o.procs[pid]
	if p == nil || p.dead {
		o.mu.Unlock()
		return syscall.ESRCH
	}
	p.signals = append(p.signals, sig)
	o.mu.Unlock()
	switch {
	case sig == 0, sig == syscall.SIGSTOP, sig == syscall.SIGCONT, sig == syscall.SIGCHLD, sig == syscall.SIGWINCH:
	case sig == syscall.SIGKILL, !p.ignore[sig]:
		o.die(p, syscall.WaitStatus(sig))
	}
	return nil
}

func (o *fakeOps) AfterFunc(d time.Duration, f func()) Timer {
	o.mu.Lock()
	defer o.mu.Unlock()
	t := &fakeTimer{d: d, f: f}
	o.timers = append(o.timers, t)
	return t
}

func (o *fakeOps) Now() time.Time {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.now
}

func (o *fakeOps) die(p *fakeProc, ws syscall.WaitStatus) {
	o.mu.Lock()
	if p.dead {
		o.mu.Unlock()
		return
	}
	p.dead = true
	o.mu.Unlock()
	p.onExit(p.pid, ws)
}

// rig is a supervisor running on fakeOps over a temporary service directory.
type rig struct {
	t    *testing.T
	s    *Supervisor
	ops  *fakeOps
	dir  string
	mu   sync.Mutex
	msgs []string // the supervisor's own messages
}

func (r *rig) logf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	r.mu.Lock()
	r.msgs = append(r.msgs, msg)
	r.mu.Unlock()
}

func (r *rig) messages() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.msgs, "\n")
}

// newRig writes files (name -> TOML; "%s" in a body becomes the service's
// name, for argv[1]) and starts a supervisor on them.
func newRig(t *testing.T, files map[string]string) *rig {
	t.Helper()
	return newRigWith(t, files, nil)
}

// newRigWith is newRig with edit applied to the supervisor's Config (when
// not nil) before it starts.
func newRigWith(t *testing.T, files map[string]string, edit func(*Config)) *rig {
	t.Helper()
	dir := t.TempDir()
	r := &rig{t: t, ops: newFakeOps(), dir: dir}
	if err := os.MkdirAll(filepath.Join(dir, "service"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range files {
		r.write(name, body)
	}
	cfg := Config{
		ServiceDir: filepath.Join(dir, "service"),
		Logs:       logs.Config{Dir: filepath.Join(dir, "log"), RingLines: 100},
		Env:        []string{"PATH=/usr/bin:/bin", "KEEP=init"},
		RuntimeDir: filepath.Join(dir, "run"),
		Ops:        r.ops,
		Logf:       r.logf,
	}
	if edit != nil {
		edit(&cfg)
	}
	r.s = New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.s.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		if err := wait.Until(context.Background(), "the supervisor to shut down", wait.Receive(done, nil)); err != nil {
			t.Errorf("%v; its log:\n%s", err, r.messages())
		}
		if t.Failed() {
			t.Logf("supervisor log:\n%s", r.messages())
		}
	})
	r.sync()
	return r
}

// write puts a service file in place; "%s" in body becomes the name.
func (r *rig) write(file, body string) {
	r.t.Helper()
	name, _, _ := strings.Cut(file, ".")
	body = strings.ReplaceAll(body, "%s", name)
	if err := os.WriteFile(filepath.Join(r.dir, "service", file), []byte(body), 0o644); err != nil {
		r.t.Fatal(err)
	}
}

// sync waits until the loop has run every event queued before it.
func (r *rig) sync() {
	r.t.Helper()
	if !r.s.call(func() {}) {
		r.t.Fatal("supervisor loop has ended")
	}
}

// state returns a service's state and reason, read on the loop.
func (r *rig) state(name string) (State, string) {
	r.t.Helper()
	var st State
	var why string
	r.s.call(func() {
		if sv := r.s.services[name]; sv != nil {
			st, why = sv.state, sv.reason
		} else {
			st, why = -1, "no such service"
		}
	})
	return st, why
}

func (r *rig) wantState(name string, want State) {
	r.t.Helper()
	if st, why := r.state(name); st != want {
		r.t.Fatalf("%s is %v (%s), want %v", name, st, why, want)
	}
}

// proc returns the live pretend process of a service.
func (r *rig) proc(name string) *fakeProc {
	r.t.Helper()
	var pid int
	r.s.call(func() {
		if sv := r.s.services[name]; sv != nil {
			pid = sv.pid
		}
	})
	r.ops.mu.Lock()
	defer r.ops.mu.Unlock()
	p := r.ops.procs[pid]
	if p == nil {
		r.t.Fatalf("%s has no process", name)
	}
	return p
}

// exit ends a service's process with an exit code and lets the loop see it.
func (r *rig) exit(name string, code int) {
	r.t.Helper()
	r.ops.die(r.proc(name), syscall.WaitStatus(code<<8))
	r.sync()
}

// ready sends READY=1 from a service's own process.
func (r *rig) ready(name string) {
	r.t.Helper()
	r.s.call(func() {
		sv := r.s.services[name]
		r.s.onNotify(sv, sv.gen, "READY=1", sv.pid)
	})
}

// started returns the service names in start order and forgets them.
func (r *rig) started() []string {
	r.sync()
	r.ops.mu.Lock()
	defer r.ops.mu.Unlock()
	out := r.ops.order
	r.ops.order = nil
	return out
}

// pending returns the durations of the armed timers.
func (r *rig) pending() []time.Duration {
	r.sync()
	r.ops.mu.Lock()
	defer r.ops.mu.Unlock()
	var out []time.Duration
	for _, t := range r.ops.timers {
		if !t.stopped && !t.fired {
			out = append(out, t.d)
		}
	}
	return out
}

// fire runs every armed timer of duration d, as if d had passed.
func (r *rig) fire(d time.Duration) {
	r.t.Helper()
	r.sync()
	r.ops.mu.Lock()
	var due []*fakeTimer
	for _, t := range r.ops.timers {
		if !t.stopped && !t.fired && t.d == d {
			t.fired = true
			due = append(due, t)
		}
	}
	r.ops.now = r.ops.now.Add(d)
	r.ops.mu.Unlock()
	if len(due) == 0 {
		r.t.Fatalf("no timer of %s armed", d)
	}
	for _, t := range due {
		t.f()
	}
	r.sync()
}

// advance moves the clock without firing timers.
func (r *rig) advance(d time.Duration) {
	r.ops.mu.Lock()
	r.ops.now = r.ops.now.Add(d)
	r.ops.mu.Unlock()
}
