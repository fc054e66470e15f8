package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Row 1: an orphan storm. A shell under the supervisor runs the zombies
// program, which forks N children blocked on one pipe and exits; they all
// exit at once and, orphaned, are reparented to the nearest subreaper: the
// supervisor. The clock starts when zombies reports that it is about to
// exit and stops when the supervisor has no children left but the shell.
// Both supervisors get the same shell and the same command.
func orphanCount(e *env) int {
	if e.quick {
		return 1000
	}
	return 10000
}

// stormCommand returns the shell command that makes the storm, writing
// zombies' report into fifo, and keeps the shell alive afterwards so that
// tini (which exits with its child) stays up.
func (e *env) stormCommand(fifo string) []string {
	return []string{"/bin/sh", "-c", fmt.Sprintf("%s -n %d >%s; exec sleep 1000", e.zombies, orphanCount(e), fifo)}
}

// measureStorm times the storm under the supervisor sup, which has started
// the storm command; the storm's shell stays sup's one child afterwards.
func measureStorm(sup *exec.Cmd, fifo string, out *tail) ([]float64, error) {
	// Opening the FIFO blocks until the writer (zombies' stdout) opens it.
	opened := make(chan *os.File, 1)
	go func() {
		f, err := os.OpenFile(fifo, os.O_RDONLY, 0)
		if err != nil {
			opened <- nil
			return
		}
		opened <- f
	}()
	var f *os.File
	select {
	case f = <-opened:
	case <-time.After(30 * time.Second):
		return nil, fmt.Errorf("the storm did not start within 30s; supervisor output: %s", out)
	}
	if f == nil {
		return nil, fmt.Errorf("opening %s failed", fifo)
	}
	defer f.Close()
	r := bufio.NewReader(f)
	line, err := r.ReadString('\n')
	start := time.Now()
	if err != nil || !strings.Contains(line, "forked") {
		return nil, fmt.Errorf("zombies did not report (%q, %v); supervisor output: %s", line, err, out)
	}
	// Every orphan holds the FIFO open as its stdout until it exits, so
	// EOF means all have exited; those not yet reaped are then zombies
	// listed among the supervisor's children.
	if _, err := io.Copy(io.Discard, r); err != nil {
		return nil, fmt.Errorf("reading %s: %w", fifo, err)
	}
	exited := time.Now()
	buf := make([]byte, 64<<10)
	// The shell that ran zombies stays: one child.
	if err := waitFor(60*time.Second, time.Millisecond, "every orphan to be reaped", func() bool {
		return countChildren(sup.Process.Pid, buf) <= 1
	}); err != nil {
		return nil, err
	}
	end := time.Now()
	return []float64{float64(end.Sub(start).Microseconds()) / 1000, float64(end.Sub(exited).Microseconds()) / 1000}, nil
}

func mkfifo(dir string) (string, error) {
	p := filepath.Join(dir, "report")
	if err := syscall.Mkfifo(p, 0o600); err != nil {
		return "", fmt.Errorf("mkfifo %s: %w", p, err)
	}
	return p, nil
}

func reapOurs(e *env) ([]float64, error) {
	dir, err := e.scratch("reap-ours")
	if err != nil {
		return nil, err
	}
	fifo, err := mkfifo(dir)
	if err != nil {
		return nil, err
	}
	argv := e.stormCommand(fifo)
	body := fmt.Sprintf("ExecStart = %q\nRestart = \"no\"\n", argv[0]+" -c '"+argv[2]+"'")
	o, err := e.startOurs(dir, map[string]string{"storm": body}, "", nil)
	if err != nil {
		return nil, err
	}
	defer killTree(o.cmd)
	return measureStorm(o.cmd, fifo, o.out)
}

func reapTini(e *env) ([]float64, error) {
	dir, err := e.scratch("reap-tini")
	if err != nil {
		return nil, err
	}
	fifo, err := mkfifo(dir)
	if err != nil {
		return nil, err
	}
	cmd, out, err := startCmd(nil, "tini", append([]string{"-s", "--"}, e.stormCommand(fifo)...)...)
	if err != nil {
		return nil, err
	}
	defer killTree(cmd)
	return measureStorm(cmd, fifo, out)
}

func reapRow(runs int) row {
	return row{
		title: "Orphan reaping",
		metrics: []metric{
			{name: "ms from the storm's start until 10 000 orphans exiting at once are all reaped", format: ms},
			{name: "ms from the last orphan's exit until the last reap (the reaper's own lag)", format: ms},
		},
		ours:   contender{name: "init (subreaper mode)", measure: reapOurs},
		theirs: []contender{{name: "tini -s", needs: []string{"tini"}, measure: reapTini}},
		runs:   runs,
	}
}

func ms(v float64) string { return fmt.Sprintf("%.1f ms", v) }
