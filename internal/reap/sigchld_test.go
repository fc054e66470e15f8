package reap

import (
	"context"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/nitroinit/nitroinit/internal/wait"
)

// caughtSignals returns the SigCgt mask of this process: the signals with a
// handler installed.
func caughtSignals(t *testing.T) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "SigCgt:"); ok {
			m, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatalf("SigCgt %q: %v", v, err)
			}
			return m
		}
	}
	t.Fatal("no SigCgt line in /proc/self/status")
	return 0
}

// Run leaves SIGCHLD at SIG_DFL, so that an exit wakes no signal handler,
// and children are still left for it to reap with their status (SIG_IGN
// would have the kernel reap them and lose the status).
func TestRunLeavesSIGCHLDUncaught(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	// Before the first Run the Go runtime's handler is installed; an
	// earlier test's Run may already have removed it (it is process-wide).
	const bit = 1 << (syscall.SIGCHLD - 1)
	r := New(t.Logf)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Run(ctx)
	got := make(chan syscall.WaitStatus, 1)
	if _, err := r.Start(sh, []string{"sh", "-c", "exit 5"}, &syscall.ProcAttr{Files: []uintptr{0, 1, 2}},
		func(_ int, ws syscall.WaitStatus) { got <- ws }); err != nil {
		t.Fatal(err)
	}
	var ws syscall.WaitStatus
	wait.For(t, "the child's exit status", wait.Receive(got, &ws))
	if ws.ExitStatus() != 5 {
		t.Fatalf("exit status %d, want 5", ws.ExitStatus())
	}
	if caughtSignals(t)&bit != 0 {
		t.Fatal("SIGCHLD still caught while Run runs: every exit wakes a thread for the handler")
	}
}
