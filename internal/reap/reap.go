// Package reap owns the one wait4(-1) loop of the process: it reaps every
// child and orphan and routes each exit status to whoever started that
// process.
//
// Children must be started through Reaper.Start (or registered with Track
// while holding the lock Start uses) and never waited for with os.Process.Wait
// or exec.Cmd.Wait, which would race the global wait.
package reap

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/nitroinit/nitroinit/internal/yield"
)

// ExitFunc receives the exit status of a process started through the
// reaper. It runs on the reaper's goroutine and must not block for long.
type ExitFunc func(pid int, status syscall.WaitStatus)

// Reaper reaps children. The zero value is not usable; call New.
type Reaper struct {
	mu      sync.Mutex // held across fork+register and across each reap pass
	owners  map[int]ExitFunc
	orphans uint64 // reaped processes nobody owned
	logf    func(string, ...any)
	// started is poked after each Start, so that a Run with no children
	// to wait for learns that it has one again.
	started chan struct{}
	// crowdedScan is the const of that name; tests lower it.
	crowdedScan time.Duration
	batches     atomic.Uint64 // collections made while batching, for tests
}

// New returns a reaper. logf receives diagnostics; it may be nil.
func New(logf func(string, ...any)) *Reaper {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	return &Reaper{owners: map[int]ExitFunc{}, logf: logf, started: make(chan struct{}, 1), crowdedScan: crowdedScan}
}

// BecomeSubreaper makes orphaned descendants of this process its children,
// so that they can be reaped here. PID 1 gets them anyway.
func BecomeSubreaper() error {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("PR_SET_CHILD_SUBREAPER: %w", err)
	}
	return nil
}

// Start forks and execs argv0 and registers onExit for the new process
// before any reap pass can see it exit.
func (r *Reaper) Start(argv0 string, argv []string, attr *syscall.ProcAttr, onExit ExitFunc) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	pid, err := syscall.ForkExec(argv0, argv, attr)
	if err != nil {
		return 0, err
	}
	r.owners[pid] = onExit
	r.poke()
	return pid, nil
}

// poke tells Run that a child was started.
func (r *Reaper) poke() {
	select {
	case r.started <- struct{}{}:
	default: // a poke is already pending
	}
}

// StartAtExec is Start, with atExec called for the new process once its
// exec has succeeded and before the new program runs its first
// instruction: the place to set what fork and exec cannot (rlimits of the
// child, its oom_score_adj) without racing the program. Go's ForkExec has
// no hook there, so the child is started traced (PTRACE_TRACEME), stops
// with SIGTRAP after the exec, and is detached once atExec returns.
//
// Where ptrace is refused (a seccomp filter, Yama's ptrace_scope 3), the
// process is started untraced, atExec is called just after the exec, and
// traced is false.
func (r *Reaper) StartAtExec(argv0 string, argv []string, attr *syscall.ProcAttr, atExec func(pid int), onExit ExitFunc) (pid int, traced bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	// The tracer is the thread that forked; it must also wait and detach.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	sys := syscall.SysProcAttr{}
	if attr.Sys != nil {
		sys = *attr.Sys
	}
	sys.Ptrace = true
	traceAttr := *attr
	traceAttr.Sys = &sys
	pid, err = syscall.ForkExec(argv0, argv, &traceAttr)
	if err == syscall.EPERM || err == syscall.ENOSYS {
		pid, err = syscall.ForkExec(argv0, argv, attr)
		if err != nil {
			return 0, false, err
		}
		atExec(pid)
		r.owners[pid] = onExit
		r.poke()
		return pid, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	var ws syscall.WaitStatus
	for {
		_, err := syscall.Wait4(pid, &ws, unix.WALL, nil)
		if err != syscall.EINTR {
			break
		}
	}
	if !ws.Stopped() {
		// Killed before it ran (SIGKILL is not stopped by tracing):
		// the exit is ours to deliver, as a reap pass would.
		go r.call(exit{pid, ws, onExit})
		return pid, true, nil
	}
	atExec(pid)
	// Detach without delivering the exec's SIGTRAP.
	if err := syscall.PtraceDetach(pid); err != nil {
		r.logf("reap: detaching from pid %d: %v", pid, err)
	}
	r.owners[pid] = onExit
	r.poke()
	return pid, true, nil
}

// Orphans reports how many processes were reaped that nobody had started
// through this reaper.
func (r *Reaper) Orphans() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.orphans
}

type exit struct {
	pid    int
	status syscall.WaitStatus
	fn     ExitFunc
}

// ReapOnce collects every child that has exited, without blocking, and then
// calls the owners' ExitFuncs. It returns the number reaped.
func (r *Reaper) ReapOnce() int {
	n, _ := r.reapAll()
	return n
}

// reapAll is ReapOnce, and also reports how long its last wait4 took: the
// one that found no zombie, and so walked the whole list of children.
func (r *Reaper) reapAll() (n int, scan time.Duration) {
	var done []exit
	r.mu.Lock()
	for {
		var ws syscall.WaitStatus
		t0 := time.Now()
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			scan = time.Since(t0)
			break
		}
		n++
		if fn, ok := r.owners[pid]; ok {
			delete(r.owners, pid)
			done = append(done, exit{pid, ws, fn})
		} else {
			r.orphans++
		}
	}
	r.mu.Unlock()
	for _, e := range done {
		r.call(e)
	}
	return n, scan
}

func (r *Reaper) call(e exit) {
	defer func() {
		if v := recover(); v != nil {
			r.logf("reap: exit handler for pid %d panicked: %v", e.pid, v)
		}
	}()
	e.fn(e.pid, e.status)
}

