package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nitroinit/nitroinit/internal/testbin"
	"github.com/nitroinit/nitroinit/internal/wait"
)

// TestAgainstRealInit runs the real init binary in supervisor mode with real
// services and drives it only through the initctl binary.
func TestAgainstRealInit(t *testing.T) {
	in := startInit(t, map[string]string{
		"ticker.service": `ExecStart = "/bin/sh -c 'i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.1; done'"
Restart = "always"
RestartSec = 1
`,
		"idle.service": `ExecStart = "/bin/sleep 1000"
ServiceEnable = false
`,
	})
	sock, initPID := in.sock, in.pid

	ctl := func(args ...string) result {
		return initctl(t, nil, append([]string{"-s", sock}, args...)...)
	}
	wait.For(t, "init to answer ping", func() (bool, string) {
		r := ctl("ping")
		return r.code == 0, r.stderr
	})
	wait.For(t, "ticker to log", func() (bool, string) {
		out := ctl("logs", "ticker").stdout
		return strings.Contains(out, "tick 3"), out
	})

	if r := ctl("list"); r.code != 0 || !regexpLine(r.stdout, `^ticker +enabled +active +always +\d+`) || !regexpLine(r.stdout, `^idle +disabled +inactive +no +0`) {
		t.Errorf("list: %+v", r)
	}
	st := ctl("status", "ticker")
	if st.code != 0 || !strings.Contains(st.stdout, "  Status: active (running)\n") {
		t.Fatalf("status: %+v", st)
	}
	var pid int
	fmt.Sscanf(st.stdout[strings.Index(st.stdout, "  PID: "):], "  PID: %d", &pid)
	if pid <= 1 {
		t.Fatalf("no PID in status:\n%s", st.stdout)
	}
	if r := ctl("ps", "list"); r.code != 0 || !regexpLine(r.stdout, fmt.Sprintf(`^%d +%d +\S+ .* yes +ticker +/bin/sh -c`, pid, initPID)) {
		t.Errorf("ps list does not show ticker's main PID %d as managed:\n%s", pid, r.stdout)
	}
	if r := ctl("ps", "status", fmt.Sprint(pid)); r.code != 0 || !strings.Contains(r.stdout, "  Managed by Init: yes\n  Service: ticker\n") {
		t.Errorf("ps status: %+v", r)
	}
	if r := ctl("system-status"); r.code != 0 || !strings.Contains(r.stdout, "  Services: 2 total, 1 enabled, 1 active\n") {
		t.Errorf("system-status: %+v", r)
	}

	// logs -f follows the real service output.
	follow := exec.Command(initctlBin, "-s", sock, "logs", "-f", "-n", "0", "ticker")
	follow.Env = []string{"INITCTL_CONFIG=/nonexistent"}
	out, _ := follow.StdoutPipe()
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	for i := 0; i < 2; i++ {
		if !sc.Scan() || !strings.Contains(sc.Text(), "tick ") {
			t.Errorf("logs -f line %d: %q", i, sc.Text())
		}
	}
	follow.Process.Signal(syscall.SIGINT)
	if err := follow.Wait(); err != nil {
		t.Errorf("logs -f after Ctrl-C: %v", err)
	}

	// ps stop on the service's PID stops the service for good.
	if r := ctl("ps", "stop", fmt.Sprint(pid)); r.code != 0 {
		t.Errorf("ps stop: %+v", r)
	}
	wait.For(t, "ticker to be stopped", func() (bool, string) {
		out := ctl("status", "ticker").stdout
		return strings.Contains(out, "  Status: inactive"), out
	})
	time.Sleep(1500 * time.Millisecond) // longer than RestartSec; a negative check, kept short
	if r := ctl("status", "ticker"); !strings.Contains(r.stdout, "  Status: inactive") {
		t.Errorf("ticker came back after ps stop:\n%s", r.stdout)
	}
	if r := ctl("ps", "kill", "1"); r.code != 1 || !strings.Contains(r.stderr, "Refusing to signal PID 1") {
		t.Errorf("ps kill 1: %+v", r)
	}

	if r := ctl("enable", "--now", "idle"); r.code != 0 {
		t.Errorf("enable --now: %+v", r)
	}
	wait.For(t, "idle to run", func() (bool, string) {
		out := ctl("status", "idle").stdout
		return strings.Contains(out, "active (running)"), out
	})
	if r := ctl("status", "nosuch"); r.code != 1 || !strings.Contains(r.stderr, "✗ Error: ") {
		t.Errorf("status nosuch: %+v", r)
	}
	if r := ctl("--json", "ps", "start", "/bin/sleep", "30"); r.code != 0 || !strings.Contains(r.stdout, `{"ProcessStarted":{"pid":`) {
		t.Errorf("ps start: %+v", r)
	}

	if r := ctl("shutdown"); r.code != 0 {
		t.Errorf("shutdown: %+v", r)
	}
	if err := in.waitExit(); err != nil {
		t.Errorf("after initctl shutdown: %v", err)
	}
}

// initBin is the real init, built once by startInit.
var (
	initOnce     sync.Once
	initBin      string
	initBuildErr error
)

// realInit is a running init and where to reach it.
type realInit struct {
	sock    string        // control socket
	svcDir  string        // service_dir
	pid     int           // init's PID
	exited  chan struct{} // closed once init has exited
	console *wait.Buffer  // init's console output
}

// waitExit waits for init to exit, for as long as its console grows.
func (in *realInit) waitExit() error {
	return wait.Limits{Progress: in.console.Len}.Until(context.Background(), "init to exit", wait.Receive(in.exited, nil))
}

// startInit runs the real init binary in supervisor mode with the given
// service files and returns its control socket and service directory. It
// is stopped with SIGTERM when the test ends; its console is logged if the
// test failed.
func startInit(t *testing.T, services map[string]string) *realInit {
	t.Helper()
	initOnce.Do(func() {
		var bins []string
		bins, initBuildErr = testbin.Build(filepath.Dir(initctlBin), "", "./init")
		if initBuildErr == nil {
			initBin = bins[0]
		}
	})
	if initBuildErr != nil {
		t.Fatal(initBuildErr)
	}
	dir := t.TempDir()
	svcDir, logDir, sock := filepath.Join(dir, "service"), filepath.Join(dir, "log"), filepath.Join(dir, "run", "init.sock")
	if err := os.MkdirAll(svcDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range services {
		if err := os.WriteFile(filepath.Join(svcDir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfg := filepath.Join(dir, "init.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("service_dir: %s\nlog_dir: %s\ncontrol:\n  unix_socket_path: %s\n", svcDir, logDir, sock)), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(initBin, "--config", cfg)
	in := &realInit{sock: sock, svcDir: svcDir, exited: make(chan struct{}), console: &wait.Buffer{}}
	cmd.Stdout, cmd.Stderr = in.console, in.console
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	in.pid = cmd.Process.Pid
	go func() { cmd.Wait(); close(in.exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		// A shutdown that has stopped logging has stalled: kill it.
		if in.waitExit() != nil {
			cmd.Process.Kill()
			<-in.exited
		}
		if t.Failed() {
			t.Logf("init console:\n%s", in.console.String())
		}
	})
	wait.For(t, "init to answer ping", func() (bool, string) {
		r := initctl(t, nil, "-s", sock, "ping")
		return r.code == 0, r.stderr
	})
	return in
}
