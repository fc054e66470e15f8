package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nitroinit/nitroinit/internal/cgroup"
	"github.com/nitroinit/nitroinit/internal/wait"
	"github.com/nitroinit/nitroinit/internal/wire"
)

var hog struct {
	once sync.Once
	path string
	err  error
}

// hogBin builds internal/testprog/hog next to the other test binaries.
func hogBin(t *testing.T) string {
	t.Helper()
	hog.once.Do(func() {
		hog.path = filepath.Join(bins.dir, "hog")
		cmd := exec.Command("go", "build", "-o", hog.path, "../internal/testprog/hog")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			hog.err = fmt.Errorf("building hog: %v\n%s", err, b)
		}
	})
	if hog.err != nil {
		t.Fatal(hog.err)
	}
	return hog.path
}

// delegated creates a cgroup v2 subtree for the init the test starts next,
// as systemd's Delegate=yes or a container runtime would, and points init
// at it with $INIT_CGROUP. It removes the subtree once init has exited.
// Without a writable cgroup2 mount the test is skipped, except in CI.
func delegated(t *testing.T) string {
	t.Helper()
	mnt := cgroup.FindMount()
	why := ""
	switch {
	case mnt == "":
		why = "no cgroup2 file system is mounted"
	case os.Geteuid() != 0:
		why = "creating a delegated cgroup subtree needs root"
	}
	if why != "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s (CI must run the cgroup tests)", why)
		}
		t.Skipf("skipping: %s", why)
	}
	dir := filepath.Join(mnt, fmt.Sprintf("nitroinit-it-%d-%s", os.Getpid(), t.Name()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// Registered before init's own cleanup, so it runs after init exited.
	t.Cleanup(func() {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if !e.IsDir() {
				continue
			}
			p := filepath.Join(dir, e.Name())
			if pids, _ := os.ReadFile(filepath.Join(p, "cgroup.procs")); len(pids) > 0 {
				t.Errorf("cgroup %s still holds %q after init exited", p, pids)
				os.WriteFile(filepath.Join(p, "cgroup.kill"), []byte("1"), 0)
				wait.Until(context.Background(), p+" to empty after cgroup.kill", func() (bool, string) {
					pids, _ := os.ReadFile(filepath.Join(p, "cgroup.procs"))
					return len(pids) == 0, string(pids)
				})
			}
			os.Remove(p)
		}
		if err := os.Remove(dir); err != nil {
			t.Errorf("removing the test's cgroup: %v", err)
		}
	})
	t.Setenv("INIT_CGROUP", dir)
	return dir
}

func withHog(t *testing.T, services map[string]string) map[string]string {
	bin := hogBin(t)
	for k, v := range services {
		services[k] = strings.ReplaceAll(v, "$HOG", bin)
	}
	return services
}

func pidFrom(t *testing.T, h *harness, name string) int {
	t.Helper()
	var pid int
	h.waitFor(name, func() (bool, string) {
		s := h.readFile(name)
		pid, _ = strconv.Atoi(strings.TrimSpace(s))
		return pid > 0, s
	})
	return pid
}

