package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
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
// the storm command; the storm's shell stays sup's one child afterwards. It
// returns the wall time and the supervisor's CPU time over the same span,
// both in ms.
func measureStorm(sup *exec.Cmd, fifo string, out *tail) (wall, cpu float64, err error) {
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
		return 0, 0, fmt.Errorf("the storm did not start within 30s; supervisor output: %s", out)
	}
	if f == nil {
		return 0, 0, fmt.Errorf("opening %s failed", fifo)
	}
	defer f.Close()
	r := bufio.NewReader(f)
	line, err := r.ReadString('\n')
	start, cpu0 := time.Now(), cpuTime(sup.Process.Pid)
	if err != nil || !strings.Contains(line, "forked") {
		return 0, 0, fmt.Errorf("zombies did not report (%q, %v); supervisor output: %s", line, err, out)
	}
	// Every orphan holds the FIFO open as its stdout until it exits, so
	// EOF means all have exited and been reparented to sup; those not yet
	// reaped are then zombies listed among its children.
	if _, err := io.Copy(io.Discard, r); err != nil {
		return 0, 0, fmt.Errorf("reading %s: %w", fifo, err)
	}
	buf := make([]byte, 64)
	// The shell that ran zombies stays: one child.
	if err := waitFor(60*time.Second, time.Millisecond, "every orphan to be reaped", func() bool {
		return countChildren(sup.Process.Pid, buf, 1) <= 1
	}); err != nil {
		return 0, 0, err
	}
	wall = float64(time.Since(start).Microseconds()) / 1000
	return wall, float64(cpuTime(sup.Process.Pid)-cpu0) / 1e6, nil
}

// cpuTime returns the CPU time, in ns, that the threads of process pid have
// run so far (the first field of each /proc/PID/task/TID/schedstat): the
// supervisor's own work, system calls included, whichever CPU and whatever
// else ran beside it. Wall-clock figures of a storm depend on how the
// scheduler shares two CPUs between 10 000 exiting processes and the
// reaper; this one does not.
func cpuTime(pid int) int64 {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	var sum int64
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue // the thread ended
		}
		if f := strings.Fields(string(b)); len(f) > 0 {
			n, _ := strconv.ParseInt(f[0], 10, 64)
			sum += n
		}
	}
	return sum
}

func mkfifo(dir string) (string, error) {
	p := filepath.Join(dir, "report")
	if err := syscall.Mkfifo(p, 0o600); err != nil {
		return "", fmt.Errorf("mkfifo %s: %w", p, err)
	}
	return p, nil
}

func reapOurs(e *env) ([]float64, error) {
	return measureReap(e, "reap-ours", func(dir string, argv []string) (*exec.Cmd, *tail, error) {
		body := fmt.Sprintf("ExecStart = %q\nRestart = \"no\"\n", argv[0]+" -c '"+argv[2]+"'")
		o, err := e.startOurs(dir, map[string]string{"storm": body}, "", nil)
		if err != nil {
			return nil, nil, err
		}
		return o.cmd, o.out, nil
	})
}

func reapTini(e *env) ([]float64, error) {
	return measureReap(e, "reap-tini", func(_ string, argv []string) (*exec.Cmd, *tail, error) {
		return startCmd(nil, "tini", append([]string{"-s", "--"}, argv...)...)
	})
}

// measureReap runs the single-exit lag and then the storm, each under a
// supervisor of its own that start runs argv under.
func measureReap(e *env, name string, start func(dir string, argv []string) (*exec.Cmd, *tail, error)) ([]float64, error) {
	dir, err := e.scratch(name)
	if err != nil {
		return nil, err
	}
	// The lag first: after a storm the kernel goes on freeing 10 000
	// tasks for a while, which would be measured with it.
	lag, lagCPU, err := measureLag(e, filepath.Join(dir, "lag"), start)
	if err != nil {
		return nil, err
	}
	fifo, err := mkfifo(dir)
	if err != nil {
		return nil, err
	}
	sup, out, err := start(dir, e.stormCommand(fifo))
	if err != nil {
		return nil, err
	}
	storm, stormCPU, err := measureStorm(sup, fifo, out)
	killTree(sup)
	if err != nil {
		return nil, err
	}
	return []float64{storm, stormCPU, lag, lagCPU}, nil
}

// lagOrphans is how many single exits measureLag times per run.
func lagOrphans(e *env) int {
	if e.quick {
		return 20
	}
	return 100
}

