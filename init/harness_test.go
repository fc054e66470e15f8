package main

// Integration tests: they build the real init binary and run it in
// supervisor (subreaper) mode in a temporary directory, with real service
// processes, and talk to it over its real control socket.

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nitroinit/nitroinit/internal/control"
	"github.com/nitroinit/nitroinit/internal/testbin"
	"github.com/nitroinit/nitroinit/internal/wait"
	"github.com/nitroinit/nitroinit/internal/wire"
)

var bins struct {
	dir     string
	init    string
	svc     string
	zombies string
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "nitroinit-it-")
	if err != nil {
		panic(err)
	}
	// Services run as other users (User=) must be able to exec the binaries.
	if err := os.Chmod(dir, 0o755); err != nil {
		panic(err)
	}
	bins.dir = dir
	bins.init = filepath.Join(dir, "init")
	bins.svc = filepath.Join(dir, "svc")
	bins.zombies = filepath.Join(dir, "zombies")
	if _, err := testbin.Build(dir, "", "./init", "./internal/testprog/svc", "./internal/testprog/zombies"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type harness struct {
	t       *testing.T
	dir     string
	svcDir  string
	logDir  string
	sock    string
	cmd     *exec.Cmd
	console *wait.Buffer // init's console output
	exited  chan struct{}
	exitErr error
}

// startInit writes the service files (name -> TOML) and an init.yaml with
// extra appended, starts init, and waits for its control socket.
func startInit(t *testing.T, services map[string]string, extra string) *harness {
	t.Helper()
	dir := t.TempDir()
	h := &harness{
		t: t, dir: dir,
		svcDir:  filepath.Join(dir, "service"),
		logDir:  filepath.Join(dir, "log"),
		sock:    filepath.Join(dir, "run", "init.sock"),
		console: &wait.Buffer{},
		exited:  make(chan struct{}),
	}
	if err := os.MkdirAll(h.svcDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range services {
		h.writeService(name, body)
	}
	cfg := fmt.Sprintf("service_dir: %s\nlog_dir: %s\ncontrol:\n  unix_socket_path: %s\n%s", h.svcDir, h.logDir, h.sock, extra)
	cfgPath := filepath.Join(dir, "init.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	h.cmd = exec.Command(bins.init, "--config", cfgPath)
	h.cmd.Stdout, h.cmd.Stderr = h.console, h.console
	h.cmd.Env = append(os.Environ(), "SVC="+bins.svc)
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		h.exitErr = h.cmd.Wait()
		close(h.exited)
	}()
	t.Cleanup(func() {
		h.cmd.Process.Signal(syscall.SIGTERM)
		// A shutdown that has stopped logging has stalled: kill it.
		if h.exits() != nil {
			h.cmd.Process.Kill()
			<-h.exited
		}
		if t.Failed() {
			t.Logf("init console:\n%s", h.console.String())
		}
	})
	h.waitFor("the control socket", func() (bool, string) {
		_, err := h.try(wire.Request{Kind: wire.KindPing})
		return err == nil, fmt.Sprint(err)
	})
	return h
}

func (h *harness) writeService(name, body string) {
	h.t.Helper()
	body = strings.ReplaceAll(body, "$SVC", bins.svc)
	body = strings.ReplaceAll(body, "$DIR", h.dir)
	if err := os.WriteFile(filepath.Join(h.svcDir, name), []byte(body), 0o644); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) target() control.Target {
	return control.Target{Protocol: control.ProtocolUnix, UnixPath: h.sock}
}

// try sends req and returns init's answer. An answer shows nothing until
// it comes, so it gets one stall interval (internal/wait).
func (h *harness) try(req wire.Request) (wire.Response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), wait.DefaultStall)
	defer cancel()
	return control.Do(ctx, h.target(), req)
}

// do sends a request and fails the test unless init answers without Error.
func (h *harness) do(req wire.Request) wire.Response {
	h.t.Helper()
	r, err := h.try(req)
	if err != nil {
		h.t.Fatalf("%s: %v", req.Kind, err)
	}
	if r.Kind == wire.KindError {
		h.t.Fatalf("%s %s: error: %s", req.Kind, req.Name, r.Message)
	}
	return r
}

func (h *harness) status(name string) wire.ServiceStatus {
	h.t.Helper()
	r := h.do(wire.Request{Kind: wire.KindServiceStatus, Name: name})
	return *r.Status
}

