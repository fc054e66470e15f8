package supervise

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nitroinit/nitroinit/internal/wait"
)

// Service bodies; %s becomes the service name, which the fake process
// carries as argv[1].
const (
	simple   = "ExecStart = \"/bin/svc %s\"\n"
	notify   = "ExecStart = \"/bin/svc %s\"\nType = \"notify\"\n"
	stubborn = "ExecStart = \"/bin/svc %s stubborn\"\n"
)

func TestStartsInDependencyOrder(t *testing.T) {
	r := newRig(t, map[string]string{
		"web.service":   simple + "After = [\"db\"]\nRequires = [\"cache\"]",
		"db.service":    notify,
		"cache.service": simple + "After = [\"db\"]",
		"lone.service":  simple,
	})
	// db is up only when it says so: the services after it wait.
	if got, want := r.started(), []string{"db", "lone"}; !slices.Equal(got, want) {
		t.Fatalf("started %q before db was ready, want %q", got, want)
	}
	r.wantState("db", stateStarting)
	r.wantState("web", stateWaiting)
	r.ready("db")
	if got, want := r.started(), []string{"cache", "web"}; !slices.Equal(got, want) {
		t.Fatalf("after db was ready started %q, want %q", got, want)
	}
	for _, n := range []string{"db", "cache", "web", "lone"} {
		r.wantState(n, stateRunning)
	}
}

func TestRequirementFailureFailsDependants(t *testing.T) {
	r := newRig(t, map[string]string{
		"app.service": simple + "Requires = [\"db\"]",
		"db.service":  notify,
	})
	r.wantState("app", stateWaiting)
	r.exit("db", 1)
	st, why := r.state("app")
	if st != stateFailed || !strings.Contains(why, `requirement "db" failed`) {
		t.Fatalf("app is %v (%s), want failed because of db", st, why)
	}
}

func TestHeldBackByCycleAndMissingRequirement(t *testing.T) {
	r := newRig(t, map[string]string{
		"a.service": simple + "After = [\"b\"]",
		"b.service": simple + "After = [\"a\"]",
		"c.service": simple + "Requires = [\"nosuch\"]",
	})
	if got := r.started(); len(got) != 0 {
		t.Fatalf("started %q", got)
	}
	for _, n := range []string{"a", "b", "c"} {
		r.wantState(n, stateHeld)
	}
	if err := r.s.StartService("c"); err == nil || !strings.Contains(err.Error(), "held back") {
		t.Fatalf("start of a held service: %v", err)
	}
	// Breaking the cycle and reloading starts them.
	r.write("b.service", simple)
	if err := r.s.Reload(); err != nil {
		t.Fatal(err)
	}
	if got, want := r.started(), []string{"b", "a"}; !slices.Equal(got, want) {
		t.Fatalf("after the reload started %q, want %q", got, want)
	}
}

// TestRestartTiming: the restart waits RestartSec from the exit, and only
// the timer brings the service back.
func TestRestartTiming(t *testing.T) {
	r := newRig(t, map[string]string{"w.service": simple + "Restart = \"always\"\nRestartSec = 0.5"})
	r.started()
	r.exit("w", 3)
	r.wantState("w", stateAutoRestart)
	if got := r.pending(); !slices.Equal(got, []time.Duration{500 * time.Millisecond}) {
		t.Fatalf("armed timers %v, want one of 500ms", got)
	}
	if got := r.started(); len(got) != 0 {
		t.Fatalf("restarted before RestartSec: %q", got)
	}
	r.fire(500 * time.Millisecond)
	if got := r.started(); !slices.Equal(got, []string{"w"}) {
		t.Fatalf("after RestartSec started %q", got)
	}
	r.wantState("w", stateRunning)
	st, _ := r.s.ServiceStatus("w")
	if st.RestartCount != 1 {
		t.Errorf("restart count %d, want 1", st.RestartCount)
	}
}

