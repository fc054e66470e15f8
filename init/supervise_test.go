package main

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nitroinit/nitroinit/internal/unit"
	"github.com/nitroinit/nitroinit/internal/wire"
)

// withWrappedInit makes startInit run init through a shell that opens
// extra descriptors first, as an outer manager or a careless parent may
// leave them.
func withWrappedInit(t *testing.T) {
	t.Helper()
	wrapper := filepath.Join(t.TempDir(), "init-wrapper")
	script := "#!/bin/bash\nexec 7</dev/null 250</dev/null\nexec " + bins.init + " \"$@\"\n"
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	real := bins.init
	bins.init = wrapper
	t.Cleanup(func() { bins.init = real })
}

// TestServicesGetOnlyTheirOwn: in supervisor mode services inherit neither
// the outer manager's NOTIFY_SOCKET and LISTEN_* (issue 11 item 8) nor
// init's inherited descriptors (issue 10 item 8), and system-status says
// why the heartbeat was not sent (issue 11 item 9).
func TestServicesGetOnlyTheirOwn(t *testing.T) {
	withWrappedInit(t)
	t.Setenv("NOTIFY_SOCKET", "/run/systemd/notify")
	t.Setenv("LISTEN_FDS", "1")
	t.Setenv("LISTEN_PID", "1")
	h := startInit(t, map[string]string{
		"show.service": `ExecStart = "/bin/sh -c 'ls /proc/self/fd; echo ENV; env; echo END'"`,
	}, "")
	h.waitLogFile("show", "the service's output", func(log string) bool { return strings.Contains(log, "] END") })
	out := h.logFile("show")
	// The first line, init's, quotes the command: cut at the output's marker.
	fds, env, _ := strings.Cut(out, "] ENV\n")
	for _, line := range strings.Split(fds, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		// ls itself has the directory it lists open, as fd 3.
		if n, err := strconv.Atoi(f[len(f)-1]); err == nil && n > 3 {
			t.Errorf("the service inherited fd %d:\n%s", n, fds)
		}
	}
	for _, v := range []string{"NOTIFY_SOCKET=", "LISTEN_FDS=", "LISTEN_PID="} {
		if strings.Contains(env, v) {
			t.Errorf("the service inherited %s from init's manager", v)
		}
	}
	r := h.do(wire.Request{Kind: wire.KindSystemStatus})
	if r.System == nil || r.System.Heartbeat != "not sent: not PID 1" {
		t.Errorf("system-status heartbeat %+v, want \"not sent: not PID 1\"", r.System)
	}
}

// TestHeartbeatDisabledInSupervisorMode: with the heartbeat off in the
// configuration, system-status says disabled.
func TestHeartbeatDisabledInSupervisorMode(t *testing.T) {
	h := startInit(t, nil, "vsock:\n  enabled: false\n")
	if r := h.do(wire.Request{Kind: wire.KindSystemStatus}); r.System == nil || r.System.Heartbeat != "disabled" {
		t.Errorf("system-status heartbeat %+v, want disabled", r.System)
	}
}

// TestNoSignalToInitsThreads: any id in init's thread group is init
// (issue 10 item 6).
func TestNoSignalToInitsThreads(t *testing.T) {
	h := startInit(t, nil, "")
	pid := h.cmd.Process.Pid
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	if err != nil {
		t.Fatal(err)
	}
	var tids []int
	for _, e := range ents {
		if tid, err := strconv.Atoi(e.Name()); err == nil && tid != pid {
			tids = append(tids, tid)
		}
	}
	if len(tids) == 0 {
		t.Fatal("init has no threads besides its main one")
	}
	for _, tid := range tids {
		for _, req := range []wire.Request{
			{Kind: wire.KindProcessKill, PID: tid, Signal: int(syscall.SIGSTOP)},
			{Kind: wire.KindProcessStop, PID: tid},
		} {
			r, err := h.try(req)
			if err != nil {
				t.Fatal(err)
			}
			if r.Kind != wire.KindError || !strings.Contains(r.Message, "init itself") {
				t.Fatalf("%s of init's thread %d: %+v", req.Kind, tid, r)
			}
		}
	}
	st, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if i := strings.LastIndexByte(string(st), ')'); i > 0 && strings.HasPrefix(string(st[i+2:]), "T") {
		t.Fatal("init was stopped")
	}
	h.do(wire.Request{Kind: wire.KindPing})
}

// TestStartFailureNamesThePath: "permission denied" and "no such file"
// name what could not be run (issue 10 item 8).
func TestStartFailureNamesThePath(t *testing.T) {
	h := startInit(t, map[string]string{
		"noexec.service": "ExecStart = \"$DIR/plain\"",
		"gone.service":   "ExecStart = \"$DIR/nowhere --flag\"",
	}, "")
	if err := os.WriteFile(filepath.Join(h.dir, "plain"), []byte("not a program"), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"noexec": "exec " + filepath.Join(h.dir, "plain") + ": permission denied",
		"gone":   "exec " + filepath.Join(h.dir, "nowhere") + ": no such file or directory",
	} {
		r, err := h.try(wire.Request{Kind: wire.KindServiceStart, Name: name})
		if err != nil {
			t.Fatal(err)
		}
		if r.Kind != wire.KindError || !strings.Contains(r.Message, want) {
			t.Errorf("start %s: %+v, want an error saying %q", name, r, want)
		}
		if st := h.status(name); !strings.Contains(st.Error, want) {
			t.Errorf("status %s: error %q, want %q", name, st.Error, want)
		}
	}
}

// TestAWSAppCommandLine: the /cmd app's ExecStart reads back as its argv
// (issue 15 item 8).
func TestAWSAppCommandLine(t *testing.T) {
	argv := []string{"/bin/app", "two words", "it's", ""}
	u := awsApp(argv, nil)
	got, err := unit.Split(u.ExecStart)
	if err != nil || !slices.Equal(got, argv) {
		t.Fatalf("ExecStart %q splits into %q (%v), want %q", u.ExecStart, got, err, argv)
	}
}

// TestOneshotWithTheRealBinary: a setup step that takes a while runs to
// completion before the app ordered after it; a failing one fails its
// dependant (issue 11 item 12).
func TestOneshotWithTheRealBinary(t *testing.T) {
	h := startInit(t, map[string]string{
		"setup.service":  "ExecStart = \"$SVC exit 0 300ms\"\nType = \"oneshot\"\nRemainAfterExit = true",
		"app.service":    "ExecStart = \"$SVC append $DIR/order app\"\nAfter = [\"setup\"]\nRequires = [\"setup\"]",
		"broken.service": "ExecStart = \"$SVC exit 4\"\nType = \"oneshot\"",
		"user.service":   "ExecStart = \"$SVC sleep\"\nRequires = [\"broken\"]",
	}, "")
	app := h.waitState("app", "running", 10*time.Second)
	setup := h.status("setup")
	if setup.State != "exited" || !setup.Active || setup.ExitStatus == nil || *setup.ExitStatus != 0 {
		t.Fatalf("setup: %+v, want active (exited) with status 0", setup)
	}
	if app.Since < setup.Since {
		t.Errorf("app started (%d) before setup finished (%d)", app.Since, setup.Since)
	}
	if st := h.waitState("user", "failed", 10*time.Second); !strings.Contains(st.Error, `requirement "broken" failed`) {
		t.Errorf("user: %+v", st)
	}
	if st := h.status("broken"); st.State != "failed" {
		t.Errorf("broken: %+v", st)
	}
}
