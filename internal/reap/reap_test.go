package reap

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nitroinit/nitroinit/internal/testbin"
	"github.com/nitroinit/nitroinit/internal/wait"
)

// The tests fork real processes. Run in a subprocess that is a subreaper, so
// that the orphans reparent to it rather than to the test runner's parent.
func TestMain(m *testing.M) {
	if err := BecomeSubreaper(); err != nil {
		panic(err)
	}
	os.Exit(m.Run())
}

func TestStartRoutesExitStatus(t *testing.T) {
	r := New(t.Logf)
	got := make(chan syscall.WaitStatus, 1)
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	pid, err := r.Start(sh, []string{"sh", "-c", "exit 7"}, &syscall.ProcAttr{Files: []uintptr{0, 1, 2}},
		func(_ int, ws syscall.WaitStatus) { got <- ws })
	if err != nil {
		t.Fatal(err)
	}
	if ws := reapUntil(t, r, got); ws.ExitStatus() != 7 {
		t.Fatalf("pid %d: exit status %d, want 7", pid, ws.ExitStatus())
	}
}

// reapUntil calls r.ReapOnce until an exit status arrives on got, and
// returns it. The exit shows nothing until it comes: one stall interval.
func reapUntil(t *testing.T, r *Reaper, got <-chan syscall.WaitStatus) syscall.WaitStatus {
	t.Helper()
	var ws syscall.WaitStatus
	arrived := wait.Receive(got, &ws)
	wait.For(t, "the exit status to be delivered", func() (bool, string) {
		r.ReapOnce()
		return arrived()
	})
	return ws
}

func TestOrphansAreReaped(t *testing.T) {
	// Built before the reaper runs: it would reap go build's children.
	bin := buildZombies(t)
	r := New(t.Logf)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Run(ctx)
	orphanStorm(t, r, bin, 300)
	if z := zombies(t); z != 0 {
		t.Fatalf("%d zombies left", z)
	}
}

// While batching (forced here: every walk counts as crowded), Run still
// reaps every orphan and routes the exit status of every child it started.
func TestBatchingReapsEverything(t *testing.T) {
	bin := buildZombies(t)
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	r := New(t.Logf)
	r.crowdedScan = 0
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Run(ctx)
	got := make(chan syscall.WaitStatus, 1)
	if _, err := r.Start(sh, []string{"sh", "-c", "sleep 0.2; exit 7"}, &syscall.ProcAttr{Files: []uintptr{0, 1, 2}},
		func(_ int, ws syscall.WaitStatus) { got <- ws }); err != nil {
		t.Fatal(err)
	}
	orphanStorm(t, r, bin, 300)
	var ws syscall.WaitStatus
	wait.For(t, "the started child's exit status", wait.Receive(got, &ws))
	if ws.ExitStatus() != 7 {
		t.Fatalf("exit status %d, want 7", ws.ExitStatus())
	}
	if r.batches.Load() == 0 {
		t.Fatal("Run never batched")
	}
	if z := zombies(t); z != 0 {
		t.Fatalf("%d zombies left", z)
	}
}

// buildZombies builds internal/testprog/zombies. Call it before a reaper
// runs: the reaper would reap go build's children.
func buildZombies(t *testing.T) string {
	t.Helper()
	bins, err := testbin.Build(t.TempDir(), "", "./internal/testprog/zombies")
	if err != nil {
		t.Fatal(err)
	}
	return bins[0]
}

// orphanStorm runs zombies, which forks n children blocked on a pipe and
// exits: they become r's orphans and exit together when it has gone,
// however slowly the machine forks. (A shell's "sleep 1 &" loop was
// load-dependent: on a busy machine the first sleepers exited while the
// shell still ran, and the shell reaped them.) It waits until r has
// reaped them all, and zombies itself: a child started with os/exec, its
// status goes to the reaper as an orphan too.
func orphanStorm(t *testing.T, r *Reaper, bin string, n int) {
	t.Helper()
	before := r.Orphans()
	if err := exec.Command(bin, "-n", strconv.Itoa(n)).Start(); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "every orphan reaped", func() (bool, string) {
		got := r.Orphans() - before
		return got >= uint64(n)+1, fmt.Sprintf("reaped %d orphans, want %d", got, n+1)
	})
}

// zombies counts zombie children of this process.
func zombies(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	me := strconv.Itoa(os.Getpid())
	n := 0
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		i := lastIndex(s, ')')
		if i < 0 || i+4 > len(s) {
			continue
		}
		var state byte
		var ppid string
		state = s[i+2]
		rest := s[i+4:]
		for j := 0; j < len(rest); j++ {
			if rest[j] == ' ' {
				ppid = rest[:j]
				break
			}
		}
		if state == 'Z' && ppid == me {
			n++
		}
	}
	return n
}

func lastIndex(s string, c byte) int {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == c {
			return i
		}
	}
	return -1
}

func TestStartAtExecSetsLimitsBeforeTheProgramRuns(t *testing.T) {
	r := New(t.Logf)
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	rd, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	got := make(chan syscall.WaitStatus, 1)
	var seen int
	pid, traced, err := r.StartAtExec(sh, []string{"sh", "-c", "ulimit -n; exit 3"},
		&syscall.ProcAttr{Files: []uintptr{0, w.Fd(), 2}},
		func(pid int) {
			seen = pid
			lim := unix.Rlimit{Cur: 77, Max: 77}
			if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &lim, nil); err != nil {
				t.Error(err)
			}
		},
		func(_ int, ws syscall.WaitStatus) { got <- ws })
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	if seen != pid {
		t.Fatalf("atExec saw pid %d, Start returned %d", seen, pid)
	}
	t.Logf("traced: %v", traced)
	out, _ := io.ReadAll(rd)
	if strings.TrimSpace(string(out)) != "77" {
		t.Errorf("the program saw RLIMIT_NOFILE %q, want 77", out)
	}
	if ws := reapUntil(t, r, got); ws.ExitStatus() != 3 {
		t.Fatalf("exit status %v, want 3", ws)
	}
}

// Run starts with no children, so it waits in its idle state; a child
// started then must still be reaped and its status routed, by Run alone.
func TestRunReapsChildStartedWhileIdle(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	r := New(t.Logf)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Run(ctx)
	for i, code := range []int{3, 4} { // twice: idle, busy, idle again
		got := make(chan syscall.WaitStatus, 1)
		if _, err := r.Start(sh, []string{"sh", "-c", "exit " + strconv.Itoa(code)}, &syscall.ProcAttr{Files: []uintptr{0, 1, 2}},
			func(_ int, ws syscall.WaitStatus) { got <- ws }); err != nil {
			t.Fatal(err)
		}
		var ws syscall.WaitStatus
		wait.For(t, fmt.Sprintf("child %d's exit status", i), wait.Receive(got, &ws))
		if ws.ExitStatus() != code {
			t.Fatalf("child %d: exit status %d, want %d", i, ws.ExitStatus(), code)
		}
	}
}
