package vmtests

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nitroinit/nitroinit/internal/wire"
)

func TestSupervision(t *testing.T) {
	e := mainVM(t)

	t.Run("dependency_and_readiness_order", func(t *testing.T) {
		e.explain(t, "cache", "db", "web")
		for _, n := range []string{"cache", "db", "web"} {
			e.waitState(t, n, "running")
		}
		ready := logTime(t, e.logs(t, "cache", 100), "init: ready")
		db := logTime(t, e.logs(t, "db", 100), "init: started")
		web := logTime(t, e.logs(t, "web", 100), "init: started")
		if db.Before(ready) {
			t.Errorf("db started at %s, before cache was ready at %s", db, ready)
		}
		if web.Before(db) {
			t.Errorf("web started at %s, before db at %s", web, db)
		}
		if st := e.status(t, "cache"); st.StatusText != "warm" {
			t.Errorf("cache STATUS= %q, want warm", st.StatusText)
		}
	})

	t.Run("restart_policies", func(t *testing.T) {
		restarted := []string{"always", "onfail-bad", "onsucc", "onabn-crash"}
		kept := []string{"no", "onfail-ok", "onabn-exit"}
		all := append(append([]string{}, restarted...), kept...)
		e.explain(t, all...)
		defer e.retire(t, all...)
		for _, n := range all {
			e.do(t, wire.Request{Kind: wire.KindServiceEnable, Name: n})
		}
		for _, n := range all {
			// A service that exits at once may answer the start with
			// an error; what counts is what happens next.
			e.try(wire.Request{Kind: wire.KindServiceStart, Name: n})
		}
		for _, n := range restarted {
			eventually(t, waitTimeout, n+" restarted twice", func() (bool, string) {
				st := e.status(t, n)
				return st.RestartCount >= 2, fmt.Sprintf("%+v", st)
			})
		}
		for _, n := range kept {
			if st := e.waitState(t, n, "exited"); st.RestartCount != 0 {
				t.Errorf("%s: restarted %d times, want 0", n, st.RestartCount)
			}
		}
		if st := e.status(t, "no"); st.ExitStatus == nil || *st.ExitStatus != 1 {
			t.Errorf("no: exit status %v, want 1", st.ExitStatus)
		}
	})

	t.Run("start_limit", func(t *testing.T) {
		e.explain(t, "flappy")
		defer e.retire(t, "flappy")
		e.do(t, wire.Request{Kind: wire.KindServiceEnable, Name: "flappy"})
		e.try(wire.Request{Kind: wire.KindServiceStart, Name: "flappy"})
		st := e.waitState(t, "flappy", "failed")
		if !strings.Contains(st.Error, "start limit") {
			t.Errorf("failed reason %q does not mention the start limit", st.Error)
		}
		if st.RestartCount != 2 {
			t.Errorf("restart count %d, want 2 (StartLimitBurst = 3: the first start and 2 restarts; the refused one is not counted)", st.RestartCount)
		}
		time.Sleep(time.Second)
		if st := e.status(t, "flappy"); st.State != "failed" {
			t.Errorf("state %q a second after failing, want it to stay failed", st.State)
		}
	})

	t.Run("stop_escalation_kills_the_process_group", func(t *testing.T) {
		e.explain(t, "stubborn")
		defer e.retire(t, "stubborn")
		e.run(t, "stubborn")
		e.waitState(t, "stubborn", "running")
		eventually(t, waitTimeout, "stubborn and its grandchild", func() (bool, string) {
			ps := e.processesWith(t, "svc stubborn")
			return len(ps) == 2, fmt.Sprintf("%+v", ps)
		})
		start := time.Now()
		e.do(t, wire.Request{Kind: wire.KindServiceStop, Name: "stubborn"})
		if d := time.Since(start); d < 900*time.Millisecond {
			t.Errorf("stop returned after %s, before TimeoutStopSec (1s) could pass", d)
		}
		eventually(t, waitTimeout, "no stubborn process left", func() (bool, string) {
			ps := e.processesWith(t, "svc stubborn")
			return len(ps) == 0, fmt.Sprintf("%+v", ps)
		})
		e.waitLog(t, "stubborn", "sending SIGKILL")
		time.Sleep(500 * time.Millisecond) // Restart=always must not bring it back
		if st := e.status(t, "stubborn"); st.State != "inactive" || st.PID != nil {
			t.Errorf("after stop: state %q pid %v, want inactive without a PID", st.State, st.PID)
		}
	})

	// The storm proves that init reaps everything under load, however long
	// the machine takes: it asserts only the outcome (all reaped, no zombie
	// left) and reports the times. The waits follow the guest's process
	// count, which rises while the storm forks and falls while init reaps.
	t.Run("zombie_storm_10000_orphans_all_reaped", func(t *testing.T) {
		e.explain(t, "storm")
		defer e.retire(t, "storm")
		processes := func() int {
			r := e.do(t, wire.Request{Kind: wire.KindSystemStatus})
			if r.System == nil {
				t.Fatalf("SystemStatus without a status: %+v", r)
			}
			return r.System.TotalProcesses
		}
		// Asking once a second leaves the guest's CPU to the storm.
		slow := e.consoleMoves()
		slow.Poll = time.Second
		start := time.Now()
		e.run(t, "storm")
		slow.For(t, "the storm to fork 10000 children", func() (bool, string) {
			if containsLine(e.logs(t, "storm", 10), "zombies: forked 10000 children") {
				return true, ""
			}
			return false, fmt.Sprintf("%d processes in the guest", processes())
		})
		forked := time.Since(start)
		// The storm's own exit reaches its service only as init works
		// through the orphans' exits: both waits follow the process count.
		// The orphans keep the parent's command line: none may be left,
		// running or as a zombie.
		slow.For(t, "storm to exit and every orphan reaped", func() (bool, string) {
			n := processes()
			if st := e.status(t, "storm"); st.State != "exited" || n > 100 {
				return false, fmt.Sprintf("storm %s, %d processes in the guest", st.State, n)
			}
			left, z := 0, 0
			for _, p := range e.processes(t) {
				if p.State == "Z" {
					z++
				}
				if strings.Contains(p.Cmdline, "/bin/zombies") {
					left++
				}
			}
			return z == 0 && left == 0, fmt.Sprintf("%d zombies, %d processes of the storm", z, left)
		})
		t.Logf("10000 orphans forked in %s, all reaped %s after the start", forked.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
		// init is still answering and supervising.
		if st := e.status(t, "ctl"); st.State != "running" {
			t.Errorf("ctl is %q after the storm, want running", st.State)
		}
	})

	t.Run("stdout_and_stderr_captured", func(t *testing.T) {
		e.explain(t, "talk")
		lines := e.waitLog(t, "talk", "stderr line 3")
		for _, want := range []string{"stdout line 1", "stdout line 3", "stderr line 1"} {
			if !containsLine(lines, want) {
				t.Errorf("talk's log lacks %q:\n%s", want, strings.Join(lines, "\n"))
			}
		}
		for _, l := range lines {
			if !strings.HasPrefix(l, "[20") || !strings.Contains(l, "Z] ") {
				t.Errorf("log line without a UTC timestamp: %q", l)
			}
		}
	})
}

// logTime returns the timestamp of the first log line containing substr.
func logTime(t *testing.T, lines []string, substr string) time.Time {
	t.Helper()
	for _, line := range lines {
		if strings.Contains(line, substr) && strings.HasPrefix(line, "[") {
			if i := strings.IndexByte(line, ']'); i > 0 {
				ts, err := time.Parse("2006-01-02T15:04:05.000000Z", line[1:i])
				if err != nil {
					t.Fatalf("log line %q: %v", line, err)
				}
				return ts
			}
		}
	}
	t.Fatalf("no log line with %q in:\n%s", substr, strings.Join(lines, "\n"))
	return time.Time{}
}
