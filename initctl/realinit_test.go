package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
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
	sock, exited, initPID := in.sock, in.exited, in.pid

	ctl := func(args ...string) result {
		return initctl(t, nil, append([]string{"-s", sock}, args...)...)
	}
	eventually := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	eventually("init to answer ping", func() bool { return ctl("ping").code == 0 })
	eventually("ticker to log", func() bool { return strings.Contains(ctl("logs", "ticker").stdout, "tick 3") })

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
	eventually("ticker to be stopped", func() bool {
		return strings.Contains(ctl("status", "ticker").stdout, "  Status: inactive")
	})
	time.Sleep(1500 * time.Millisecond) // longer than RestartSec
	if r := ctl("status", "ticker"); !strings.Contains(r.stdout, "  Status: inactive") {
		t.Errorf("ticker came back after ps stop:\n%s", r.stdout)
	}
	if r := ctl("ps", "kill", "1"); r.code != 1 || !strings.Contains(r.stderr, "Refusing to signal PID 1") {
		t.Errorf("ps kill 1: %+v", r)
	}

	if r := ctl("enable", "--now", "idle"); r.code != 0 {
		t.Errorf("enable --now: %+v", r)
	}
	eventually("idle to run", func() bool { return strings.Contains(ctl("status", "idle").stdout, "active (running)") })
	if r := ctl("status", "nosuch"); r.code != 1 || !strings.Contains(r.stderr, "✗ Error: ") {
		t.Errorf("status nosuch: %+v", r)
	}
	if r := ctl("--json", "ps", "start", "/bin/sleep", "30"); r.code != 0 || !strings.Contains(r.stdout, `{"ProcessStarted":{"pid":`) {
		t.Errorf("ps start: %+v", r)
	}

	if r := ctl("shutdown"); r.code != 0 {
		t.Errorf("shutdown: %+v", r)
	}
	select {
	case <-exited:
	case <-time.After(20 * time.Second):
		t.Error("init did not exit after initctl shutdown")
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
	sock   string     // control socket
	svcDir string     // service_dir
	pid    int        // init's PID
	exited chan error // receives once init has exited
}

// startInit runs the real init binary in supervisor mode with the given
// service files and returns its control socket and service directory. It
// is stopped with SIGTERM when the test ends; its console is logged if the
// test failed.
func startInit(t *testing.T, services map[string]string) *realInit {
	t.Helper()
	initOnce.Do(func() {
		initBin = filepath.Join(filepath.Dir(initctlBin), "init")
		build := exec.Command("go", "build", "-o", initBin, "../init")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			initBuildErr = fmt.Errorf("building init: %v\n%s", err, out)
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
	var console strings.Builder
	cmd.Stdout, cmd.Stderr = &console, &console
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
		}
		if t.Failed() {
			t.Logf("init console:\n%s", console.String())
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for initctl(t, nil, "-s", sock, "ping").code != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("init did not answer ping within 10s; console:\n%s", console.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return &realInit{sock: sock, svcDir: svcDir, pid: cmd.Process.Pid, exited: exited}
}
