// Package controltest provides an in-memory control.Handler for tests of the
// control server and of initctl. It stands in for the supervisor only; the
// sockets, processes and files around it in those tests are real.
package controltest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"syscall"

	"github.com/nitroinit/nitroinit/internal/control"
	"github.com/nitroinit/nitroinit/internal/wire"
)

// Handler is an in-memory control.Handler with three services (database,
// webapp, worker). It records calls so tests can check what reached it (and
// what did not).
type Handler struct {
	mu       sync.Mutex
	services map[string]*wire.ServiceInfo
	logs     map[string][]string
	subs     map[string][]*testSub
	calls    []string
	managed  map[int]string
	shutdown []bool
}

// New returns a Handler in its initial state.
func New() *Handler {
	return &Handler{
		services: map[string]*wire.ServiceInfo{
			"webapp":   {Name: "webapp", Enabled: true, Active: true, RestartPolicy: "always", RestartCount: 3, State: "running"},
			"database": {Name: "database", Enabled: true, Active: true, RestartPolicy: "always", RestartCount: 1, State: "running"},
			"worker":   {Name: "worker", Enabled: false, Active: false, RestartPolicy: "on-failure", State: "disabled"},
		},
		logs: map[string][]string{
			"webapp": {"[2026-01-01 10:00:00] listening on :8080", "[2026-01-01 10:00:01] ready"},
		},
		subs:    map[string][]*testSub{},
		managed: map[int]string{},
	}
}

func (b *Handler) record(format string, args ...any) {
	b.mu.Lock()
	b.calls = append(b.calls, fmt.Sprintf(format, args...))
	b.mu.Unlock()
}

// Calls returns the state-changing calls made so far, one line each.
func (b *Handler) Calls() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.calls...)
}

func notFound(name string) error { return fmt.Errorf("Service '%s' not found", name) }

func (b *Handler) get(name string) (*wire.ServiceInfo, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s, ok := b.services[name]
	if !ok {
		return nil, notFound(name)
	}
	return s, nil
}

func (b *Handler) Services() []wire.ServiceInfo {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []wire.ServiceInfo
	for _, n := range []string{"database", "webapp", "worker"} {
		out = append(out, *b.services[n])
	}
	return out
}

func (b *Handler) ServiceStatus(name string) (wire.ServiceStatus, error) {
	s, err := b.get(name)
	if err != nil {
		return wire.ServiceStatus{}, err
	}
	pid, code, wd := 1234, 0, "/app"
	st := wire.ServiceStatus{
		Name: s.Name, Enabled: s.Enabled, Active: s.Active, RestartPolicy: s.RestartPolicy,
		RestartCount: s.RestartCount, RestartSec: 5, ExecStart: "/usr/bin/python3 /app/server.py",
		Dependencies: wire.Dependencies{Before: []string{"monitor"}, After: []string{"database", "cache"}, Requires: []string{"database"}, RequiredBy: []string{}},
		State:        s.State,
	}
	if s.Active {
		st.PID, st.ExitStatus, st.WorkingDirectory = &pid, &code, &wd
	}
	return st, nil
}

func (b *Handler) act(op, name string) error {
	b.record("%s %s", op, name)
	_, err := b.get(name)
	return err
}

func (b *Handler) StartService(name string) error   { return b.act("start", name) }
func (b *Handler) StopService(name string) error    { return b.act("stop", name) }
func (b *Handler) RestartService(name string) error { return b.act("restart", name) }
func (b *Handler) EnableService(name string) error  { return b.act("enable", name) }
func (b *Handler) DisableService(name string) error { return b.act("disable", name) }
func (b *Handler) Reload() error                    { b.record("reload"); return nil }

