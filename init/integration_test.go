package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nitroinit/nitroinit/internal/sigdisp"
	"github.com/nitroinit/nitroinit/internal/wire"
)

func TestDependencyAndReadinessOrder(t *testing.T) {
	// "web" requires "db" and is ordered after "cache"; "cache" is a notify
	// service that becomes ready only after 700ms; "db" is ordered after
	// "cache" too. Start order must be cache (ready), db, web.
	h := startInit(t, map[string]string{
		"cache.service": `ExecStart = "$SVC notify 700ms warm"
Type = "notify"
Before = ["db"]`,
		"db.service": `ExecStart = "$SVC append $DIR/order db"`,
		"web.service": `ExecStart = "$SVC append $DIR/order web"
Requires = ["db"]
After = ["cache"]`,
		"aaa.service": `ExecStart = "$SVC append $DIR/order aaa"`,
	}, "")
	h.eventually(10*time.Second, "all four started", func() bool {
		return strings.Count(h.readFile("order"), "\n") == 3
	})
	// A simple service counts as started once its exec succeeded, so the
	// order of the processes' own writes is not the start order: compare
	// the start lines init wrote to each log (init writes them while the
	// processes run, so wait for them).
	for _, n := range []string{"aaa", "db", "web"} {
		h.waitFor(n+"'s start line in its log", func() (bool, string) {
			l := h.logFile(n)
			return strings.Contains(l, "init: started"), l
		})
	}
	aaa := logTime(t, h.logFile("aaa"), "init: started")
	db := logTime(t, h.logFile("db"), "init: started")
	web := logTime(t, h.logFile("web"), "init: started")
	if !aaa.Before(db) || !db.Before(web) {
		t.Fatalf("start times aaa %v, db %v, web %v: want aaa < db < web", aaa, db, web)
	}
	st := h.waitState("cache", "running", 5*time.Second)
	if st.StatusText != "warm" {
		t.Errorf("cache STATUS= %q, want %q", st.StatusText, "warm")
	}
	// The notify service's readiness came before db started: db's log shows
	// its start after cache's "ready" line.
	h.waitFor("cache's ready line in its log", func() (bool, string) {
		l := h.logFile("cache")
		return strings.Contains(l, "init: ready"), l
	})
	ready := logTime(t, h.logFile("cache"), "init: ready")
	dbStart := logTime(t, h.logFile("db"), "init: started")
	if dbStart.Before(ready) {
		t.Fatalf("db started at %v, before cache was ready at %v", dbStart, ready)
	}
}

// logTime returns the timestamp of the first log line containing substr.
func logTime(t *testing.T, log, substr string) time.Time {
	t.Helper()
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, substr) && strings.HasPrefix(line, "[") {
			ts, err := time.Parse("2006-01-02T15:04:05.000000Z", line[1:strings.IndexByte(line, ']')])
			if err != nil {
				t.Fatalf("log line %q: %v", line, err)
			}
			return ts
		}
	}
	t.Fatalf("no log line with %q in:\n%s", substr, log)
	return time.Time{}
}

func TestOutputCaptured(t *testing.T) {
	h := startInit(t, map[string]string{"talk.service": `ExecStart = "$SVC print 3"`}, "")
	h.eventually(10*time.Second, "output in the log file", func() bool {
		l := h.logFile("talk")
		return strings.Contains(l, "stdout line 3") && strings.Contains(l, "stderr line 3")
	})
	for _, line := range strings.Split(strings.TrimSpace(h.logFile("talk")), "\n") {
		if !strings.HasPrefix(line, "[20") || !strings.Contains(line, "Z] ") {
			t.Errorf("log line without a UTC timestamp: %q", line)
		}
	}
	r := h.do(wire.Request{Kind: wire.KindServiceLogs, Name: "talk", Lines: 2})
	if len(r.Logs) != 2 {
		t.Fatalf("logs -n 2 gave %d lines: %q", len(r.Logs), r.Logs)
	}
}