// TestCgroupStopEndsDoubleForkedDaemon: a daemon that double-forked and
// called setsid has left the service's process group, but not its cgroup,
// and stop ends it; so does the exit of the main process that started it.
func TestCgroupStopEndsDoubleForkedDaemon(t *testing.T) {
	dir := delegated(t)
	h := startInit(t, withHog(t, map[string]string{
		"daemon.service": `ExecStart = "$HOG daemon $DIR/daemon.pid"`,
		"leaver.service": `ExecStart = "$HOG daemon-exit $DIR/leaver.pid"`,
	}), "")
	if !strings.Contains(h.console.String(), "one group per service under "+dir) {
		t.Fatalf("init did not take the delegated subtree:\n%s", h.console.String())
	}
	daemon := pidFrom(t, h, "daemon.pid")
	cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", daemon))
	if !strings.Contains(string(cg), "/daemon.service\n") {
		t.Fatalf("daemon %d is in %q, want the service's group", daemon, cg)
	}
	st := h.status("daemon")
	if st.Cgroup != filepath.Join(dir, "daemon.service") || st.Tasks == nil || *st.Tasks < 2 {
		t.Fatalf("status: cgroup %q tasks %v, want %s and at least 2 tasks", st.Cgroup, st.Tasks, filepath.Join(dir, "daemon.service"))
	}
	r := h.do(wire.Request{Kind: wire.KindListServices})
	raw, _ := json.Marshal(r.Services)
	if !strings.Contains(string(raw), `"tasks":`) {
		t.Errorf("list has no task counts: %s", raw)
	}

	if ps := h.do(wire.Request{Kind: wire.KindProcessStatus, PID: *st.PID}).Process; ps == nil || ps.ServiceTasks == nil || *ps.ServiceTasks < 2 {
		t.Errorf("ps status of the main process lacks the service's task count: %+v", ps)
	}
	h.do(wire.Request{Kind: wire.KindServiceStop, Name: "daemon"})
	h.waitState("daemon", "inactive", 10*time.Second)
	if alive(daemon) {
		t.Errorf("daemon %d survived stop", daemon)
	}
	if _, err := os.Stat(filepath.Join(dir, "daemon.service")); !os.IsNotExist(err) {
		t.Errorf("the stopped service's cgroup is still there (%v)", err)
	}

	// The main process exits at once, leaving its daemon behind: the
	// daemon goes with it, and only then is the service "exited".
	leaver := pidFrom(t, h, "leaver.pid")
	h.waitState("leaver", "exited", 10*time.Second)
	if alive(leaver) {
		t.Errorf("daemon %d survived the exit of its service's main process", leaver)
	}
	h.shutdown()
}

// TestCgroupLimits: limits reach the service (LimitNOFILE) or its cgroup
// (TasksMax), and a limit whose controller the kernel or the parent group
// does not offer is refused with an error naming it.
func TestCgroupLimits(t *testing.T) {
	dir := delegated(t)
	ctl, _ := os.ReadFile(filepath.Join(filepath.Dir(dir), "cgroup.subtree_control"))
	h := startInit(t, withHog(t, map[string]string{
		"nofile.service": "ExecStart = \"$HOG nofile\"\nLimitNOFILE = 64\n",
		"tasks.service":  "ExecStart = \"$HOG sleep\"\nTasksMax = 50\n",
		"mem.service":    "ExecStart = \"$HOG sleep\"\nMemoryMax = \"64M\"\n",
	}), "")
	h.waitLogFile("nofile", "the nofile line", func(log string) bool { return strings.Contains(log, "nofile 64 64") })
	for _, c := range []struct{ name, ctl, file, want string }{
		{"tasks", "pids", "pids.max", "50"},
		{"mem", "memory", "memory.max", strconv.Itoa(64 << 20)},
	} {
		if strings.Contains(string(ctl), c.ctl) {
			h.waitState(c.name, "running", 10*time.Second)
			b, _ := os.ReadFile(filepath.Join(dir, c.name+".service", c.file))
			if strings.TrimSpace(string(b)) != c.want {
				t.Errorf("%s: %s = %q, want %s", c.name, c.file, b, c.want)
			}
			continue
		}
		// This host offers no such controller to the subtree (a hybrid
		// layout keeps it on cgroup v1): the start must say so.
		st := h.waitState(c.name, "failed", 10*time.Second)
		if !strings.Contains(st.Error, c.ctl+" controller") {
			t.Errorf("%s: error %q does not name the %s controller", c.name, st.Error, c.ctl)
		}
		t.Logf("%s controller not offered here: %s", c.ctl, st.Error)
	}
	h.shutdown()
}

