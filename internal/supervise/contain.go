package supervise

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nitroinit/nitroinit/internal/cgroup"
	"github.com/nitroinit/nitroinit/internal/unit"
	"github.com/nitroinit/nitroinit/internal/wire"
	"golang.org/x/sys/unix"
)

// drainTimeout bounds the wait for a cgroup to empty after cgroup.kill.
// SIGKILL cannot be ignored, so only a process stuck in the kernel
// (uninterruptible sleep) takes longer; the service is then reported
// stopped with a warning, and its next start kills what is left and makes
// the group anew (see contain).
const drainTimeout = 10 * time.Second

// leftoverWait bounds how long a start waits for the processes of an
// earlier run, killed, to leave the service's cgroup.
const leftoverWait = time.Second

// contain creates the service's cgroup with the unit's limits and returns
// a descriptor of it for the start (nil without containment).
func (s *Supervisor) contain(sv *service, u *unit.Unit) (*os.File, error) {
	if s.cfg.Cgroups == nil {
		if u.Cgroup != (cgroup.Limits{}) {
			sv.logLine("init: cgroup limits (MemoryMax, MemoryHigh, TasksMax, CPUWeight, CPUQuota) are not applied: init has no writable cgroup v2 subtree")
		}
		return nil, nil
	}
	g, err := s.cfg.Cgroups.Create(sv.name, u.Cgroup)
	if err != nil {
		return nil, err
	}
	if g.Populated() {
		// Left from a run whose processes would not die in time. The
		// group is not started into once killed (see cgroup.Tree.Create):
		// wait for it to empty, briefly since this runs on the loop and
		// only after processes outlived drainTimeout, and make it anew.
		s.logf("supervise: %s: cgroup %s still had processes from an earlier run; killing them", sv.name, g.Path)
		g.Kill()
		if err := g.WaitEmpty(leftoverWait); err != nil {
			return nil, fmt.Errorf("%w: processes of an earlier run would not die, so the service is not started beside them", err)
		}
		if g, err = s.cfg.Cgroups.Create(sv.name, u.Cgroup); err != nil {
			return nil, err
		}
	}
	sv.cg, sv.oomBase = g, g.Stats().OOMKills
	if s.noCloneInto {
		return nil, nil // launch moves the process in instead
	}
	f, err := g.Open()
	if err != nil {
		sv.cg = nil
		return nil, err
	}
	return f, nil
}

// moveInto returns what to do between the exec and the program's start
// where the kernel cannot start a process inside its cgroup: move it in,
// then run then (which may be nil).
func (s *Supervisor) moveInto(sv *service, then func(int)) func(int) {
	g := sv.cg
	return func(pid int) {
		if err := g.Add(pid); err != nil {
			s.logf("supervise: %s: %v", sv.name, err)
			sv.logLine("init: %v", err)
		}
		if then != nil {
			then(pid)
		}
	}
}

// release ends what is left of the service's cgroup once its main process
// has exited, as systemd's KillMode=control-group does: "stopped" means
// the group is empty. It reports true when the group is empty already;
// otherwise it kills the group and calls onExit again once it is empty, so
// that the loop never waits. It notes an OOM kill in e.
func (s *Supervisor) release(sv *service, gen int, e *Exit) bool {
	g := sv.cg
	if sv.unit.Type == unit.TypeOneshot && sv.unit.RemainAfterExit && sv.state == stateStarting && e.Success() {
		// As systemd: what a RemainAfterExit oneshot started keeps
		// running while the service is "active (exited)", until it is
		// stopped (see stop).
		return true
	}
	if g.Populated() {
		if err := g.Kill(); err != nil {
			s.logf("supervise: %s: %v", sv.name, err)
		}
		sv.draining = true
		sv.pid = 0 // the main process is gone; nothing may signal its number
		// No start or stop timeout applies any more: everything left
		// has been sent SIGKILL.
		sv.cancelTimers()
		ex := *e
		go func() {
			err := g.WaitEmpty(drainTimeout)
			s.post(func() {
				sv.draining = false
				if err != nil {
					s.logf("supervise: %s: %v", sv.name, err)
					sv.logLine("init: %v", err)
				}
				s.onExit(sv, gen, ex)
			})
		}()
		return false
	}
	if st := g.Stats(); st.OOMKills > sv.oomBase {
		e.OOM = oomWhy(st.MemoryMax)
	}
	if err := g.Remove(); err != nil {
		s.logf("supervise: %s: %v", sv.name, err)
	}
	sv.cg = nil
	return true
}

// killGroup kills everything in the service's cgroup (cgroup.kill).
func (s *Supervisor) killGroup(sv *service) {
	if sv.cg == nil {
		return
	}
	if err := sv.cg.Kill(); err != nil {
		s.logf("supervise: %s: %v", sv.name, err)
	}
}

// oomWhy says which limit an OOM kill enforced.
func oomWhy(memoryMax int64) string {
	if memoryMax > 0 {
		return "memory.max " + FormatBytes(uint64(memoryMax)) + " reached"
	}
	return "the system ran out of memory"
}