func TestRestartPolicies(t *testing.T) {
	h := startInit(t, map[string]string{
		"always.service":      "ExecStart = \"$SVC exit 0 100ms\"\nRestart = \"always\"\nRestartSec = 0.2\nStartLimitIntervalSec = 0",
		"no.service":          "ExecStart = \"$SVC exit 1 100ms\"\nRestart = \"no\"",
		"onfail-ok.service":   "ExecStart = \"$SVC exit 0 100ms\"\nRestart = \"on-failure\"\nRestartSec = 0.1",
		"onfail-bad.service":  "ExecStart = \"$SVC exit 3 100ms\"\nRestart = \"on-failure\"\nRestartSec = 0.1\nStartLimitIntervalSec = 0",
		"onsucc.service":      "ExecStart = \"$SVC exit 0 100ms\"\nRestart = \"on-success\"\nRestartSec = 0.1\nStartLimitIntervalSec = 0",
		"onabn-crash.service": "ExecStart = \"$SVC crash 100ms\"\nRestart = \"on-abnormal\"\nRestartSec = 0.1\nStartLimitIntervalSec = 0",
		"onabn-exit.service":  "ExecStart = \"$SVC exit 4 100ms\"\nRestart = \"on-abnormal\"\nRestartSec = 0.1",
	}, "")
	restarted := []string{"always", "onfail-bad", "onsucc", "onabn-crash"}
	for _, name := range restarted {
		h.waitFor(name+" restarted twice", func() (bool, string) {
			st := h.status(name)
			return st.RestartCount >= 2, fmt.Sprintf("state %q, restarts %d", st.State, st.RestartCount)
		})
	}
	for _, name := range []string{"no", "onfail-ok", "onabn-exit"} {
		st := h.waitState(name, "exited", 10*time.Second)
		if st.RestartCount != 0 {
			t.Errorf("%s: restarted %d times, want 0", name, st.RestartCount)
		}
	}
	if st := h.status("no"); st.ExitStatus == nil || *st.ExitStatus != 1 {
		t.Errorf("no: exit status %v, want 1", st.ExitStatus)
	}
	if st := h.status("onabn-crash"); st.ExitStatus != nil && *st.ExitStatus != 128+int(syscall.SIGKILL) {
		t.Errorf("onabn-crash: exit status %d, want %d", *st.ExitStatus, 128+int(syscall.SIGKILL))
	}
}

func TestStartLimitFails(t *testing.T) {
	h := startInit(t, map[string]string{
		"flappy.service": "ExecStart = \"$SVC exit 1\"\nRestart = \"always\"\nRestartSec = 0\nStartLimitBurst = 3\nStartLimitIntervalSec = 30",
	}, "")
	st := h.waitState("flappy", "failed", 10*time.Second)
	if !strings.Contains(st.Error, "start limit") {
		t.Errorf("failed reason %q does not mention the start limit", st.Error)
	}
	if st.RestartCount != 2 {
		t.Errorf("restart count %d, want 2 (3 starts allowed: the first and 2 restarts; the refused 4th is not counted)", st.RestartCount)
	}
	// It stays failed (a negative check, kept short).
	time.Sleep(300 * time.Millisecond)
	if st := h.status("flappy"); st.State != "failed" {
		t.Fatalf("state %q after failing, want failed", st.State)
	}
	list := h.do(wire.Request{Kind: wire.KindListServices})
	if list.Services[0].State != "failed" || list.Services[0].Active {
		t.Errorf("list shows %+v", list.Services[0])
	}
	// A manual start clears it (and it fails again, quickly, by the limit).
	r, _ := h.try(wire.Request{Kind: wire.KindServiceStart, Name: "flappy"})
	_ = r
	h.eventually(10*time.Second, "flappy restarted after manual start", func() bool {
		return h.status("flappy").RestartCount > 2
	})
}

func TestStopEscalationKillsGroup(t *testing.T) {
	h := startInit(t, map[string]string{
		"stubborn.service": "ExecStart = \"$SVC stubborn $DIR/pids\"\nTimeoutStopSec = 1\nRestart = \"always\"",
	}, "")
	h.waitState("stubborn", "running", 5*time.Second)
	h.eventually(5*time.Second, "pid file", func() bool { return len(strings.Fields(h.readFile("pids"))) == 2 })
	var pids []int
	for _, f := range strings.Fields(h.readFile("pids")) {
		p, _ := strconv.Atoi(f)
		pids = append(pids, p)
	}
	start := time.Now()
	h.do(wire.Request{Kind: wire.KindServiceStop, Name: "stubborn"})
	if d := time.Since(start); d < 900*time.Millisecond {
		t.Errorf("stop returned after %s, before TimeoutStopSec", d)
	}
	for _, p := range pids {
		h.eventually(5*time.Second, "pid "+strconv.Itoa(p)+" gone", func() bool { return !alive(p) })
	}
	if !strings.Contains(h.logFile("stubborn"), "sending SIGKILL") {
		t.Errorf("log does not record the SIGKILL escalation:\n%s", h.logFile("stubborn"))
	}
	// A manual stop is remembered: Restart=always does not bring it back
	// (a negative check, kept short).
	time.Sleep(500 * time.Millisecond)
	if st := h.status("stubborn"); st.State != "inactive" || st.PID != nil {
		t.Fatalf("after stop: %+v", st)
	}
}