// TestCgroupLimitsOff: with no usable subtree init says once that limits
// are off and runs services as before; rlimits still apply.
func TestCgroupLimitsOff(t *testing.T) {
	t.Setenv("INIT_CGROUP", t.TempDir()) // not a cgroup2 file system
	h := startInit(t, withHog(t, map[string]string{
		"nofile.service": "ExecStart = \"$HOG nofile\"\nLimitNOFILE = \"32:64\"\nMemoryMax = \"64M\"\n",
		"other.service":  "ExecStart = \"$HOG sleep\"\nTasksMax = 10\n",
	}), "")
	// The Go runtime of the service raises its own soft limit (to 63
	// with Go 1.26), so only the hard limit is exact.
	nofile := regexp.MustCompile(`nofile \d+ 64\n`)
	h.waitLogFile("nofile", "the nofile line", nofile.MatchString)
	h.waitState("other", "running", 10*time.Second)
	if n := strings.Count(h.console.String(), "limits are off"); n != 1 {
		t.Errorf("%q said %d times, want once:\n%s", "limits are off", n, h.console.String())
	}
	if !strings.Contains(h.logFile("nofile"), "are not applied") {
		t.Errorf("the service's log does not say its cgroup limits are not applied:\n%s", h.logFile("nofile"))
	}
	h.shutdown()
}

// TestCgroupRemainAfterExitKeepsItsDaemon: as in systemd, what a
// RemainAfterExit oneshot started keeps running while the service is
// active (exited), and goes when it is stopped.
func TestCgroupRemainAfterExitKeepsItsDaemon(t *testing.T) {
	delegated(t)
	h := startInit(t, withHog(t, map[string]string{
		"setup.service": "ExecStart = \"$HOG daemon-exit $DIR/setup.pid\"\nType = \"oneshot\"\nRemainAfterExit = true\n",
	}), "")
	daemon := pidFrom(t, h, "setup.pid")
	h.waitState("setup", "exited", 10*time.Second)
	if !alive(daemon) {
		t.Fatalf("the daemon of a RemainAfterExit oneshot was killed at the oneshot's exit")
	}
	h.do(wire.Request{Kind: wire.KindServiceStop, Name: "setup"})
	h.waitState("setup", "inactive", 10*time.Second)
	h.waitFor("the daemon to go", func() (bool, string) { return !alive(daemon), "" })
	h.shutdown()
}

// TestCgroupOwnDelegatedGroup: without $INIT_CGROUP, init takes the group
// it was started in when that is delegated to it (writable, not the
// hierarchy's root, no other process in it), as under systemd's
// Delegate=yes.
func TestCgroupOwnDelegatedGroup(t *testing.T) {
	dir := delegated(t)
	t.Setenv("INIT_CGROUP", "")
	// Start init through a wrapper that enters dir first, as a service
	// manager would start it there.
	wrapper := filepath.Join(t.TempDir(), "init-in-cgroup")
	script := fmt.Sprintf("#!/bin/sh\necho $$ > %s/cgroup.procs && exec %s \"$@\"\n", dir, bins.init)
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	saved := bins.init
	bins.init = wrapper
	h := startInit(t, withHog(t, map[string]string{"daemon.service": `ExecStart = "$HOG daemon $DIR/daemon.pid"`}), "")
	bins.init = saved
	if !strings.Contains(h.console.String(), "one group per service under "+dir) {
		t.Fatalf("init did not take the group it was started in:\n%s", h.console.String())
	}
	daemon := pidFrom(t, h, "daemon.pid")
	h.do(wire.Request{Kind: wire.KindServiceStop, Name: "daemon"})
	h.waitState("daemon", "inactive", 10*time.Second)
	if alive(daemon) {
		t.Errorf("daemon %d survived stop", daemon)
	}
	h.shutdown()
}

// TestCgroupNotifyFromTheDaemon: READY=1 from a process that left the
// process group counts when it is in the service's cgroup (systemd's
// NotifyAccess=all).
func TestCgroupNotifyFromTheDaemon(t *testing.T) {
	delegated(t)
	h := startInit(t, withHog(t, map[string]string{
		"forking.service": "ExecStart = \"$HOG daemon $DIR/forking.pid\"\nType = \"notify\"\nTimeoutStartSec = 60\n",
	}), "")
	h.waitState("forking", "running", 10*time.Second)
	h.shutdown()
}