func (b *Handler) ServiceLogs(name string, n int) (control.LogTail, error) {
	if _, err := b.get(name); err != nil {
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	l := b.logs[name]
	if n < len(l) {
		l = l[len(l)-n:]
	}
	return Lines(l), nil
}

// Lines is a control.LogTail of fixed lines.
type Lines []string

// Each calls fn with every line.
func (l Lines) Each(fn func([]byte) error) error {
	for _, s := range l {
		if err := fn([]byte(s)); err != nil {
			return err
		}
	}
	return nil
}

// Close does nothing.
func (Lines) Close() {}

func (b *Handler) ClearServiceLogs(name string) error {
	if err := b.act("clear", name); err != nil {
		return err
	}
	b.mu.Lock()
	delete(b.logs, name)
	b.mu.Unlock()
	return nil
}

// testSub is a LogSubscription fed by publish.
type testSub struct {
	ch     chan string
	once   sync.Once
	closed chan struct{}
}

func (s *testSub) Next(ctx context.Context) (string, uint64, error) {
	select {
	case l := <-s.ch:
		return l, 0, nil
	case <-ctx.Done():
		return "", 0, ctx.Err()
	case <-s.closed:
		return "", 0, errors.New("subscription closed")
	}
}

func (s *testSub) Close() { s.once.Do(func() { close(s.closed) }) }

func (s *testSub) isClosed() bool {
	select {
	case <-s.closed:
		return true
	default:
		return false
	}
}

func (b *Handler) SubscribeLogs(name string, history int) (control.LogTail, control.LogSubscription, error) {
	if _, err := b.get(name); err != nil {
		return nil, nil, err
	}
	s := &testSub{ch: make(chan string, 100), closed: make(chan struct{})}
	b.mu.Lock()
	defer b.mu.Unlock()
	all := b.logs[name]
	var lines []string
	if history > 0 {
		lines = append(lines, all[max(0, len(all)-history):]...)
	}
	b.subs[name] = append(b.subs[name], s)
	return Lines(lines), s, nil
}

// Publish appends a line to a service's log and hands it to subscribers.
func (b *Handler) Publish(name, line string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.logs[name] = append(b.logs[name], line)
	for _, s := range b.subs[name] {
		if !s.isClosed() {
			s.ch <- line
		}
	}
}

// OpenSubs counts subscriptions of name not yet closed.
func (b *Handler) OpenSubs(name string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, s := range b.subs[name] {
		if !s.isClosed() {
			n++
		}
	}
	return n
}

func (b *Handler) ManagedPIDs() map[int]string {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := map[int]string{}
	for k, v := range b.managed {
		out[k] = v
	}
	return out
}

func (b *Handler) StartProcess(command string, args, env []string) (int, error) {
	b.record("startprocess %s %v %v", command, args, env)
	return 789, nil
}

func (b *Handler) SignalProcess(pid int, sig syscall.Signal, stop bool) (string, error) {
	b.record("signal %d %d %v", pid, int(sig), stop)
	if stop {
		return fmt.Sprintf("SIGTERM sent to process %d", pid), nil
	}
	return fmt.Sprintf("Signal %d sent to process %d", int(sig), pid), nil
}

func (b *Handler) RestartProcess(pid int) (string, error) {
	b.record("restartprocess %d", pid)
	b.mu.Lock()
	name, ok := b.managed[pid]
	b.mu.Unlock()
	if !ok {
		return "", fmt.Errorf("Process %d is not managed by init, cannot restart", pid)
	}
	return fmt.Sprintf("Service '%s' restarted", name), nil
}

func (b *Handler) Shutdown(reboot bool) {
	b.record("shutdown reboot=%v", reboot)
}

func (b *Handler) SystemStatus() wire.SystemStatus {
	return wire.SystemStatus{UptimeSecs: 192735, TotalServices: 3, ActiveServices: 2, EnabledServices: 2, LogDir: "/log", ServiceDir: "/service", Mode: "supervisor"}
}

// SetActive marks a service active or not.
func (b *Handler) SetActive(name string, active bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.services[name].Active = active
}

// SetManaged records pid as the main PID of service name.
func (b *Handler) SetManaged(pid int, name string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.managed[pid] = name
}

var _ control.Handler = (*Handler)(nil)