func TestReloadWithoutDuplicates(t *testing.T) {
	h := startInit(t, map[string]string{
		"keep.service":    "ExecStart = \"$SVC sleep keep-marker\"",
		"stopped.service": "ExecStart = \"$SVC sleep stopped-marker\"\nRestart = \"always\"",
		"gone.service":    "ExecStart = \"$SVC sleep gone-marker\"",
		"change.service":  "ExecStart = \"$SVC sleep change-marker\"",
	}, "")
	for _, n := range []string{"keep", "stopped", "gone", "change"} {
		h.waitState(n, "running", 5*time.Second)
	}
	keepPID := *h.status("keep").PID
	h.do(wire.Request{Kind: wire.KindServiceStop, Name: "stopped"})
	os.Remove(filepath.Join(h.svcDir, "gone.service"))
	h.writeService("new.service", "ExecStart = \"$SVC sleep new-marker\"")
	h.writeService("change.service", "ExecStart = \"$SVC sleep change-marker v2\"")
	for i := 0; i < 3; i++ {
		h.do(wire.Request{Kind: wire.KindSystemReload})
	}
	h.cmd.Process.Signal(syscall.SIGHUP)
	h.waitState("new", "running", 5*time.Second)
	time.Sleep(300 * time.Millisecond) // room for a duplicate to appear: a negative check

	if got := *h.status("keep").PID; got != keepPID {
		t.Errorf("keep: pid changed from %d to %d across reload", keepPID, got)
	}
	if st := h.status("stopped"); st.State != "inactive" {
		t.Errorf("manually stopped service is %s after reload", st.State)
	}
	if st := h.status("change"); !st.ChangedOnDisk {
		t.Errorf("change: changed_on_disk not reported")
	}
	if r, _ := h.try(wire.Request{Kind: wire.KindServiceStatus, Name: "gone"}); r.Kind != wire.KindError {
		t.Errorf("removed service still known: %+v", r)
	}
	for marker, want := range map[string]int{"keep-marker": 1, "stopped-marker": 0, "gone-marker": 0, "new-marker": 1, "change-marker": 1} {
		if got := len(processesOf(marker)); got != want {
			t.Errorf("%d processes with %s, want %d", got, marker, want)
		}
	}
	// The changed definition applies at the next restart.
	h.do(wire.Request{Kind: wire.KindServiceRestart, Name: "change"})
	if got := len(processesOf("change-marker v2")); got != 1 {
		t.Errorf("%d processes of the new definition after restart, want 1", got)
	}
	if st := h.status("change"); st.ChangedOnDisk {
		t.Errorf("still changed_on_disk after restart")
	}
}

func TestOrphanStorm(t *testing.T) {
	h := startInit(t, map[string]string{
		"storm.service": "ExecStart = \"" + bins.zombies + " -n 10000\"",
	}, "")
	h.waitState("storm", "exited", 60*time.Second)
	initPID := h.cmd.Process.Pid
	h.waitFor("no zombies left", func() (bool, string) {
		n := zombieChildren(initPID)
		return n == 0, fmt.Sprintf("%d zombie children of init", n)
	})
	if !strings.Contains(h.logFile("storm"), "forked 10000 children") {
		t.Fatalf("storm did not fork 10000 children:\n%s", h.logFile("storm"))
	}
}

func TestBrokenServiceBesideGoodOnes(t *testing.T) {
	h := startInit(t, map[string]string{
		"good.service":    `ExecStart = "$SVC sleep"`,
		"badtoml.service": "ExecStart = \"$SVC sleep\"\nRestart = [",
		"badval.service":  "ExecStart = \"$SVC sleep\"\nRestart = \"sometimes\"",
		"noexec.service":  "Restart = \"always\"",
		"cycle-a.service": "ExecStart = \"$SVC sleep\"\nAfter = [\"cycle-b\"]",
		"cycle-b.service": "ExecStart = \"$SVC sleep\"\nAfter = [\"cycle-a\"]",
		"needy.service":   "ExecStart = \"$SVC sleep\"\nRequires = [\"ghost\"]",
		"unknown.service": "ExecStart = \"$SVC sleep\"\nFrobnicate = 1",
	}, "")
	h.waitState("good", "running", 5*time.Second)
	h.waitState("unknown", "running", 5*time.Second)
	checks := map[string][]string{
		"badtoml": {"invalid", "badtoml.service:2"},
		"badval":  {"invalid", "badval.service:2", "Restart", "sometimes"},
		"noexec":  {"invalid", "ExecStart"},
		"cycle-a": {"held", "cycle-a -> cycle-b -> cycle-a"},
		"needy":   {"held", `"ghost"`},
	}
	list := h.do(wire.Request{Kind: wire.KindListServices})
	byName := map[string]wire.ServiceInfo{}
	for _, s := range list.Services {
		byName[s.Name] = s
	}
	for name, want := range checks {
		st := h.status(name)
		if st.State != want[0] {
			t.Errorf("%s: state %q, want %q", name, st.State, want[0])
		}
		for _, w := range want[1:] {
			if !strings.Contains(st.Error, w) {
				t.Errorf("%s: status error %q lacks %q", name, st.Error, w)
			}
			if !strings.Contains(byName[name].Error, w) {
				t.Errorf("%s: list error %q lacks %q", name, byName[name].Error, w)
			}
		}
	}
	if !strings.Contains(h.console.String(), "Frobnicate") {
		t.Errorf("no warning about the unknown key on the console")
	}
}

