package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nitroinit/nitroinit/internal/procfs"
)

func becomeSubreaper() error {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("prctl(PR_SET_CHILD_SUBREAPER): %w", err)
	}
	return nil
}

// children returns the direct children of pid, read from every thread's
// /proc children list (a Go program forks from any of its threads, and
// orphans are reparented to one of them). Zombies are included: they stay
// on the list until their parent reaps them.
func children(pid int) []int {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	var out []int
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

// countChildren counts pid's children without building a list, but stops
// reading once it has seen more than limit (limit < 0: no limit). The
// reaping benchmark polls it every millisecond while ten thousand zombies
// are listed; with a limit and a small buf, a poll reads one short block
// per thread instead of the whole list, so that the benchmark takes as
// little CPU as it can from the reaper it measures.
func countChildren(pid int, buf []byte, limit int) int {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	n := 0
	for _, t := range tasks {
		f, err := os.Open(t)
		if err != nil {
			continue
		}
		for limit < 0 || n <= limit {
			k, err := f.Read(buf)
			n += bytes.Count(buf[:k], []byte{' '})
			if err != nil || k == 0 {
				break
			}
		}
		f.Close()
		if limit >= 0 && n > limit {
			break
		}
	}
	return n
}

// descendants returns every process below pid.
func descendants(pid int) []int {
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children(p) {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

func cmdline(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return string(bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
}

func isZombie(pid int) bool {
	st, err := procfs.FS{}.Stat(pid)
	return err != nil || procfs.Zombie(st.State)
}

// memKB returns a process's VmRSS and Pss (from smaps_rollup) in KiB.
// Pss splits shared pages among the processes that map them, so summing it
// over a tree of processes does not count the shared C library many times.
func memKB(pid int) (rss, pss int64, err error) {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	rss = field(st, "VmRSS:")
	sm, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return rss, 0, err
	}
	return rss, field(sm, "Pss:"), nil
}

// aloneKB returns the memory that the processes pids take together when
// nothing else on the machine maps the same files: every private page, and
// every shared file-backed page once (the largest resident size any of them
// has of that part of that file), in KiB. Unlike summed Pss it does not
// depend on how many unrelated processes on the machine share the C library
// (hundreds on a busy machine, a handful in an enclave), which moved
// runit's Pss from 6.1 to 4.8 MB between runs on the same day.
func aloneKB(pids []int) (int64, error) {
	shared := map[string]int64{}
	var total int64
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
		if err != nil {
			return 0, err
		}
		key, anon := "", false
		for _, l := range strings.Split(string(b), "\n") {
			f := strings.Fields(l)
			if len(f) == 0 {
				continue
			}
			switch {
			case strings.Contains(f[0], "-") && len(f) >= 5:
				// A mapping's header: range perms offset dev inode [path].
				key, anon = f[1]+" "+f[2]+" "+f[3]+" "+f[4], f[4] == "0"
			case f[0] == "Private_Clean:" || f[0] == "Private_Dirty:":
				total += atoi(f[1])
			case f[0] == "Shared_Clean:" || f[0] == "Shared_Dirty:":
				if anon {
					// Anonymous pages shared after a fork: the key
					// cannot tell whose they are, so count them in full.
					total += atoi(f[1])
				} else {
					shared[key+" "+f[0]] = max(shared[key+" "+f[0]], atoi(f[1]))
				}
			}
		}
	}
	for _, v := range shared {
		total += v
	}
	return total, nil
}

func atoi(s string) int64 {
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}

func field(b []byte, key string) int64 {
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, key) {
			f := strings.Fields(l[len(key):])
			if len(f) > 0 {
				n, _ := strconv.ParseInt(f[0], 10, 64)
				return n
			}
		}
	}
	return 0
}

// killTree SIGKILLs cmd's process and everything below it, then reaps
// them all: cmd with Wait, the rest (reparented to us, the subreaper) with
// wait4. Supervisors are killed rather than stopped so that every tool's
// teardown costs the same and cannot skew the next run.
//
// The supervisor is killed before what it started, so that it cannot
// restart a service it sees die (supervisord with autorestart did, between
// the kills, and its new children outlived the run). A child forked after
// the walk still escapes the supervisor's tree when the supervisor dies: it
// is reparented to us. So every pass also takes our own children that were
// not there when killTree began, and their trees.
func killTree(cmd *exec.Cmd) {
	if cmd == nil || cmd.Process == nil {
		return
	}
	self := os.Getpid()
	before := map[int]bool{}
	for _, c := range children(self) {
		before[c] = true
	}
	for i := 0; i < 50; i++ {
		pids := append([]int{cmd.Process.Pid}, descendants(cmd.Process.Pid)...)
		for _, c := range children(self) {
			if !before[c] {
				pids = append(append(pids, c), descendants(c)...)
			}
		}
		live := 0
		for _, p := range pids {
			if !isZombie(p) {
				live++
				syscall.Kill(p, syscall.SIGKILL)
			}
		}
		if live == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	cmd.Wait()
	reapStray()
}

// reapStray reaps every exited child that no exec.Cmd waits for.
func reapStray() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if pid <= 0 || errors.Is(err, syscall.ECHILD) {
			return
		}
	}
}

// waitFor polls cond every step until it holds or timeout passes.
func waitFor(timeout, step time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(step)
	}
	return nil
}
