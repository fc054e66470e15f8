package vmtests

// Containment: each service in its own cgroup, limits, and OOM kills that
// take only the guilty service, with the real init as PID 1. One VM (512
// MiB, as a small enclave) is shared by these tests; the last one exhausts
// its memory on purpose.

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nitroinit/nitroinit/initramfs/image"
	"github.com/nitroinit/nitroinit/internal/wire"
)

var hogBin struct {
	once sync.Once
	path string
	err  error
}

// hogProgram builds internal/testprog/hog next to the other guest binaries.
func hogProgram(t testing.TB) string {
	t.Helper()
	hogBin.once.Do(func() {
		hogBin.path = filepath.Join(bin.dir, "hog")
		cmd := exec.Command("go", "build", "-trimpath", "-o", hogBin.path, "./internal/testprog/hog")
		cmd.Dir = ".."
		cmd.Env = append(cmd.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			hogBin.err = fmt.Errorf("building hog: %v\n%s", err, out)
		}
	})
	if hogBin.err != nil {
		t.Fatal(hogBin.err)
	}
	return hogBin.path
}

func cgroupGuest(t testing.TB) func() guest {
	return func() guest {
		return guest{
			memoryMB: 512,
			config:   guestYAML("", ""),
			files:    []image.File{{Src: hogProgram(t), Dst: "/bin/hog", Mode: 0o755}},
			services: map[string]string{
				// Runs throughout: an OOM elsewhere must not touch it.
				"steady.service": "ExecStart = \"/bin/svc sleep steady\"\nRestart = \"always\"",
				"nofile.service": "ExecStart = \"/bin/hog nofile\"\nLimitNOFILE = 64",

				"daemon.service.disabled":  `ExecStart = "/bin/hog daemon /run/daemon.pid"`,
				"hog.service.disabled":     "ExecStart = \"/bin/hog memory 4\"\nMemoryMax = \"64M\"\nRestart = \"on-failure\"\nRestartSec = 600",
				"halfoom.service.disabled": "ExecStart = \"/bin/hog memory-child 4\"\nMemoryMax = \"64M\"\nRestart = \"on-failure\"\nRestartSec = 600",
				"bomb.service.disabled":    "ExecStart = \"/bin/hog forkbomb\"\nTasksMax = 50",
				"glutton.service.disabled": "ExecStart = \"/bin/hog memory 8\"",
			},
		}
	}
}

// pinger pings init every 100ms until stopped and counts the failures.
func (e *enclave) pinger() (stop func() (ok, failed int64)) {
	var okN, bad atomic.Int64
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for {
			select {
			case <-done:
				return
			case <-time.After(100 * time.Millisecond): // pacing, not a wait
			}
			// A ping shows nothing until answered: it may take a whole
			// stall interval while the guest is busy with the hog (try).
			r, err := e.try(wire.Request{Kind: wire.KindPing})
			if err != nil || r.Kind != wire.KindPong {
				bad.Add(1)
			} else {
				okN.Add(1)
			}
		}
	}()
	return func() (int64, int64) {
		close(done)
		<-finished
		return okN.Load(), bad.Load()
	}
}