func TestShutdownOrder(t *testing.T) {
	// Each service records its SIGTERM; web after db after base, so the
	// stop order must be web, db, base.
	h := startInit(t, map[string]string{
		"base.service": "ExecStart = \"$SVC trap $DIR/stops-base\"\nType = \"notify\"",
		"db.service":   "ExecStart = \"$SVC trap $DIR/stops-db\"\nType = \"notify\"\nAfter = [\"base\"]",
		"web.service":  "ExecStart = \"$SVC trap $DIR/stops-web\"\nType = \"notify\"\nRequires = [\"db\"]",
	}, "")
	for _, n := range []string{"base", "db", "web"} {
		h.waitState(n, "running", 5*time.Second)
	}
	h.shutdown()
	var times []time.Time
	for _, n := range []string{"web", "db", "base"} {
		fi, err := os.Stat(filepath.Join(h.dir, "stops-"+n))
		if err != nil {
			t.Fatalf("%s never got SIGTERM: %v", n, err)
		}
		times = append(times, fi.ModTime())
	}
	for i := 1; i < len(times); i++ {
		if times[i].Before(times[i-1]) {
			t.Fatalf("stop order wrong: web %v, db %v, base %v", times[0], times[1], times[2])
		}
	}
	if !strings.Contains(h.console.String(), "all services stopped") {
		t.Errorf("no final shutdown line on the console")
	}
}

// ignoreSignal32 makes the test process ignore signal 32, as some parents
// of init do (the Go runtime never touches it), so that init inherits the
// ignore and has to undo it for its services.
func ignoreSignal32(t *testing.T) {
	was, err := sigdisp.Ignored(32)
	if err != nil {
		t.Fatal(err)
	}
	if err := sigdisp.Ignore(32); err != nil {
		t.Fatal(err)
	}
	if !was {
		t.Cleanup(func() { sigdisp.Default(32) })
	}
}

func TestEnvironmentCredentialsAndSignals(t *testing.T) {
	ignoreSignal32(t)
	h := startInit(t, map[string]string{
		"env.service":    "ExecStart = \"$SVC env\"\nEnvironment = [\"FROM_UNIT=unit\", \"SHARED=unit wins\"]",
		"nobody.service": "ExecStart = \"$SVC ids\"\nUser = \"65534\"\nGroup = \"65534\"\nWorkingDirectory = \"/\"",
		"root.service":   "ExecStart = \"$SVC ids\"",
	}, "environment:\n  FROM_INIT: yaml\n  SHARED: yaml\n")
	h.eventually(10*time.Second, "env output", func() bool { return strings.Contains(h.logFile("env"), "FROM_UNIT=") })
	env := h.logFile("env")
	for _, want := range []string{"FROM_INIT=yaml", "FROM_UNIT=unit", "SHARED=unit wins"} {
		if !strings.Contains(env, want) {
			t.Errorf("service environment lacks %s:\n%s", want, env)
		}
	}
	if strings.Contains(env, "SHARED=yaml") {
		t.Errorf("init.yaml's SHARED was not replaced by the service's")
	}
	h.eventually(10*time.Second, "ids output", func() bool {
		return strings.Contains(h.logFile("nobody"), "SigIgn") && strings.Contains(h.logFile("root"), "SigIgn")
	})
	if !strings.Contains(h.logFile("nobody"), "uid=65534 gid=65534") {
		t.Errorf("User/Group not applied:\n%s", h.logFile("nobody"))
	}
	// init catches every signal, but its children start with nothing
	// blocked and nothing ignored.
	for _, name := range []string{"root", "nobody"} {
		l := h.logFile(name)
		for _, want := range []string{"SigBlk: 0000000000000000", "SigIgn: 0000000000000000"} {
			if !strings.Contains(l, want) {
				t.Errorf("%s: %s not in:\n%s", name, want, l)
			}
		}
	}
}