func TestRestartPolicyNo(t *testing.T) {
	r := newRig(t, map[string]string{"once.service": simple})
	r.exit("once", 0)
	r.wantState("once", stateExited)
	if got := r.pending(); len(got) != 0 {
		t.Fatalf("timers armed after an exit with Restart=no: %v", got)
	}
}

// TestStartLimit: the fourth start within the interval is refused; the
// refused restart is not counted; a manual start tries again.
func TestStartLimit(t *testing.T) {
	r := newRig(t, map[string]string{"crash.service": simple +
		"Restart = \"always\"\nRestartSec = 1\nStartLimitBurst = 3\nStartLimitIntervalSec = 60"})
	for i := 0; i < 2; i++ {
		r.exit("crash", 1)
		r.fire(time.Second)
	}
	r.exit("crash", 1)
	r.fire(time.Second)
	st, why := r.state("crash")
	if st != stateFailed || !strings.Contains(why, "start limit hit") {
		t.Fatalf("crash is %v (%s), want failed: start limit hit", st, why)
	}
	if got := r.started(); len(got) != 3 {
		t.Fatalf("%d starts, want 3 (%q)", len(got), got)
	}
	status, _ := r.s.ServiceStatus("crash")
	if status.RestartCount != 2 {
		t.Errorf("restart count %d after 3 starts, want 2 (the refused restart does not count)", status.RestartCount)
	}
	if err := r.s.StartService("crash"); err != nil {
		t.Fatal(err)
	}
	r.wantState("crash", stateRunning)
	// Past the interval, the limit has forgotten old starts.
	r.exit("crash", 1)
	r.advance(2 * time.Minute)
	r.fire(time.Second)
	r.wantState("crash", stateRunning)
}

func TestReloadAppliesTheDifference(t *testing.T) {
	r := newRig(t, map[string]string{
		"same.service":    simple,
		"changed.service": simple,
		"gone.service":    simple,
	})
	r.started()
	pidSame := r.proc("same").pid
	r.write("changed.service", simple+"Environment = [\"NEW=1\"]")
	r.write("new.service", simple)
	if err := os.Remove(filepath.Join(r.dir, "service", "gone.service")); err != nil {
		t.Fatal(err)
	}
	if err := r.s.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := r.started(); !slices.Equal(got, []string{"new"}) {
		t.Fatalf("reload started %q, want only new", got)
	}
	if r.proc("same").pid != pidSame {
		t.Error("an unchanged service was restarted")
	}
	st, _ := r.s.ServiceStatus("changed")
	if !st.ChangedOnDisk || !st.Active {
		t.Errorf("changed: %+v, want still running with changed_on_disk", st)
	}
	if _, err := r.s.ServiceStatus("gone"); err == nil {
		t.Error("a removed service is still listed")
	}
	// The new definition takes effect at the next start.
	if err := r.s.RestartService("changed"); err != nil {
		t.Fatal(err)
	}
	if env := r.proc("changed").env; !slices.Contains(env, "NEW=1") {
		t.Errorf("restarted with %q, want NEW=1 from the new definition", env)
	}
	if st, _ := r.s.ServiceStatus("changed"); st.ChangedOnDisk {
		t.Error("still changed on disk after the restart")
	}
}

// TestStopEscalation: KillSignal to the group, SIGKILL after TimeoutStopSec.
func TestStopEscalation(t *testing.T) {
	r := newRig(t, map[string]string{"s.service": stubborn + "TimeoutStopSec = 7\nKillSignal = \"SIGINT\"\nRestart = \"always\""})
	p := r.proc("s")
	p.ignore[syscall.SIGINT] = true
	stopped := make(chan error, 1)
	go func() { stopped <- r.s.StopService("s") }()
	waitFor(t, "the stop timer", func() bool { return slices.Contains(r.pending(), 7*time.Second) })
	r.wantState("s", stateStopping)
	select {
	case err := <-stopped:
		t.Fatalf("StopService returned (%v) while the process lives", err)
	default:
	}
	r.fire(7 * time.Second)
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	r.ops.mu.Lock()
	sigs := slices.Clone(p.signals)
	r.ops.mu.Unlock()
	if len(sigs) < 2 || sigs[0] != syscall.SIGINT || sigs[1] != syscall.SIGKILL {
		t.Fatalf("signals %v, want SIGINT then SIGKILL", sigs)
	}
	st, _ := r.s.ServiceStatus("s")
	if st.State != "inactive" || st.ExitStatus == nil || *st.ExitStatus != 128+9 {
		t.Fatalf("after the stop: %+v", st)
	}
	// A stop is remembered: Restart=always does not bring it back.
	if got := r.pending(); len(got) != 0 {
		t.Fatalf("timers armed after a stop: %v", got)
	}
}