// Run reaps until ctx ends. It never returns early because of a panic.
//
// It blocks in waitid(WEXITED|WNOWAIT), which returns as soon as any child
// has exited without reaping it, and then reaps that one child by PID, which
// the kernel does without walking the list of children again, and without
// waiting for SIGCHLD to be delivered.
//
// Run needs no SIGCHLD at all, and sets its disposition to SIG_DFL (see
// quietChildSignal): the kernel then drops the signal when a child exits
// instead of waking a thread of this process to run the Go runtime's
// handler for it, a second wake-up on every exit besides the one of the
// thread in waitid (docs/benchmarks.md, row 1). The one state in which
// waitid cannot block is having no children at all (ECHILD); only a Start
// can end it, since orphans are reparented from descendants, so Run then
// waits for Start's poke, with a one-second tick as the safety net for a
// child forked some other way. The loop is paced (package yield) so that
// the runtime does not take its processor away at every waitid, and with
// thousands of children it reaps in batches instead (see crowdedScan).
func (r *Reaper) Run(ctx context.Context) {
	if err := quietChildSignal(); err != nil {
		r.logf("reap: %v; every exit also wakes the signal handler", err)
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	r.safeReapAll()
	var (
		pace      yield.Pacer
		batching  bool
		quiet     int // collections in a row that found nothing
		lastProbe time.Time
	)
	for ctx.Err() == nil {
		if batching {
			time.Sleep(batchPause)
			r.batches.Add(1)
			n, scan := r.safeReapAll()
			if n == 0 {
				quiet++
			} else {
				quiet = 0
			}
			batching = scan >= r.crowdedScan && quiet < quietBatches
			continue
		}
		pace.Maybe()
		var info unix.Siginfo
		err := unix.Waitid(unix.P_ALL, 0, &info, unix.WEXITED|unix.WNOWAIT, nil)
		switch err {
		case nil:
			r.safeReapPID(int(siginfoPID(&info)))
			if now := time.Now(); now.Sub(lastProbe) >= probeEvery {
				lastProbe = now
				_, scan := r.safeReapAll()
				batching, quiet = scan >= r.crowdedScan, 0
			}
			continue
		case syscall.EINTR:
			continue
		case syscall.ECHILD:
		default:
			r.logf("reap: waitid: %v", err)
		}
		r.idle(ctx, tick.C)
	}
}

// Batching. Every wait for "any child" walks the kernel's list of this
// process's children, live ones included, until it finds a zombie: waitid
// does so before it sleeps and again when woken, so a reaper that keeps up
// with exits one at a time pays two walks per exit. With thousands of
// children (a storm of orphans) those walks are most of the reaper's CPU
// time, taken from the exiting processes (docs/benchmarks.md, row 1). So
// Run measures a walk now and then, and while one that finds nothing takes
// crowdedScan or more and exits keep coming, it collects them every
// batchPause instead: one walk per batch, and a reap each for the rest.
// The Linux kernel offers no cheaper way: every wait for "any child"
// walks, and a pidfd per orphan would need the orphans' PIDs first.
const (
	// crowdedScan is the length of a fruitless walk that makes Run batch:
	// 2 000-3 000 children on the 2-CPU machine of docs/benchmarks.md,
	// where a fruitless wait4 took 1.2 µs with 100 children, 9 µs with
	// 1 000 and 150 µs with 5 000. A walk that a busy machine stretches
	// past it costs quietBatches collections at most: batching ends when
	// that many in a row find nothing.
	crowdedScan = 30 * time.Microsecond
	// batchPause is how long Run lets exits gather while batching: the
	// most an exit then waits to be reaped.
	batchPause = time.Millisecond
	// quietBatches is how many collections in a row that find nothing end
	// batching: a storm's exits come unevenly, and a reaper that left its
	// batches at the first gap waited for the next exits one at a time.
	quietBatches = 3
	// probeEvery is how often, at most, Run measures a walk while it reaps
	// exits one at a time.
	probeEvery = time.Millisecond
)

// idle waits, while there are no children to wait for, until one is
// started, the tick fires or ctx ends, and then reaps whatever is there.
func (r *Reaper) idle(ctx context.Context, tick <-chan time.Time) {
	select {
	case <-ctx.Done():
		return
	case <-r.started:
	case <-tick:
	}
	r.safeReapAll()
}

// siginfoPID extracts si_pid from a siginfo_t filled by waitid: it follows
// si_signo, si_errno and si_code (three ints) and the padding of the union.
func siginfoPID(info *unix.Siginfo) int32 {
	b := (*[128]byte)(unsafe.Pointer(info))
	return *(*int32)(unsafe.Pointer(&b[16]))
}

// reapPID reaps one child that waitid reported, and calls its owner.
func (r *Reaper) reapPID(pid int) {
	if pid <= 0 {
		r.ReapOnce()
		return
	}
	r.mu.Lock()
	var ws syscall.WaitStatus
	got, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
	for err == syscall.EINTR {
		got, err = syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
	}
	if got != pid {
		r.mu.Unlock()
		return
	}
	fn, ok := r.owners[pid]
	if ok {
		delete(r.owners, pid)
	} else {
		r.orphans++
	}
	r.mu.Unlock()
	if ok {
		r.call(exit{pid, ws, fn})
	}
}

func (r *Reaper) safeReapPID(pid int) {
	defer func() {
		if v := recover(); v != nil {
			r.logf("reap: panic: %v", v)
		}
	}()
	r.reapPID(pid)
}

func (r *Reaper) safeReapAll() (n int, scan time.Duration) {
	defer func() {
		if v := recover(); v != nil {
			r.logf("reap: panic: %v", v)
		}
	}()
	return r.reapAll()
}
