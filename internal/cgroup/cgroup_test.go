package cgroup

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nitroinit/nitroinit/internal/reap"
	"github.com/nitroinit/nitroinit/internal/wait"
	"golang.org/x/sys/unix"
)

// testTree makes a fresh subtree under the cgroup2 mount for one test and
// removes it afterwards. It skips where there is no writable cgroup2
// mount, except in CI, where it fails.
func testTree(t *testing.T) *Tree {
	t.Helper()
	mnt := FindMount()
	why := ""
	switch {
	case mnt == "":
		why = "no cgroup2 file system is mounted"
	case os.Geteuid() != 0:
		why = "creating cgroups needs root"
	}
	if why != "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s (CI must run these tests)", why)
		}
		t.Skipf("skipping: %s", why)
	}
	dir := filepath.Join(mnt, fmt.Sprintf("nitroinit-test-%d-%s", os.Getpid(), strings.ReplaceAll(t.Name(), "/", "_")))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if e.IsDir() && e.Name() != "init.scope" {
				g := &Group{Path: filepath.Join(dir, e.Name())}
				g.Kill()
				g.WaitEmpty(wait.DefaultStall)
				g.Remove()
			}
		}
		os.Remove(filepath.Join(dir, "init.scope"))
		os.Remove(dir)
	})
	tr, err := Open(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func startIn(t *testing.T, g *Group, name string, args ...string) *exec.Cmd {
	t.Helper()
	f, err := g.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(f.Fd()), Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd
}

func TestStartInsideKillAndWaitEmpty(t *testing.T) {
	tr := testTree(t)
	g, err := tr.Create("daemon", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	// A double fork with setsid: the grandchild leaves the session and
	// process group, but not the cgroup.
	cmd := startIn(t, g, "/bin/sh", "-c", "setsid sh -c 'sleep 300 & sleep 300' & sleep 300")
	defer cmd.Wait()
	own, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	rel := strings.TrimPrefix(g.Path, FindMount())
	if !strings.Contains(string(own), "0::"+rel+"\n") {
		t.Fatalf("child is in %q, want %s", own, rel)
	}
	wait.For(t, "4 tasks in the group (sh, setsid sh, 2 sleeps)", func() (bool, string) {
		n := g.Stats().Tasks
		return n >= 4, fmt.Sprintf("%d tasks", n)
	})
	if !g.Populated() {
		t.Fatal("Populated = false with processes inside")
	}
	if err := g.Kill(); err != nil {
		t.Fatal(err)
	}
	// WaitEmpty is under test here, bounded by one stall interval: the
	// group shows nothing until it is empty.
	if err := g.WaitEmpty(wait.DefaultStall); err != nil {
		t.Fatal(err)
	}
	if err := g.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(g.Path); !os.IsNotExist(err) {
		t.Fatalf("group still there: %v", err)
	}
}

// TestCreateAfterKill: a service restarted after its group was killed must
// not be killed at its start. Linux 6.18 SIGKILLs every process cloned into
// a group that was ever killed, so Create makes an emptied group anew.
func TestCreateAfterKill(t *testing.T) {
	tr := testTree(t)
	g, err := tr.Create("again", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	first := startIn(t, g, "sleep", "300")
	if err := g.Kill(); err != nil {
		t.Fatal(err)
	}
	first.Wait()
	if err := g.WaitEmpty(wait.DefaultStall); err != nil {
		t.Fatal(err)
	}
	g, err = tr.Create("again", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Remove()
	second := startIn(t, g, "sleep", "300")
	defer func() {
		second.Process.Kill()
		second.Wait()
	}()
	// A process killed at its start is gone well within this; one that
	// lives is still there after it (an outcome check, not a timing one).
	time.Sleep(300 * time.Millisecond)
	if err := second.Process.Signal(syscall.Signal(0)); err != nil || !g.Populated() {
		t.Fatalf("the start after a kill did not survive (signal 0: %v, populated %v)", err, g.Populated())
	}
}

func TestWaitEmptyTimesOut(t *testing.T) {
	tr := testTree(t)
	g, err := tr.Create("stays", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	cmd := startIn(t, g, "/bin/sleep", "300")
	defer cmd.Wait()
	if err := g.WaitEmpty(200 * time.Millisecond); err == nil || !strings.Contains(err.Error(), "still holds processes") {
		t.Fatalf("WaitEmpty = %v, want a timeout", err)
	}
	if err := g.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := g.WaitEmpty(wait.DefaultStall); err != nil {
		t.Fatal(err)
	}
}

func TestLimitsNeedTheirController(t *testing.T) {
	tr := testTree(t)
	for _, tc := range []struct {
		ctl string
		lim Limits
	}{
		{"memory", Limits{MemoryMax: 64 << 20}},
		{"pids", Limits{TasksMax: 50}},
		{"cpu", Limits{CPUWeight: 50}},
	} {
		g, err := tr.Create("lim", tc.lim)
		switch {
		case tr.Has(tc.ctl) && err != nil:
			t.Errorf("%s: %v", tc.ctl, err)
		case !tr.Has(tc.ctl) && (err == nil || !strings.Contains(err.Error(), tc.ctl+" controller")):
			t.Errorf("%s unavailable: Create = %v, want an error naming the controller", tc.ctl, err)
		}
		if g != nil && tr.Has("memory") && tc.ctl == "memory" {
			if st := g.Stats(); st.MemoryMax != 64<<20 {
				t.Errorf("memory.max reads %d", st.MemoryMax)
			}
		}
	}
}

func TestOpenRefusesNonCgroup2(t *testing.T) {
	_, err := Open(t.TempDir(), 0)
	if err == nil || !strings.Contains(err.Error(), "cgroup v2") {
		t.Fatalf("Open(tmpdir) = %v, want an error saying v2 is needed", err)
	}
}

func TestCreateRefusesBadNames(t *testing.T) {
	tr := &Tree{dir: t.TempDir()}
	for _, n := range []string{"", "init.scope", "a/b", "..", "."} {
		if _, err := tr.Create(n, Limits{}); err == nil {
			t.Errorf("Create(%q) succeeded", n)
		}
	}
}

func TestOpenRefusesASharedGroup(t *testing.T) {
	tr := testTree(t)
	g, err := tr.Create("shared", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	cmd := startIn(t, g, "/bin/sleep", "300")
	defer cmd.Wait()
	defer cmd.Process.Kill()
	_, err = Open(g.Path, os.Getpid())
	if !errors.Is(err, unix.EBUSY) || !strings.Contains(err.Error(), fmt.Sprintf("also holds process %d", cmd.Process.Pid)) {
		t.Fatalf("Open of a group with another process = %v, want EBUSY naming it", err)
	}
	if _, err := os.Stat(filepath.Join(g.Path, "init.scope")); !os.IsNotExist(err) {
		t.Errorf("a refused Open left %s/init.scope behind", g.Path)
	}
}

// TestAddBeforeTheProgramRuns: where CLONE_INTO_CGROUP is missing, a
// process moved in between its exec and its first instruction is inside
// from the program's point of view.
func TestAddBeforeTheProgramRuns(t *testing.T) {
	tr := testTree(t)
	g, err := tr.Create("late", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	rd, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	r := reap.New(t.Logf)
	_, _, err = r.StartAtExec("/bin/cat", []string{"cat", "/proc/self/cgroup"},
		&syscall.ProcAttr{Files: []uintptr{0, w.Fd(), 2}},
		func(pid int) {
			if err := g.Add(pid); err != nil {
				t.Error(err)
			}
		},
		func(int, syscall.WaitStatus) {})
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(rd)
	if rel := strings.TrimPrefix(g.Path, FindMount()); !strings.Contains(string(out), "0::"+rel+"\n") {
		t.Fatalf("the program saw itself in %q, want %s", out, rel)
	}
	wait.For(t, "cat to be reaped", wait.Bool(func() bool { return r.ReapOnce() != 0 }))
}

func TestCloneIntoUnsupported(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("exec /bin/x: %w", syscall.ENOSYS), true},
		{syscall.E2BIG, true},
		{fmt.Errorf("exec /bin/x: %w", syscall.ENOENT), false},
	} {
		if got := CloneIntoUnsupported(tc.err); got != tc.want {
			t.Errorf("CloneIntoUnsupported(%v) = %v", tc.err, got)
		}
	}
}