func TestCgroup(t *testing.T) {
	e := sharedEnclave(t, "cgroup", cgroupGuest(t))
	steady := e.waitState(t, "steady", "running")

	t.Run("DaemonStopped", func(t *testing.T) {
		e.do(t, wire.Request{Kind: wire.KindServiceStart, Name: "daemon"})
		eventually(t, waitTimeout, "the setsid daemon", func() (bool, string) {
			ps := e.processesWith(t, "daemon-grandchild")
			return len(ps) == 1, fmt.Sprintf("%+v", ps)
		})
		st := e.status(t, "daemon")
		if st.Cgroup != "/sys/fs/cgroup/daemon.service" || st.Tasks == nil || *st.Tasks < 2 {
			t.Fatalf("status: cgroup %q, tasks %v; want /sys/fs/cgroup/daemon.service with the main process and the daemon", st.Cgroup, st.Tasks)
		}
		e.do(t, wire.Request{Kind: wire.KindServiceStop, Name: "daemon"})
		e.waitState(t, "daemon", "disabled") // stopped, and disabled on disk
		if ps := e.processesWith(t, "/bin/hog daemon"); len(ps) != 0 {
			t.Fatalf("after stop, the service's processes remain: %+v", ps)
		}
		if st := e.status(t, "daemon"); st.Cgroup != "" || st.Tasks != nil {
			t.Errorf("a stopped service still shows a cgroup %q with %v tasks", st.Cgroup, st.Tasks)
		}
	})

	t.Run("LimitNOFILE", func(t *testing.T) {
		e.waitLog(t, "nofile", "nofile 64 64")
	})

	t.Run("Figures", func(t *testing.T) {
		st := e.status(t, "steady")
		if st.MemoryBytes == nil || *st.MemoryBytes == 0 || st.MemoryPeakBytes == nil || st.Tasks == nil || *st.Tasks == 0 {
			t.Fatalf("status of steady lacks memory or task figures: %+v", st)
		}
		ps := e.do(t, wire.Request{Kind: wire.KindProcessStatus, PID: *st.PID}).Process
		if ps == nil || ps.ServiceMemoryBytes == nil || ps.ServiceTasks == nil || *ps.ServiceTasks == 0 {
			t.Errorf("ps status of steady's main process lacks its service's figures: %+v", ps)
		}
		if out := e.initctlOK(t, "ps", "status", fmt.Sprint(*st.PID)); !strings.Contains(out, "Service Memory: ") || !strings.Contains(out, "Service Tasks: ") {
			t.Errorf("initctl ps status shows no service figures:\n%s", out)
		}
		out := e.initctlOK(t, "status", "steady")
		for _, want := range []string{"Memory: ", "Tasks: ", "CGroup: /sys/fs/cgroup/steady.service"} {
			if !strings.Contains(out, want) {
				t.Errorf("initctl status has no %q:\n%s", want, out)
			}
		}
		raw := e.initctlOK(t, "list", "--json")
		var resp struct {
			ServiceList struct{ Services []wire.ServiceInfo }
		}
		if err := json.Unmarshal([]byte(raw), &resp); err != nil {
			t.Fatalf("list --json: %v\n%s", err, raw)
		}
		found := false
		for _, s := range resp.ServiceList.Services {
			if s.Name == "steady" {
				found = s.MemoryBytes != nil && s.Tasks != nil && *s.Tasks > 0
			}
		}
		if !found {
			t.Errorf("list --json has no memory and task figures for steady:\n%s", raw)
		}
	})

	t.Run("MemoryMaxOOM", func(t *testing.T) {
		stop := e.pinger()
		e.do(t, wire.Request{Kind: wire.KindServiceStart, Name: "hog"})
		st := e.waitState(t, "hog", "auto-restart")
		okN, bad := stop()
		if want := "killed by the OOM killer: memory.max 64M reached"; st.Error != want {
			t.Errorf("hog: error %q, want %q", st.Error, want)
		}
		if bad > 0 || okN == 0 {
			t.Errorf("ping while the hog ran: %d answered, %d failed", okN, bad)
		}
		now := e.status(t, "steady")
		if now.State != "running" || now.RestartCount != steady.RestartCount || *now.PID != *steady.PID {
			t.Errorf("steady was disturbed: %s, restarts %d (was %d), pid %v (was %v)", now.State, now.RestartCount, steady.RestartCount, *now.PID, *steady.PID)
		}
		e.do(t, wire.Request{Kind: wire.KindServiceStop, Name: "hog"})
	})

	// The OOM killer takes a child; the main process lives on. As with
	// systemd's OOMPolicy=stop, init ends the rest and the restart
	// policy applies.
	t.Run("OOMOfAChildEndsTheService", func(t *testing.T) {
		e.do(t, wire.Request{Kind: wire.KindServiceStart, Name: "halfoom"})
		st := e.waitState(t, "halfoom", "auto-restart")
		if want := "killed by the OOM killer: memory.max 64M reached"; st.Error != want {
			t.Errorf("halfoom: error %q, want %q", st.Error, want)
		}
		e.waitLog(t, "halfoom", "OOMPolicy=stop")
		e.do(t, wire.Request{Kind: wire.KindServiceStop, Name: "halfoom"})
	})

	t.Run("TasksMax", func(t *testing.T) {
		stop := e.pinger()
		e.do(t, wire.Request{Kind: wire.KindServiceStart, Name: "bomb"})
		// The bomb is refused forks once 50 tasks (threads included)
		// exist; its Go runtime may die when it cannot make a thread.
		// Either way the group never holds more than 50.
		eventually(t, waitTimeout, "the bomb to hit TasksMax", func() (bool, string) {
			st := e.status(t, "bomb")
			if st.Tasks != nil && *st.Tasks > 50 {
				t.Fatalf("bomb has %d tasks, TasksMax is 50", *st.Tasks)
			}
			lines := e.logs(t, "bomb", 1000)
			hit := false
			for _, l := range lines {
				hit = hit || strings.Contains(l, "refused") && !strings.Contains(l, "refused 0") ||
					strings.Contains(l, "failed to create new OS thread")
			}
			return hit, fmt.Sprintf("state %s, tasks %v, log tail %q", st.State, st.Tasks, lines[max(0, len(lines)-3):])
		})
		e.do(t, wire.Request{Kind: wire.KindServiceStop, Name: "bomb"})
		e.waitState(t, "bomb", "disabled")
		if ps := e.processesWith(t, "/bin/hog"); len(ps) > 1 { // nofile's hog remains
			t.Errorf("bomb processes remain after stop: %d", len(ps))
		}
		if okN, bad := stop(); bad > 0 || okN == 0 {
			t.Errorf("ping during the fork bomb: %d answered, %d failed", okN, bad)
		}
	})

	// Last: it exhausts the enclave's memory.
	t.Run("SystemOOMTakesTheService", func(t *testing.T) {
		stop := e.pinger()
		e.do(t, wire.Request{Kind: wire.KindServiceStart, Name: "glutton"})
		st := e.waitState(t, "glutton", "exited")
		okN, bad := stop()
		if want := "killed by the OOM killer: the system ran out of memory"; st.Error != want {
			t.Errorf("glutton: error %q, want %q", st.Error, want)
		}
		if okN == 0 {
			t.Errorf("init never answered ping while memory ran out (%d failed)", bad)
		}
		t.Logf("ping while memory ran out: %d answered, %d failed", okN, bad)
		e.do(t, wire.Request{Kind: wire.KindPing})
		if now := e.status(t, "steady"); now.State != "running" {
			t.Errorf("steady: %s after the system OOM", now.State)
		}
		if !strings.Contains(e.initLog(), "self-protection: oom_score_adj -1000") {
			t.Errorf("init's log does not report its self-protection")
		}
	})
}