// TestStartWaitsWithoutPolling: StartService of a notify service waits on
// a channel until READY=1; the loop runs no events meanwhile.
func TestStartWaitsWithoutPolling(t *testing.T) {
	r := newRig(t, map[string]string{"n.service.disabled": notify})
	done := make(chan error, 1)
	go func() { done <- r.s.StartService("n") }()
	waitFor(t, "the start", func() bool { st, _ := r.state("n"); return st == stateStarting })
	r.sync()
	before := r.s.version.Load()
	time.Sleep(100 * time.Millisecond) // room for a poll, if there were one
	if after := r.s.version.Load(); after != before {
		t.Fatalf("the loop ran %d state events while StartService waited", after-before)
	}
	select {
	case err := <-done:
		t.Fatalf("StartService returned before READY=1: %v", err)
	default:
	}
	r.ready("n")
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestSettleJudgesTheExitValue: a start that ended in an exit succeeded
// only with status 0, whatever the reason text says.
func TestSettleJudgesTheExitValue(t *testing.T) {
	for _, tc := range []struct {
		name   string
		st     State
		reason string
		exit   *Exit
		ok     bool
	}{
		{"running", stateRunning, "", nil, true},
		{"exit 0", stateExited, "exited with code 0", &Exit{}, true},
		{"exit 0 other text", stateExited, "finished", &Exit{}, true},
		{"exit 3", stateExited, "exited with code 3", &Exit{Code: 3}, false},
		{"text of success, code 3", stateExited, "exited with code 0", &Exit{Code: 3}, false},
		{"SIGTERM", stateExited, "killed by SIGTERM", &Exit{Signal: syscall.SIGTERM}, false},
		{"no exit", stateExited, "", nil, false},
		{"failed", stateFailed, "start limit hit", nil, false},
		{"still waiting", stateWaiting, "", nil, false},
	} {
		err := settleError("x", tc.st, tc.reason, tc.exit, time.Second)
		if (err == nil) != tc.ok {
			t.Errorf("%s: %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

func TestStartFailureIsReported(t *testing.T) {
	r := newRig(t, map[string]string{"bad.service.disabled": simple})
	r.ops.startFn = func(argv []string) error { return syscall.ENOENT }
	err := r.s.StartService("bad")
	if err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("start of a missing program: %v", err)
	}
	r.wantState("bad", stateFailed)
}

// waitFor waits for cond, which another goroutine makes true (internal/wait:
// a plain stall interval, as cond has nothing to describe).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	wait.For(t, what, wait.Bool(cond))
}

// TestStartDisabledSetUsesTheGraph: a disabled service started by hand
// pulls in its disabled requirements and waits for them exactly as at
// boot, whatever the names' alphabetical order (issue 11 item 2).
func TestStartDisabledSetUsesTheGraph(t *testing.T) {
	for _, tc := range []struct{ web, db, dbType string }{
		{"aweb", "zdb", simple},
		{"zweb", "adb", simple},
		{"aweb", "zdb", notify},
		{"zweb", "adb", notify},
	} {
		t.Run(tc.web+"-"+tc.db+"-"+map[bool]string{true: "notify", false: "simple"}[tc.dbType == notify], func(t *testing.T) {
			r := newRig(t, map[string]string{
				tc.web + ".service.disabled": simple + "Requires = [\"" + tc.db + "\"]",
				tc.db + ".service.disabled":  tc.dbType,
			})
			done := make(chan error, 1)
			go func() { done <- r.s.StartService(tc.web) }()
			if tc.dbType == notify {
				waitFor(t, tc.db+" to start", func() bool { st, _ := r.state(tc.db); return st == stateStarting })
				r.wantState(tc.web, stateWaiting)
				r.ready(tc.db)
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if got := r.started(); !slices.Equal(got, []string{tc.db, tc.web}) {
				t.Fatalf("start order %q, want %s then %s", got, tc.db, tc.web)
			}
			r.wantState(tc.db, stateRunning)
			r.wantState(tc.web, stateRunning)
		})
	}
}

func TestStartWithRequirementCycle(t *testing.T) {
	r := newRig(t, map[string]string{
		"a.service.disabled": simple + "Requires = [\"b\"]",
		"b.service.disabled": simple + "Requires = [\"a\"]",
	})
	if err := r.s.StartService("a"); err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Fatalf("start of a service in a requirement cycle: %v", err)
	}
}

// TestEnableDisableTouchOnlyTheNamedService: enable and disable change the
// named service's file and flag; a service the start limit stopped stays
// failed (issue 11 item 3).
func TestEnableDisableTouchOnlyTheNamedService(t *testing.T) {
	crash := simple + "Restart = \"always\"\nRestartSec = 1\nStartLimitBurst = 2\nStartLimitIntervalSec = 60"
	r := newRig(t, map[string]string{
		"crash.service":  crash,
		"worker.service": crash,
		"other.service":  simple,
	})
	for _, n := range []string{"crash", "worker"} {
		r.exit(n, 1)
		r.fire(time.Second)
		r.exit(n, 1)
		r.fire(time.Second)
		r.wantState(n, stateFailed)
	}
	r.started()
	if err := r.s.DisableService("other"); err != nil {
		t.Fatal(err)
	}
	if err := r.s.DisableService("worker"); err != nil {
		t.Fatal(err)
	}
	if err := r.s.EnableService("worker"); err != nil {
		t.Fatal(err)
	}
	if got := r.started(); len(got) != 0 {
		t.Fatalf("enable/disable started %q", got)
	}
	r.wantState("crash", stateFailed)
	r.wantState("worker", stateFailed)
	r.wantState("other", stateRunning)
	if st, _ := r.s.ServiceStatus("other"); st.Enabled {
		t.Error("other still enabled")
	}
	if st, _ := r.s.ServiceStatus("worker"); !st.Enabled {
		t.Error("worker not enabled")
	}
}

// TestOneshot: a oneshot's start completes with its exit 0; what is ordered
// after it waits for that; RemainAfterExit keeps it active; a failure
// fails the start and its dependants (issue 11 item 12).
func TestOneshot(t *testing.T) {
	oneshot := simple + "Type = \"oneshot\"\n"
	r := newRig(t, map[string]string{
		"setup.service":         oneshot + "RemainAfterExit = true",
		"migrate.service":       oneshot,
		"app.service":           simple + "After = [\"setup\"]\nRequires = [\"migrate\"]",
		"bad.service.disabled":  oneshot,
		"user.service.disabled": simple + "Requires = [\"bad\"]",
	})
	if got, want := r.started(), []string{"migrate", "setup"}; !slices.Equal(got, want) {
		t.Fatalf("started %q, want %q (app waits for both)", got, want)
	}
	r.wantState("setup", stateStarting)
	if got := r.pending(); len(got) != 0 {
		t.Errorf("a oneshot without TimeoutStartSec armed timers %v", got)
	}
	r.exit("setup", 0)
	r.wantState("app", stateWaiting)
	r.exit("migrate", 0)
	if got := r.started(); !slices.Equal(got, []string{"app"}) {
		t.Fatalf("after the oneshots started %q, want app", got)
	}
	st, _ := r.s.ServiceStatus("setup")
	if st.State != "exited" || !st.Active {
		t.Errorf("setup with RemainAfterExit: %s active=%v, want exited and active", st.State, st.Active)
	}
	st, _ = r.s.ServiceStatus("migrate")
	if st.State != "exited" || st.Active {
		t.Errorf("migrate: %s active=%v, want exited, not active", st.State, st.Active)
	}
	// Starting an active oneshot again does nothing; stopping makes it inactive.
	if err := r.s.StartService("setup"); err != nil {
		t.Fatal(err)
	}
	if got := r.started(); len(got) != 0 {
		t.Fatalf("start of an active oneshot ran %q", got)
	}
	if err := r.s.StopService("setup"); err != nil {
		t.Fatal(err)
	}
	if st, _ := r.s.ServiceStatus("setup"); st.Active || st.State != "inactive" {
		t.Errorf("setup after stop: %+v", st)
	}
	// A failing oneshot fails its start and its dependants.
	done := make(chan error, 1)
	go func() { done <- r.s.StartService("user") }()
	waitFor(t, "bad to run", func() bool { st, _ := r.state("bad"); return st == stateStarting })
	r.exit("bad", 2)
	err := <-done
	if err == nil || !strings.Contains(err.Error(), `requirement "bad" failed`) {
		t.Fatalf("start of user, whose oneshot requirement failed: %v", err)
	}
	if st, why := r.state("bad"); st != stateFailed || !strings.Contains(why, "code 2") {
		t.Errorf("bad is %v (%s), want failed with code 2", st, why)
	}
	go func() { done <- r.s.StartService("bad") }()
	waitFor(t, "bad to run again", func() bool { st, _ := r.state("bad"); return st == stateStarting })
	r.exit("bad", 2)
	if err := <-done; err == nil || !strings.Contains(err.Error(), "code 2") {
		t.Errorf("start of bad: %v", err)
	}
}

// TestBareEnvironmentNames: Environment = ["KEEP", "GONE", "A=b"] starts,
// passes init's KEEP on, leaves GONE unset and warns in status (issue 11
// item 11); RestartSec = 0.5 is reported as 500 ms (item 6).
func TestBareEnvironmentNames(t *testing.T) {
	r := newRig(t, map[string]string{"e.service": simple + "Environment = [\"KEEP\", \"GONE\", \"A=b\"]\nRestartSec = 0.5"})
	env := r.proc("e").env
	for _, want := range []string{"KEEP=init", "A=b"} {
		if !slices.Contains(env, want) {
			t.Errorf("environment %q lacks %s", env, want)
		}
	}
	for _, kv := range env {
		if kv == "KEEP" || strings.HasPrefix(kv, "GONE") {
			t.Errorf("environment has %q", kv)
		}
	}
	st, _ := r.s.ServiceStatus("e")
	if len(st.Warnings) != 2 || !strings.Contains(st.Warnings[0], `"KEEP" has no value`) {
		t.Errorf("warnings %q, want one for each bare name", st.Warnings)
	}
	if st.RestartSec != 0 || st.RestartMillis != 500 {
		t.Errorf("restart_sec %d restart_ms %d, want 0 and 500", st.RestartSec, st.RestartMillis)
	}
}

// TestStartErrorsSayWhat: a start that fails names the file or the limit
// (issue 10 item 8).
func TestStartErrorsSayWhat(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		err        error
		want       []string
	}{
		{"emfile", simple, syscall.EMFILE, []string{"RLIMIT_NOFILE", "/bin/svc"}},
		{"eagain", simple, syscall.EAGAIN, []string{"RLIMIT_NPROC"}},
		{"eacces", simple, syscall.EACCES, []string{"exec /bin/svc: permission denied"}},
		{"enoent", "ExecStart = \"/nonexistent/prog %s\"", syscall.ENOENT, []string{"exec /nonexistent/prog: no such file or directory"}},
		{"empty path", "ExecStart = \"prog %s\"\nEnvironment = [\"PATH=\"]", nil, []string{"prog: command not found: PATH is empty"}},
		{"workdir", simple + "WorkingDirectory = \"/nonexistent/dir\"", nil, []string{"WorkingDirectory: stat /nonexistent/dir: no such file"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, map[string]string{"x.service.disabled": tc.body})
			r.ops.startFn = func([]string) error { return tc.err }
			err := r.s.StartService("x")
			st, _ := r.s.ServiceStatus("x")
			for _, w := range tc.want {
				if err == nil || !strings.Contains(err.Error(), w) || !strings.Contains(st.Error, w) {
					t.Errorf("start error %v, status error %q; want both to say %q", err, st.Error, w)
				}
			}
		})
	}
}

// TestDecidedDifferences pins the behaviours docs/services.md lists as
// differences from the reference (issue 11 item 16).
func TestDecidedDifferences(t *testing.T) {
	r := newRig(t, map[string]string{"web.service": simple, "idle.service.disabled": simple})
	r.started()
	// start of a running service succeeds and starts nothing (systemd).
	if err := r.s.StartService("web"); err != nil {
		t.Errorf("start of a running service: %v", err)
	}
	if got := r.started(); len(got) != 0 {
		t.Errorf("start of a running service started %q", got)
	}
	// stop of a stopped service succeeds (systemd).
	if err := r.s.StopService("idle"); err != nil {
		t.Errorf("stop of a stopped service: %v", err)
	}
	// A freshly started service has restarted 0 times (reference: 1).
	if st, _ := r.s.ServiceStatus("web"); st.RestartCount != 0 {
		t.Errorf("restart_count of a fresh service %d, want 0", st.RestartCount)
	}
	// disable leaves a running service running, listed and stoppable (systemd).
	if err := r.s.DisableService("web"); err != nil {
		t.Fatal(err)
	}
	st, err := r.s.ServiceStatus("web")
	if err != nil || !st.Active || st.Enabled {
		t.Errorf("web after disable: %+v %v, want active and not enabled", st, err)
	}
	// Unknown names: the reference's wording.
	for _, err := range []error{r.s.StartService("nosuch"), r.s.StopService("nosuch"), r.s.EnableService("nosuch")} {
		if err == nil || !strings.Contains(err.Error(), "Service 'nosuch' not found") {
			t.Errorf("unknown service: %v", err)
		}
	}
}

// TestShutdownStopsInReverseOrder: what starts later stops earlier, and a
// wave waits for the one before it to be gone.
func TestShutdownStopsInReverseOrder(t *testing.T) {
	r := newRig(t, map[string]string{
		"db.service":  stubborn,
		"app.service": simple + "Requires = [\"db\"]",
	})
	db := r.proc("db")
	app := r.proc("app")
	app.ignore[syscall.SIGTERM] = true
	r.s.Shutdown(false)
	waitFor(t, "app to be signalled", func() bool {
		r.ops.mu.Lock()
		defer r.ops.mu.Unlock()
		return len(app.signals) > 0
	})
	r.sync()
	r.ops.mu.Lock()
	early := len(db.signals)
	r.ops.mu.Unlock()
	if early != 0 {
		t.Fatal("db was signalled while app, which requires it, still ran")
	}
	r.ops.die(app, syscall.WaitStatus(0))
	waitFor(t, "db to be signalled", func() bool {
		r.ops.mu.Lock()
		defer r.ops.mu.Unlock()
		return len(db.signals) > 0
	})
	r.ops.die(db, syscall.WaitStatus(0))
	wait.For(t, "the shutdown to finish", wait.Receive(r.s.finished, nil))
	if err := r.s.StartService("app"); err == nil {
		t.Error("start during shutdown succeeded")
	}
}

// TestSignalProcess: a terminating signal to a service's main process
// stops the service (no restart); others pass through; unknown PIDs fail.
func TestSignalProcess(t *testing.T) {
	r := newRig(t, map[string]string{
		"a.service": simple + "Restart = \"always\"",
		"b.service": simple + "Restart = \"always\"",
	})
	a, b := r.proc("a"), r.proc("b")
	a.ignore[syscall.SIGUSR1] = true // it handles USR1
	msg, err := r.s.SignalProcess(a.pid, syscall.SIGUSR1, false)
	if err != nil || !strings.Contains(msg, "Signal 10 sent") {
		t.Fatalf("USR1: %q %v", msg, err)
	}
	r.wantState("a", stateRunning)
	if msg, err = r.s.SignalProcess(a.pid, syscall.SIGKILL, false); err != nil || !strings.Contains(msg, "service 'a' stopped") {
		t.Fatalf("KILL: %q %v", msg, err)
	}
	r.sync()
	r.wantState("a", stateInactive)
	if msg, err = r.s.SignalProcess(b.pid, syscall.SIGTERM, true); err != nil || !strings.Contains(msg, "SIGTERM sent to process") {
		t.Fatalf("stop: %q %v", msg, err)
	}
	r.sync()
	r.wantState("b", stateInactive)
	if got := r.pending(); len(got) != 0 {
		t.Errorf("restart armed after a stop by signal: %v", got)
	}
	if _, err := r.s.SignalProcess(999999, syscall.SIGTERM, false); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("signal to an unknown pid: %v", err)
	}
	if err := r.s.StartService("b"); err != nil {
		t.Fatal(err)
	}
	pid := r.proc("b").pid
	if msg, err := r.s.RestartProcess(pid); err != nil || !strings.Contains(msg, "Service 'b' restarted") {
		t.Fatalf("restart by pid: %q %v", msg, err)
	}
	if r.proc("b").pid == pid {
		t.Error("the restart kept the old process")
	}
	if got := r.s.ManagedPIDs(); got[r.proc("b").pid] != "b" {
		t.Errorf("managed pids %v", got)
	}
	sys := r.s.SystemStatus()
	if sys.TotalServices != 2 || sys.ActiveServices != 1 || sys.EnabledServices != 2 {
		t.Errorf("system status %+v", sys)
	}
	if list := r.s.Services(); len(list) != 2 || list[0].Name != "a" || list[0].State != "inactive" {
		t.Errorf("list %+v", list)
	}
}

