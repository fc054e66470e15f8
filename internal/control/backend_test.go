package control

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"syscall"

	"github.com/nitroinit/nitroinit/internal/wire"
)

// testBackend is an in-memory Backend for exercising the server logic. It
// records calls so tests can check what reached it (and what did not).
type testBackend struct {
	mu       sync.Mutex
	services map[string]*wire.ServiceInfo
	logs     map[string][]string
	subs     map[string][]*testSub
	calls    []string
	managed  map[int]string
	shutdown []bool
}

func newTestBackend() *testBackend {
	return &testBackend{
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

func (b *testBackend) record(format string, args ...any) {
	b.mu.Lock()
	b.calls = append(b.calls, fmt.Sprintf(format, args...))
	b.mu.Unlock()
}

func (b *testBackend) Calls() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.calls...)
}

func notFound(name string) error { return fmt.Errorf("Service '%s' not found", name) }

func (b *testBackend) get(name string) (*wire.ServiceInfo, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s, ok := b.services[name]
	if !ok {
		return nil, notFound(name)
	}
	return s, nil
}

func (b *testBackend) Services() []wire.ServiceInfo {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []wire.ServiceInfo
	for _, n := range []string{"database", "webapp", "worker"} {
		out = append(out, *b.services[n])
	}
	return out
}

func (b *testBackend) ServiceStatus(name string) (wire.ServiceStatus, error) {
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

func (b *testBackend) act(op, name string) error {
	b.record("%s %s", op, name)
	_, err := b.get(name)
	return err
}

func (b *testBackend) StartService(name string) error   { return b.act("start", name) }
func (b *testBackend) StopService(name string) error    { return b.act("stop", name) }
func (b *testBackend) RestartService(name string) error { return b.act("restart", name) }
func (b *testBackend) EnableService(name string) error  { return b.act("enable", name) }
func (b *testBackend) DisableService(name string) error { return b.act("disable", name) }
func (b *testBackend) Reload() error                    { b.record("reload"); return nil }

func (b *testBackend) ServiceLogs(name string, n int) ([]string, error) {
	if _, err := b.get(name); err != nil {
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	l := b.logs[name]
	if n < len(l) {
		l = l[len(l)-n:]
	}
	return append([]string{}, l...), nil
}

func (b *testBackend) ClearServiceLogs(name string) error {
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

func (b *testBackend) SubscribeLogs(name string) (LogSubscription, error) {
	if _, err := b.get(name); err != nil {
		return nil, err
	}
	s := &testSub{ch: make(chan string, 100), closed: make(chan struct{})}
	b.mu.Lock()
	b.subs[name] = append(b.subs[name], s)
	b.mu.Unlock()
	return s, nil
}

// publish appends a line to a service's log and hands it to subscribers.
func (b *testBackend) publish(name, line string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.logs[name] = append(b.logs[name], line)
	for _, s := range b.subs[name] {
		if !s.isClosed() {
			s.ch <- line
		}
	}
}

// openSubs counts subscriptions of name not yet closed.
func (b *testBackend) openSubs(name string) int {
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

func (b *testBackend) ManagedPIDs() map[int]string {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := map[int]string{}
	for k, v := range b.managed {
		out[k] = v
	}
	return out
}

func (b *testBackend) StartProcess(command string, args, env []string) (int, error) {
	b.record("startprocess %s %v %v", command, args, env)
	return 789, nil
}

func (b *testBackend) SignalProcess(pid int, sig syscall.Signal, stop bool) (string, error) {
	b.record("signal %d %d %v", pid, int(sig), stop)
	if stop {
		return fmt.Sprintf("SIGTERM sent to process %d", pid), nil
	}
	return fmt.Sprintf("Signal %d sent to process %d", int(sig), pid), nil
}

func (b *testBackend) RestartProcess(pid int) (string, error) {
	b.record("restartprocess %d", pid)
	b.mu.Lock()
	name, ok := b.managed[pid]
	b.mu.Unlock()
	if !ok {
		return "", fmt.Errorf("Process %d is not managed by init, cannot restart", pid)
	}
	return fmt.Sprintf("Service '%s' restarted", name), nil
}

func (b *testBackend) Shutdown(reboot bool) {
	b.record("shutdown reboot=%v", reboot)
}

func (b *testBackend) SystemStatus() wire.SystemStatus {
	return wire.SystemStatus{UptimeSecs: 192735, TotalServices: 3, ActiveServices: 2, EnabledServices: 2, LogDir: "/log", ServiceDir: "/service", Mode: "supervisor"}
}
