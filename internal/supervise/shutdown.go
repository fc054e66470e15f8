package supervise

import (
	"os"
	"syscall"
	"time"

	"github.com/nitroinit/nitroinit/internal/depgraph"
	"github.com/nitroinit/nitroinit/internal/procfs"
)

// shutdown tracks an orderly stop: services are stopped in waves, each wave
// once everything ordered after it has stopped.
type shutdown struct {
	waves [][]string
	i     int
	done  bool
}

// beginShutdown starts the orderly stop of every service. It is idempotent.
func (s *Supervisor) beginShutdown(reboot bool) {
	if s.stopping != nil {
		return
	}
	s.shutting.Store(true)
	s.rebootF.Store(reboot)
	what := "power-off"
	if reboot {
		what = "reboot"
	}
	s.logf("supervise: shutting down for %s", what)
	inPlan := map[string]bool{}
	for _, n := range s.plan.Order {
		inPlan[n] = true
	}
	waves := depgraph.StopOrder(s.plan.Order, s.plan.Waits)
	// Services outside the plan (held, invalid on disk but still running)
	// go first: nothing is ordered after them.
	var extra []string
	for _, n := range s.sortedNames() {
		if !inPlan[n] {
			extra = append(extra, n)
		}
	}
	waves = append([][]string{extra}, waves...)
	for _, sv := range s.services {
		if sv.state == stateWaiting || sv.state == stateAutoRestart {
			sv.cancelTimers()
			s.setState(sv, stateInactive, "shutdown")
		}
	}
	s.stopping = &shutdown{waves: waves, i: -1}
	s.stopping.progress(s)
}

// progress stops the next wave once the current one has fully stopped.
func (sd *shutdown) progress(s *Supervisor) {
	for !sd.done {
		if sd.i >= 0 {
			for _, n := range sd.waves[sd.i] {
				if sv := s.services[n]; sv != nil && sv.isActive() {
					return
				}
			}
		}
		sd.i++
		if sd.i >= len(sd.waves) {
			sd.done = true
			close(s.finished)
			return
		}
		for _, n := range sd.waves[sd.i] {
			if sv := s.services[n]; sv != nil && sv.isActive() {
				s.stop(sv, "shutdown")
			}
		}
	}
}

// KillRemaining ends every process left after the services have stopped:
// SIGTERM, up to grace for them to go, then SIGKILL, and reaps them all
// through r's loop (which must be running). As PID 1 it signals everything
// (kill -1); otherwise only this process's own descendants that were
// reparented to it, so that a supervisor never touches processes it does
// not own.
func KillRemaining(pid1 bool, grace time.Duration, logf func(string, ...any)) {
	send := func(sig syscall.Signal) int {
		if pid1 {
			if err := syscall.Kill(-1, sig); err == syscall.ESRCH {
				return 0
			}
			return len(children())
		}
		kids := children()
		for _, pid := range kids {
			syscall.Kill(pid, sig)
		}
		return len(kids)
	}
	n := send(syscall.SIGTERM)
	if n == 0 {
		return
	}
	logf("supervise: %d processes left, sent SIGTERM", n)
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if len(children()) == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	n = send(syscall.SIGKILL)
	logf("supervise: %d processes still left after %s, sent SIGKILL", n, grace)
	deadline = time.Now().Add(5 * time.Second)
	for send(syscall.SIGKILL) > 0 && time.Now().Before(deadline) {
		// Again on every round: orphans keep arriving as their parents die.
		time.Sleep(20 * time.Millisecond)
	}
}

// children lists the live (non-zombie) children of this process.
func children() []int {
	me := os.Getpid()
	var proc procfs.FS
	pids, err := proc.PIDs()
	if err != nil {
		return nil
	}
	var out []int
	for _, pid := range pids {
		st, err := proc.Stat(pid)
		if err == nil && st.PPID == me && !procfs.Zombie(st.State) {
			out = append(out, pid)
		}
	}
	return out
}