// eventually waits until cond holds. cond has nothing to describe, so the
// wait fails when it has not held for stall: give the time the step takes
// on a quiet machine, times what a slower machine may need. Prefer waitFor
// with a Check that describes what it sees, which fails only when that
// stops changing.
func (h *harness) eventually(stall time.Duration, what string, cond func() bool) {
	h.t.Helper()
	wait.Limits{Stall: max(stall*slack, wait.DefaultStall), Poll: hostPoll}.For(h.t, what, wait.Bool(cond))
}

// hostPoll is the longest interval between checks here: a check is a
// request to a host process, cheap, and these tests wait often, so they
// poll as often as they did before internal/wait (every 20 ms) rather than
// at its default, which is chosen for checks that cost a guest work.
const hostPoll = 20 * time.Millisecond

// slack stretches the stall intervals of waits that cannot see progress:
// the tests share two cores with whatever else runs.
const slack = 10

// waitFor waits until check holds, for as long as what it describes keeps
// changing (internal/wait's defaults).
func (h *harness) waitFor(what string, check wait.Check) {
	h.t.Helper()
	wait.Limits{Poll: hostPoll}.For(h.t, what, check)
}

// waitState waits until the service is in state. The timeout is kept for
// callers; the wait follows the service's state and restart count.
func (h *harness) waitState(name, state string, _ time.Duration) wire.ServiceStatus {
	h.t.Helper()
	var st wire.ServiceStatus
	h.waitFor(name+" to be "+state, func() (bool, string) {
		st = h.status(name)
		return st.State == state, fmt.Sprintf("state %q, error %q, restarts %d", st.State, st.Error, st.RestartCount)
	})
	return st
}

// exits waits for init to exit, for as long as its console grows, and
// returns nil once it has; the error says what it printed last.
func (h *harness) exits() error {
	return wait.Limits{Progress: h.console.Len, Poll: hostPoll}.Until(context.Background(), "init to exit", func() (bool, string) {
		select {
		case <-h.exited:
			return true, ""
		default:
			return false, lastLine(h.console.String())
		}
	})
}

// waitLogFile waits until cond holds for the service's log file (init's
// own for "init"), for as long as the log grows: what it describes is the
// log's size and last line.
func (h *harness) waitLogFile(name, what string, cond func(log string) bool) {
	h.t.Helper()
	h.waitFor(what, func() (bool, string) {
		s := h.logFile(name)
		return cond(s), fmt.Sprintf("%s.log: %d bytes, last line %q", name, len(s), lastLine(s))
	})
}

func lastLine(s string) string {
	s = strings.TrimRight(s, "\n")
	return s[strings.LastIndexByte(s, '\n')+1:]
}

func (h *harness) readFile(name string) string {
	b, _ := os.ReadFile(filepath.Join(h.dir, name))
	return string(b)
}

func (h *harness) logFile(name string) string {
	b, _ := os.ReadFile(filepath.Join(h.logDir, name+".log"))
	return string(b)
}

// shutdown sends SIGTERM and waits for init to exit.
func (h *harness) shutdown() {
	h.t.Helper()
	h.cmd.Process.Signal(syscall.SIGTERM)
	if err := h.exits(); err != nil {
		h.t.Fatalf("after SIGTERM: %v", err)
	}
	if h.exitErr != nil {
		h.t.Fatalf("init exited with %v", h.exitErr)
	}
}

// processesOf counts live processes whose command line contains substr.
func processesOf(substr string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || len(b) == 0 {
			continue
		}
		st, _ := os.ReadFile("/proc/" + e.Name() + "/stat")
		if i := bytes.LastIndexByte(st, ')'); i > 0 && i+2 < len(st) && st[i+2] == 'Z' {
			continue
		}
		if strings.Contains(strings.ReplaceAll(string(b), "\x00", " "), substr) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func alive(pid int) bool {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(st, ')')
	return i > 0 && i+2 < len(st) && st[i+2] != 'Z'
}

// zombieChildren counts zombies whose parent is pid.
func zombieChildren(pid int) int {
	ents, _ := os.ReadDir("/proc")
	n := 0
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		st, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(st, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(st[i+1:]))
		if len(f) > 1 && f[0] == "Z" && f[1] == strconv.Itoa(pid) {
			n++
		}
	}
	return n
}