// TestNotifyTimeoutAndForeignSender: READY=1 from a foreign pid is
// ignored; without READY=1 within TimeoutStartSec the group is killed and
// the start fails.
func TestNotifyTimeoutAndForeignSender(t *testing.T) {
	r := newRig(t, map[string]string{"n.service.disabled": notify + "TimeoutStartSec = 3"})
	done := make(chan error, 1)
	go func() { done <- r.s.StartService("n") }()
	waitFor(t, "n to start", func() bool { st, _ := r.state("n"); return st == stateStarting })
	r.s.call(func() {
		sv := r.s.services["n"]
		r.s.onNotify(sv, sv.gen, "STATUS=warming up\nREADY=1", 1)
	})
	r.wantState("n", stateStarting)
	r.fire(3 * time.Second)
	err := <-done
	if err == nil || !strings.Contains(err.Error(), "timed out") {
		t.Fatalf("start without READY=1: %v", err)
	}
	if !strings.Contains(r.messages(), "no READY=1 within 3s") {
		t.Errorf("log does not say why:\n%s", r.messages())
	}
}

// TestSettledOnceAfterStartup: Config.Settled is called once, when the
// last service the boot started has left Starting, and not again for later
// starts.
func TestSettledOnceAfterStartup(t *testing.T) {
	var calls int // written on the loop, read there through r.s.call
	r := newRigWith(t, map[string]string{
		"a.service": simple + "Restart = \"always\"\nRestartSec = 1\n",
		"n.service": notify,
	}, func(c *Config) { c.Settled = func() { calls++ } })
	count := func() (n int) {
		r.s.call(func() { n = calls })
		return n
	}
	r.wantState("n", stateStarting)
	if n := count(); n != 0 {
		t.Fatalf("Settled called %d times while n starts, want 0", n)
	}
	r.ready("n")
	if n := count(); n != 1 {
		t.Fatalf("Settled called %d times after n is ready, want 1", n)
	}
	r.exit("a", 1)
	r.fire(time.Second)
	r.wantState("a", stateRunning)
	if err := r.s.RestartService("a"); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 1 {
		t.Fatalf("Settled called %d times after later starts, want 1", n)
	}
}