// FormatBytes writes n as systemd does in its unit files: with the largest
// suffix (K, M, G, T) that divides it exactly, else with one decimal of the
// largest that fits.
func FormatBytes(n uint64) string {
	const units = "KMGTPE"
	for i := len(units) - 1; i >= 0; i-- {
		m := uint64(1) << (10 * (i + 1))
		if n >= m && n%m == 0 {
			return strconv.FormatUint(n/m, 10) + units[i:i+1]
		}
	}
	for i := len(units) - 1; i >= 0; i-- {
		m := uint64(1) << (10 * (i + 1))
		if n >= m {
			return strconv.FormatFloat(float64(n)/float64(m), 'f', 1, 64) + units[i:i+1]
		}
	}
	return strconv.FormatUint(n, 10) + "B"
}

// ownOOMScoreAdj reads init's own oom_score_adj, which its children
// inherit.
func ownOOMScoreAdj() int {
	b, err := os.ReadFile("/proc/self/oom_score_adj")
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}

// procLimits returns what to do between the exec of a service's process
// and its start (nil when nothing): set its rlimits (Limit*) and its
// oom_score_adj. A process inherits init's own oom_score_adj, -1000 when
// init is PID 1, which would make it immune to the OOM killer; it gets 0
// or its OOMScoreAdjust instead. Init sets them, as root, rather than the
// child, so that a service with User= may get limits above its user's.
func (s *Supervisor) procLimits(sv *service, u *unit.Unit) func(pid int) {
	if s.ownAdj == 0 && (u == nil || len(u.Rlimits) == 0 && u.OOMScoreAdjust == nil) {
		return nil
	}
	return func(pid int) { s.applyProcLimits(sv, pid, u) }
}

// applyProcLimits sets the rlimits and oom_score_adj of process pid while
// it is stopped between its exec and its first instruction
// (reap.Reaper.StartAtExec). Failures are logged: the service runs anyway.
func (s *Supervisor) applyProcLimits(sv *service, pid int, u *unit.Unit) {
	logf := func(format string, args ...any) {
		if sv != nil {
			s.logf("supervise: %s: "+format, append([]any{sv.name}, args...)...)
			sv.logLine("init: "+format, args...)
		} else {
			s.logf("supervise: process %d: "+format, append([]any{pid}, args...)...)
		}
	}
	if u != nil {
		for _, rl := range u.Rlimits {
			lim := unix.Rlimit{Cur: rl.Cur, Max: rl.Max}
			if err := unix.Prlimit(pid, rl.Resource, &lim, nil); err != nil {
				logf("%s not applied: prlimit: %v", rl.Key, err)
			}
		}
	}
	adj, set := 0, s.ownAdj != 0
	if u != nil && u.OOMScoreAdjust != nil {
		adj, set = *u.OOMScoreAdjust, true
	}
	if !set {
		return
	}
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/oom_score_adj", pid), []byte(strconv.Itoa(adj)), 0); err != nil && err != syscall.ESRCH {
		logf("oom_score_adj %d not applied: %v", adj, err)
	}
}

// addStats fills the figures read from a cgroup into a list row.
func addStats(path string, inf *wire.ServiceInfo) {
	st := cgroup.ReadStats(path)
	inf.Tasks = &st.Tasks
	if st.Memory {
		inf.MemoryBytes, inf.MemoryPeakBytes = &st.MemoryCurrent, &st.MemoryPeak
	}
}

// addStatusStats fills the figures read from a cgroup into a status.
func addStatusStats(path string, s *wire.ServiceStatus) {
	st := cgroup.ReadStats(path)
	s.Tasks = &st.Tasks
	if st.Memory {
		s.MemoryBytes, s.MemoryPeakBytes = &st.MemoryCurrent, &st.MemoryPeak
	}
	if st.MemoryMax > 0 {
		s.MemoryMaxBytes = &st.MemoryMax
	}
	s.Cgroup = path
}

// oomPoll is how often the services' memory.events are read for OOM
// kills; one small read per running service.
const oomPoll = time.Second

// watchOOM applies systemd's default OOMPolicy=stop: when the OOM killer
// kills a process of a running service but its main process lives on,
// the rest of the service is killed too, so that it does not go on half
// working; its exit then reports the OOM kill and the restart policy
// applies. It runs until the loop ends.
func (s *Supervisor) watchOOM() {
	defer func() {
		if v := recover(); v != nil {
			s.logf("supervise: OOM watch panic: %v", v)
		}
	}()
	t := time.NewTicker(oomPoll)
	defer t.Stop()
	seen := map[string]uint64{}
	for {
		select {
		case <-s.exited:
			return
		case <-t.C:
		}
		sn := s.snapshot()
		for name, path := range sn.groups {
			n := cgroup.OOMKills(path)
			if n == seen[path] {
				continue
			}
			seen[path] = n
			s.post(func() { s.onOOM(name, path, n) })
		}
		for path := range seen {
			if _, ok := sn.groupPaths[path]; !ok {
				delete(seen, path) // bounded by the services running
			}
		}
	}
}

// onOOM handles a rise of a service's oom_kill count to n.
func (s *Supervisor) onOOM(name, path string, n uint64) {
	sv := s.services[name]
	if sv == nil || sv.cg == nil || sv.cg.Path != path || n <= sv.oomBase ||
		sv.oomStopped || sv.draining || sv.pid <= 0 || sv.state == stateStopping || !sv.isActive() {
		return
	}
	sv.oomStopped = true
	why := oomWhy(sv.cg.Stats().MemoryMax)
	s.logf("supervise: %s: the OOM killer killed one of its processes (%s); ending the service", sv.name, why)
	sv.logLine("init: the OOM killer killed one of this service's processes (%s); ending the service (as systemd's OOMPolicy=stop)", why)
	s.killGroup(sv)
}