func TestEnableDisable(t *testing.T) {
	h := startInit(t, map[string]string{
		"a.service":          "ExecStart = \"$SVC sleep\"",
		"off.service":        "ExecStart = \"$SVC sleep\"\nServiceEnable = false",
		"d.service.disabled": "ExecStart = \"$SVC sleep\"",
	}, "")
	h.waitState("a", "running", 5*time.Second)
	if st := h.status("off"); st.Enabled || st.Active {
		t.Fatalf("ServiceEnable=false service: %+v", st)
	}
	if st := h.status("d"); st.Enabled || st.State != "disabled" {
		t.Fatalf(".disabled service: %+v", st)
	}
	// Enabling a file that says ServiceEnable = false must really enable it.
	h.do(wire.Request{Kind: wire.KindServiceEnable, Name: "off"})
	if st := h.status("off"); !st.Enabled {
		t.Fatalf("off still disabled after enable: %+v", st)
	}
	h.do(wire.Request{Kind: wire.KindServiceEnable, Name: "d"})
	if _, err := os.Stat(filepath.Join(h.svcDir, "d.service")); err != nil {
		t.Fatalf("enable did not rename the file: %v", err)
	}
	h.do(wire.Request{Kind: wire.KindServiceDisable, Name: "a"})
	if _, err := os.Stat(filepath.Join(h.svcDir, "a.service.disabled")); err != nil {
		t.Fatalf("disable did not rename the file: %v", err)
	}
	st := h.status("a")
	if st.Enabled {
		t.Fatalf("a still enabled: %+v", st)
	}
	// Disabling does not stop a running service (as in systemd).
	if !st.Active {
		t.Fatalf("disable stopped a: %+v", st)
	}
	if r, _ := h.try(wire.Request{Kind: wire.KindServiceEnable, Name: "../etc/passwd"}); r.Kind != wire.KindError {
		t.Fatalf("enable of a path-like name: %+v", r)
	}
	if r, _ := h.try(wire.Request{Kind: wire.KindServiceEnable, Name: "nosuch"}); r.Kind != wire.KindError || !strings.Contains(r.Message, "nosuch") {
		t.Fatalf("enable of a missing service: %+v", r)
	}
}

func TestStartDisabledAndFixedServices(t *testing.T) {
	h := startInit(t, map[string]string{
		"off.service.disabled": "ExecStart = \"$SVC sleep\"",
		"broken.service":       "ExecStart = \"$SVC sleep\"\nRestart = \"sometimes\"",
	}, "")
	h.waitState("broken", "invalid", 5*time.Second)
	// A disabled service can still be started by hand, as with systemd.
	h.do(wire.Request{Kind: wire.KindServiceStart, Name: "off"})
	if st := h.status("off"); st.State != "running" || st.Enabled {
		t.Fatalf("off after start: %+v", st)
	}
	// Fixing a broken file and reloading starts the service.
	h.writeService("broken.service", "ExecStart = \"$SVC sleep\"\nRestart = \"always\"")
	h.do(wire.Request{Kind: wire.KindSystemReload})
	h.waitState("broken", "running", 5*time.Second)
}

func TestReloadRecoversHeldAndRestoredServices(t *testing.T) {
	h := startInit(t, map[string]string{
		"needy.service": "ExecStart = \"$SVC sleep\"\nRequires = [\"dep\"]",
		"slow.service":  "ExecStart = \"$SVC trap $DIR/slow-term\"\nType = \"notify\"\nTimeoutStopSec = 30",
	}, "")
	h.waitState("needy", "held", 5*time.Second)
	h.waitState("slow", "running", 5*time.Second)

	// The missing requirement appears: the held service starts at reload.
	h.writeService("dep.service", "ExecStart = \"$SVC sleep\"")
	h.do(wire.Request{Kind: wire.KindSystemReload})
	h.waitState("dep", "running", 5*time.Second)
	h.waitState("needy", "running", 5*time.Second)

	// A file removed and restored while its service stops: the service
	// comes back instead of being forgotten.
	path := filepath.Join(h.svcDir, "slow.service")
	body, _ := os.ReadFile(path)
	os.Remove(path)
	h.do(wire.Request{Kind: wire.KindSystemReload})
	os.WriteFile(path, body, 0o644)
	h.do(wire.Request{Kind: wire.KindSystemReload})
	h.eventually(10*time.Second, "slow to get SIGTERM", func() bool { return h.readFile("slow-term") != "" })
	h.waitState("slow", "running", 10*time.Second)
}
