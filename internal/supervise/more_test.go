package supervise

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nitroinit/nitroinit/internal/cgroup"
	"github.com/nitroinit/nitroinit/internal/control"
	"github.com/nitroinit/nitroinit/internal/unit"
	"github.com/nitroinit/nitroinit/internal/wait"
)

// tailLines collects a log tail.
func tailLines(t *testing.T, tail control.LogTail) []string {
	t.Helper()
	var out []string
	if err := tail.Each(func(line []byte) error {
		out = append(out, string(line))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// hasLine reports whether a line of lines ends with suffix (lines carry a
// time stamp in front).
func hasLine(lines []string, suffix string) bool {
	return slices.ContainsFunc(lines, func(l string) bool { return strings.HasSuffix(l, suffix) })
}

// TestServiceLogs: a service's log holds what init says about it (its
// start and its exit), a subscription follows it from where the history
// ends, and clearing empties it. Unknown names are refused by name.
func TestServiceLogs(t *testing.T) {
	r := newRig(t, map[string]string{"web.service": simple + "Restart = \"no\""})
	pid := r.proc("web").pid

	got, err := r.s.ServiceLogs("web", 10)
	if err != nil {
		t.Fatal(err)
	}
	if lines := tailLines(t, got); !hasLine(lines, fmt.Sprintf("init: started /bin/svc web (pid %d)", pid)) {
		t.Fatalf("web's log %q does not record its start", lines)
	}

	tail, sub, err := r.s.SubscribeLogs("web", 1)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if lines := tailLines(t, tail); len(lines) != 1 {
		t.Fatalf("history of 1 line gave %q", lines)
	}
	r.exit("web", 3)
	line, missed, err := sub.Next(context.Background())
	if err != nil || missed != 0 || !strings.HasSuffix(line, "init: exited with code 3") {
		t.Fatalf("Next = %q, %d missed, %v; want the exit", line, missed, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := sub.Next(ctx); err != context.Canceled {
		t.Fatalf("Next on an ended context = %v", err)
	}

	if err := r.s.ClearServiceLogs("web"); err != nil {
		t.Fatal(err)
	}
	got, err = r.s.ServiceLogs("web", 10)
	if err != nil {
		t.Fatal(err)
	}
	if lines := tailLines(t, got); len(lines) != 0 {
		t.Fatalf("after clearing, web's log holds %q", lines)
	}

	for _, call := range []func() error{
		func() error { _, err := r.s.ServiceLogs("nosuch", 1); return err },
		func() error { return r.s.ClearServiceLogs("nosuch") },
		func() error { _, _, err := r.s.SubscribeLogs("nosuch", 1); return err },
	} {
		if err := call(); err == nil || !strings.Contains(err.Error(), "nosuch") {
			t.Errorf("a log request for an unknown service: %v, want an error naming it", err)
		}
	}
}

// TestStartProcess: ps start runs an unmanaged process whose start and
// exit land in the ad-hoc log; bad requests are refused before anything
// starts.
func TestStartProcess(t *testing.T) {
	r := newRig(t, nil)
	for _, tc := range []struct {
		cmd  string
		env  []string
		want string
	}{
		{"", nil, "no command given"},
		{"/bin/job", []string{"NOEQUALS"}, `"NOEQUALS" is not KEY=VALUE`},
		{"/bin/job", []string{"=v"}, `"=v" is not KEY=VALUE`},
		{"nosuchcommand", nil, "command not found in PATH /usr/bin:/bin"},
	} {
		if _, err := r.s.StartProcess(tc.cmd, nil, tc.env); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("StartProcess(%q, env %q) = %v, want %q", tc.cmd, tc.env, err, tc.want)
		}
	}
	if got := r.started(); len(got) != 0 {
		t.Fatalf("refused requests started %q", got)
	}

	pid, err := r.s.StartProcess("/bin/job", []string{"batch", "--fast"}, []string{"KEEP=mine", "EXTRA=1"})
	if err != nil {
		t.Fatal(err)
	}
	r.ops.mu.Lock()
	p := r.ops.procs[pid]
	r.ops.mu.Unlock()
	if p == nil {
		t.Fatalf("no process %d started", pid)
	}
	if !slices.Equal(p.argv, []string{"/bin/job", "batch", "--fast"}) {
		t.Errorf("argv %q", p.argv)
	}
	// The request's environment goes on top of init's.
	if want := []string{"PATH=/usr/bin:/bin", "KEEP=mine", "EXTRA=1"}; !slices.Equal(p.env, want) {
		t.Errorf("environment %q, want %q", p.env, want)
	}
	// It is no service: no service's main PID.
	if name, ok := r.s.ManagedPIDs()[pid]; ok {
		t.Errorf("process %d is listed as service %q's", pid, name)
	}
	r.ops.die(p, syscall.WaitStatus(7<<8))
	tail, err := r.s.ServiceLogs(unit.AdhocLog, 10)
	if err != nil {
		t.Fatal(err)
	}
	lines := tailLines(t, tail)
	for _, want := range []string{
		fmt.Sprintf("init: started process %d: /bin/job batch --fast", pid),
		fmt.Sprintf("init: process %d (/bin/job) exited with code 7", pid),
	} {
		if !hasLine(lines, want) {
			t.Errorf("the ad-hoc log %q lacks %q", lines, want)
		}
	}
}

// TestRestartProcess: ps restart finds the service by its main PID and
// starts it afresh; a PID that is no service's is refused.
func TestRestartProcess(t *testing.T) {
	r := newRig(t, map[string]string{"web.service": simple})
	old := r.proc("web")
	r.started()
	msg, err := r.s.RestartProcess(old.pid)
	if err != nil || msg != "Service 'web' restarted" {
		t.Fatalf("RestartProcess = %q, %v", msg, err)
	}
	if got := r.started(); !slices.Equal(got, []string{"web"}) {
		t.Fatalf("the restart started %q", got)
	}
	if !slices.Equal(old.signals, []syscall.Signal{syscall.SIGTERM}) {
		t.Errorf("the old process got %v, want SIGTERM", old.signals)
	}
	if now := r.proc("web"); now.pid == old.pid {
		t.Errorf("web still runs as %d", old.pid)
	}
	r.wantState("web", stateRunning)
	// The old PID no longer names web (and is no process here either).
	if _, err := r.s.RestartProcess(old.pid); err == nil || !strings.Contains(err.Error(), fmt.Sprint(old.pid)) {
		t.Errorf("restart by a stale PID: %v", err)
	}
}

// TestLogFailureShows: a service whose log file cannot be written says so
// in its list row and its status, after its own reason, until it is
// written again.
func TestLogFailureShows(t *testing.T) {
	for _, tc := range []struct {
		state, why, err string
		wantState, want string
	}{
		{"running", "", "", "running", ""},
		{"running", "", "no space left on device", "running, log failing", "log not written: no space left on device"},
		{"failed", "exited with code 1", "no space left on device", "failed, log failing", "exited with code 1; log not written: no space left on device"},
	} {
		var err error
		if tc.err != "" {
			err = fmt.Errorf("%s", tc.err)
		}
		st, why := withLogError(tc.state, tc.why, err)
		if st != tc.wantState || why != tc.want {
			t.Errorf("withLogError(%q, %q, %v) = %q, %q; want %q, %q", tc.state, tc.why, err, st, why, tc.wantState, tc.want)
		}
	}
}

// TestSystemStatusCounts: the system status counts the services, those
// enabled and those active.
func TestSystemStatusCounts(t *testing.T) {
	r := newRig(t, map[string]string{
		"web.service":          simple,
		"db.service":           notify,
		"off.service.disabled": simple,
	})
	st := r.s.SystemStatus()
	if st.TotalServices != 3 || st.EnabledServices != 2 || st.ActiveServices != 2 {
		t.Fatalf("total %d, enabled %d, active %d; want 3, 2, 2", st.TotalServices, st.EnabledServices, st.ActiveServices)
	}
	r.exit("web", 0)
	r.advance(time.Minute)
	if st := r.s.SystemStatus(); st.ActiveServices >= 2 {
		t.Errorf("after web exited %d services count as active", st.ActiveServices)
	}
}

// cgroupTree opens a fresh cgroup v2 subtree for one test, removed
// afterwards. Without a writable cgroup2 mount it skips, except in CI.
func cgroupTree(t *testing.T) *cgroup.Tree {
	t.Helper()
	mnt := cgroup.FindMount()
	if mnt == "" || os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("containment tests need root and a cgroup2 mount (CI must run them)")
		}
		t.Skip("skipping: containment tests need root and a cgroup2 mount")
	}
	dir := filepath.Join(mnt, fmt.Sprintf("nitroinit-supervise-%d-%s", os.Getpid(), t.Name()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		groups, _ := filepath.Glob(filepath.Join(dir, "*.service"))
		for _, g := range groups {
			(&cgroup.Group{Path: g}).Kill()
			(&cgroup.Group{Path: g}).WaitEmpty(wait.DefaultStall)
			os.Remove(g)
		}
		os.Remove(filepath.Join(dir, "init.scope"))
		os.Remove(dir)
	})
	tree, err := cgroup.Open(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

// leftover is a real process started inside a service's cgroup, standing
// for one the service left behind.
type leftover struct {
	done chan struct{} // closed once it has been waited for
	err  error         // what Wait returned; set before done is closed
}

// sleepIn starts a real sleep inside the cgroup at path.
func sleepIn(t *testing.T, path string) *leftover {
	t.Helper()
	f, err := (&cgroup.Group{Path: path}).Open()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command("sleep", "600")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(f.Fd())}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	l := &leftover{done: make(chan struct{})}
	go func() {
		l.err = cmd.Wait()
		close(l.done)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-l.done
	})
	return l
}

// wantKilled fails unless l has ended by SIGKILL.
func (l *leftover) wantKilled(t *testing.T, what string) {
	t.Helper()
	wait.For(t, what+" to be killed", wait.Bool(func() bool {
		select {
		case <-l.done:
			return true
		default:
			return false
		}
	}))
	var ee *exec.ExitError
	if !errors.As(l.err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("%s ended with %v, want SIGKILL", what, l.err)
	}
}

// TestCgroupContainment follows one service through its cgroup, with real
// groups and real leftover processes but a pretend main process: what an
// earlier run left is killed before the start, the group's figures show
// in the status, a process left at the exit is killed and waited for
// before the service counts as ended, and an OOM kill inside a running
// service ends the rest of it (OOMPolicy=stop).
func TestCgroupContainment(t *testing.T) {
	tree := cgroupTree(t)
	g, err := tree.Create("web", cgroup.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	earlier := sleepIn(t, g.Path)
	r := newRigWith(t, map[string]string{"web.service": simple + "Restart = \"no\""}, func(c *Config) { c.Cgroups = tree })
	earlier.wantKilled(t, "the earlier run's process")
	if !strings.Contains(r.messages(), "still had processes from an earlier run; killing them") {
		t.Errorf("the leftover was not reported:\n%s", r.messages())
	}

	// The running service shows its group and figures.
	st, err := r.s.ServiceStatus("web")
	if err != nil {
		t.Fatal(err)
	}
	if st.Cgroup != g.Path || st.Tasks == nil {
		t.Errorf("status shows cgroup %q and tasks %v, want %s and a count", st.Cgroup, st.Tasks, g.Path)
	}
	if rows := r.s.Services(); len(rows) != 1 || rows[0].Tasks == nil {
		t.Errorf("list %+v lacks web's task count", rows)
	}

	// Linux kills a process cloned into a group whose cgroup.kill was
	// written (seen on 6.18), so the child below goes into a new group:
	// web's exit removes this one and its next start makes another.
	r.exit("web", 0)
	if _, err := os.Stat(g.Path); !os.IsNotExist(err) {
		t.Fatalf("web's group is still there after it ended: %v", err)
	}
	if err := r.s.StartService("web"); err != nil {
		t.Fatal(err)
	}

	// A child outlives the main process: web ends only with it.
	child := sleepIn(t, g.Path)
	if !g.Populated() {
		t.Fatal("the child is not in web's group")
	}
	r.exit("web", 0)
	child.wantKilled(t, "web's leftover child")
	wait.For(t, "web to end", func() (bool, string) {
		st, why := r.state("web")
		return st == stateExited, fmt.Sprintf("%v (%s)", st, why)
	})
	if _, why := r.state("web"); why != "exited with code 0" {
		t.Errorf("web ended with %q", why)
	}
	if _, err := os.Stat(g.Path); !os.IsNotExist(err) {
		t.Errorf("web's group is still there after it ended: %v", err)
	}

	// The OOM killer takes one of web's processes: init ends the rest.
	if err := r.s.StartService("web"); err != nil {
		t.Fatal(err)
	}
	main := r.proc("web")
	helper := sleepIn(t, g.Path)
	var base uint64
	r.s.call(func() { base = r.s.services["web"].oomBase })
	r.s.call(func() {
		r.s.onOOM("web", g.Path, base)         // no rise
		r.s.onOOM("web", "/elsewhere", base+1) // another group
		r.s.onOOM("nosuch", g.Path, base+1)
	})
	if strings.Contains(r.messages(), "OOM killer") {
		t.Fatalf("an OOM kill was seen where there was none:\n%s", r.messages())
	}
	r.s.call(func() {
		r.s.onOOM("web", g.Path, base+1)
		r.s.onOOM("web", g.Path, base+2) // once is enough
	})
	helper.wantKilled(t, "web's helper")
	if n := strings.Count(r.messages(), "the OOM killer killed one of its processes"); n != 1 {
		t.Errorf("the OOM kill was reported %d times:\n%s", n, r.messages())
	}
	// cgroup.kill ends the main process too; the pretend one is told.
	r.ops.die(main, syscall.WaitStatus(syscall.SIGKILL))
	r.sync()
	wait.For(t, "web to end", func() (bool, string) {
		st, why := r.state("web")
		return st == stateExited, fmt.Sprintf("%v (%s)", st, why)
	})
	tail, err := r.s.ServiceLogs("web", 20)
	if err != nil {
		t.Fatal(err)
	}
	if lines := tailLines(t, tail); !slices.ContainsFunc(lines, func(l string) bool {
		return strings.Contains(l, "ending the service (as systemd's OOMPolicy=stop)")
	}) {
		t.Errorf("web's log %q does not say why it was ended", lines)
	}
}