// measureLag times the reaper's own lag: how long after one orphan exits,
// with the supervisor otherwise idle, the supervisor reaps it. A shell under
// the supervisor starts lagOrphans subshells that each block reading one
// line from a FIFO, and exits: the subshells become the supervisor's
// orphans. Then, one at a time, the benchmark writes one line (releasing
// exactly one subshell, as sh reads a byte at a time) and watches every
// orphan through a pidfd, which becomes readable when its process exits and
// reports POLLHUP when it has been reaped. The figure is the median, over
// the orphans, of the time from the one event to the other, both seen by
// this process in the same way for either supervisor. It also returns the
// supervisor's CPU time over the k exits divided by k, in µs.
//
// An earlier form timed the tail of the storm instead (from the last
// orphan's exit to the last reap). That figure is the time to drain
// whatever backlog of zombies the reaper had when the exits stopped, and
// the backlog ranged from 1 to 7 700 of the 10 000 between consecutive runs
// on a loaded two-core machine, depending on how the scheduler had shared
// the CPUs between the exiting orphans and the reaper: hence the 40× spread.
func measureLag(e *env, dir string, start func(dir string, argv []string) (*exec.Cmd, *tail, error)) (lag, cpuPerExit float64, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, 0, err
	}
	release := filepath.Join(dir, "release")
	if err := syscall.Mkfifo(release, 0o600); err != nil {
		return 0, 0, fmt.Errorf("mkfifo %s: %w", release, err)
	}
	// Held open for reading and writing, so that neither the subshells'
	// opens nor ours block, and so that the FIFO never reports EOF.
	rel, err := os.OpenFile(release, os.O_RDWR, 0)
	if err != nil {
		return 0, 0, err
	}
	defer rel.Close()
	k := lagOrphans(e)
	script := filepath.Join(dir, "orphans.sh")
	body := fmt.Sprintf("i=0\nwhile [ $i -lt %d ]; do read x <%s & echo $!; i=$((i+1)); done\n", k, release)
	if err := os.WriteFile(script, []byte(body), 0o644); err != nil {
		return 0, 0, err
	}
	pidFile := filepath.Join(dir, "pids")
	sup, out, err := start(dir, []string{"/bin/sh", "-c", fmt.Sprintf("/bin/sh %s >%s; exec sleep 1000", script, pidFile)})
	if err != nil {
		return 0, 0, err
	}
	defer killTree(sup)
	var pids []int
	buf := make([]byte, 64<<10)
	// Done when every subshell has been reparented: the shell and k orphans.
	if err := waitFor(30*time.Second, 5*time.Millisecond, "the orphans to be started", func() bool {
		b, _ := os.ReadFile(pidFile)
		pids = pids[:0]
		for _, f := range strings.Fields(string(b)) {
			if p, err := strconv.Atoi(f); err == nil {
				pids = append(pids, p)
			}
		}
		return len(pids) == k && countChildren(sup.Process.Pid, buf, -1) == k+1
	}); err != nil {
		return 0, 0, fmt.Errorf("%w; supervisor output: %s", err, out)
	}
	fds := make([]unix.PollFd, 0, k)
	defer func() {
		for _, p := range fds {
			unix.Close(int(p.Fd))
		}
	}()
	for _, p := range pids {
		fd, err := unix.PidfdOpen(p, 0)
		if err != nil {
			return 0, 0, fmt.Errorf("pidfd_open %d: %w", p, err)
		}
		fds = append(fds, unix.PollFd{Fd: int32(fd), Events: unix.POLLIN})
	}
	lags := make([]float64, 0, k)
	cpu0 := cpuTime(sup.Process.Pid)
	for len(fds) > 0 {
		released := time.Now()
		if _, err := rel.Write([]byte{'\n'}); err != nil {
			return 0, 0, fmt.Errorf("releasing an orphan: %w", err)
		}
		i, _, err := pollOne(fds, 10*time.Second)
		if err != nil {
			return 0, 0, fmt.Errorf("waiting for an orphan to exit: %w; supervisor output: %s", err, out)
		}
		one := []unix.PollFd{{Fd: fds[i].Fd}} // no events asked: POLLHUP only
		if _, reaped, err := pollOne(one, 10*time.Second); err != nil {
			return 0, 0, fmt.Errorf("waiting for an orphan to be reaped: %w; supervisor output: %s", err, out)
		} else {
			lags = append(lags, float64(reaped.Sub(released).Nanoseconds())/1000)
		}
		unix.Close(int(fds[i].Fd))
		fds = append(fds[:i], fds[i+1:]...)
	}
	return median(lags), float64(cpuTime(sup.Process.Pid)-cpu0) / 1e3 / float64(k), nil
}

// pollOne waits until one of fds reports an event and returns its index and
// the time it was seen.
func pollOne(fds []unix.PollFd, timeout time.Duration) (int, time.Time, error) {
	for {
		n, err := unix.Poll(fds, int(timeout.Milliseconds()))
		now := time.Now()
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, now, err
		}
		if n == 0 {
			return 0, now, fmt.Errorf("nothing happened within %v", timeout)
		}
		for i, p := range fds {
			if p.Revents != 0 {
				return i, now, nil
			}
		}
	}
}

func reapRow(runs int) row {
	return row{
		title: "Orphan reaping",
		metrics: []metric{
			{name: "ms from the storm's start until 10 000 orphans exiting at once are all reaped", format: ms},
			{name: "the supervisor's CPU time over the same span (its threads' run time: what the reaper itself costs)", format: ms},
			{name: "µs from one orphan's exit until its reap, the supervisor otherwise idle (the reaper's own lag; median of 100 exits)", format: us},
			{name: "the supervisor's CPU time per single exit over those 100 (µs)", format: us},
		},
		ours:   contender{name: "init (subreaper mode)", measure: reapOurs},
		theirs: []contender{{name: "tini -s", needs: []string{"tini"}, measure: reapTini}},
		runs:   runs,
	}
}

func ms(v float64) string { return fmt.Sprintf("%.1f ms", v) }

func us(v float64) string { return fmt.Sprintf("%.0f µs", v) }
