package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/nitroinit/nitroinit/internal/wait"
)

// answer is what an initctl command printed and how it exited: out is its
// stdout when code is 0, else its stderr. In out, {PID} stands for the
// process the case is about and {DIR} for init's service directory; with
// partial, every line of out must be a line of the output (which may have
// more); with re, out is a regular expression for the whole output.
type answer struct {
	out     string
	code    int
	partial bool
	re      bool
}

// compatCase is one situation from the reference's README or issue 11,
// with the reference's exact answer and, where we differ on purpose, ours
// and the row of the differences table in docs/initctl.md that says why.
type compatCase struct {
	situation string
	args      []string
	ref       answer
	ours      *answer // nil: the same as the reference's
	row       string  // first cell of the differences table row
}

// TestReferenceCompat runs our initctl against the real init and checks, in
// order, the exact output and exit code for each situation: the
// reference's, or ours where docs/initctl.md documents the difference. The
// reference's answers come from its README and from running it (issue 11);
// its code is not vendored.
//
// The rows marked "service behaviour" record what our init does today for
// choices docs/services.md owns (start of a running service, stop of a
// stopped one, disable, restart count).
func TestReferenceCompat(t *testing.T) {
	in := startInit(t, map[string]string{
		"web.service":           `ExecStart = "/bin/sleep 1000"` + "\n",
		"worker.service":        `ExecStart = "/bin/sleep 1000"` + "\n",
		"idle.service.disabled": `ExecStart = "/bin/sleep 1000"` + "\n",
	})
	// Processes that init did not start, for the ps cases; each case that
	// signals one gets its own.
	var sleepers []int
	for range 4 {
		c := exec.Command("sleep", "300")
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		go c.Wait()
		defer c.Process.Kill()
		sleepers = append(sleepers, c.Process.Pid)
	}
	pid := func(i int) string { return fmt.Sprint(sleepers[i]) }
	waitActive := func(name string) {
		wait.For(t, name+" to start", func() (bool, string) {
			out := initctl(t, nil, "-s", in.sock, "status", name).stdout
			return strings.Contains(out, "active (running)"), out
		})
	}
	waitActive("web")
	waitActive("worker")

	const missing = "999999999"
	cases := []compatCase{
		{situation: "ping", args: []string{"ping"}, ref: answer{out: "✓ Pong - init system is responsive\n"}},
		{situation: "status of an unknown service", args: []string{"status", "nosuch"}, ref: answer{out: "✗ Error: Service 'nosuch' not found\n", code: 1}},
		{situation: "start of an unknown service", args: []string{"start", "nosuch"}, ref: answer{out: "✗ Error: Service 'nosuch' not found\n", code: 1}},
		{situation: "stop of an unknown service", args: []string{"stop", "nosuch"}, ref: answer{out: "✗ Error: Service 'nosuch' not found\n", code: 1}},
		{situation: "restart of an unknown service", args: []string{"restart", "nosuch"}, ref: answer{out: "✗ Error: Service 'nosuch' not found\n", code: 1}},
		{situation: "logs of an unknown service", args: []string{"logs", "nosuch"}, ref: answer{out: "✗ Error: Service 'nosuch' not found\n", code: 1}},
		{situation: "logs-clear of an unknown service", args: []string{"logs-clear", "nosuch"}, ref: answer{out: "✗ Error: Service 'nosuch' not found\n", code: 1}},
		{
			situation: "enable of an unknown service", args: []string{"enable", "nosuch"},
			ref:  answer{out: "✗ Error: Failed to enable service 'nosuch': Service file not found\n", code: 1},
			ours: &answer{out: "✗ Error: Service 'nosuch' not found (no {DIR}/nosuch.service or {DIR}/nosuch.service.disabled): service not found\n", code: 1},
			row:  "enable/disable of an unknown name",
		},
		{
			situation: "disable of an unknown service", args: []string{"disable", "nosuch"},
			ref:  answer{out: "✗ Error: Failed to disable service 'nosuch': Service file not found\n", code: 1},
			ours: &answer{out: "✗ Error: Service 'nosuch' not found (no {DIR}/nosuch.service or {DIR}/nosuch.service.disabled): service not found\n", code: 1},
			row:  "enable/disable of an unknown name",
		},
		{situation: "logs of a service that never ran", args: []string{"logs", "idle"}, ref: answer{out: "No logs available\n"}},
		{situation: "status of a stopped service", args: []string{"status", "idle"}, ref: answer{out: "Service: idle\n  Enabled: no\n  Status: inactive (dead)\n  Command: /bin/sleep 1000\n  Restart Policy: no\n  Restart Delay: 5s\n  Restart Count: 0\n", partial: true}},
		{
			situation: "restart count of a freshly started service", args: []string{"status", "web"},
			ref:  answer{out: "  Status: active (running)\n  Restart Count: 1\n", partial: true},
			ours: &answer{out: "  Status: active (running)\n  Restart Count: 0\n", partial: true},
			row:  "restart count",
		},
		{
			situation: "start of a running service", args: []string{"start", "web"},
			ref:  answer{out: "✗ Error: Service 'web' is already running\n", code: 1},
			ours: &answer{out: "✓ Service 'web' started\n"},
			row:  "start of a running service",
		},
		{
			situation: "stop of a running service", args: []string{"stop", "web"},
			ref:  answer{out: "✓ Service 'web' stop signal sent\n"},
			ours: &answer{out: "✓ Service 'web' stopped\n"},
			row:  "stop of a running service",
		},
		{
			situation: "stop of a stopped service", args: []string{"stop", "web"},
			ref:  answer{out: "✗ Error: Service 'web' is not running\n", code: 1},
			ours: &answer{out: "✓ Service 'web' stopped\n"},
			row:  "stop of a stopped service",
		},
		{
			situation: "start of a disabled service", args: []string{"start", "idle"},
			ref:  answer{out: "✗ Error: Service 'idle' is disabled\n", code: 1},
			ours: &answer{out: "✓ Service 'idle' started\n"},
			row:  "start of a disabled service",
		},
		{situation: "stop of a hand-started service", args: []string{"stop", "idle"}, ref: answer{out: "✓ Service 'idle' stop signal sent\n"}, ours: &answer{out: "✓ Service 'idle' stopped\n"}, row: "stop of a running service"},
		{situation: "enable --now", args: []string{"enable", "--now", "idle"}, ref: answer{out: "✓ Service 'idle' enabled\n✓ Service 'idle' started\n"}},
		{
			situation: "reload", args: []string{"reload"},
			ref:  answer{out: "✓ System reload initiated\n"},
			ours: &answer{out: "✓ Service configurations reloaded\n"},
			row:  "reload",
		},
		{situation: "ps start", args: []string{"ps", "start", "/bin/sleep", "30"}, ref: answer{out: `✓ Process started with PID \d+ \(PID: \d+\)\n`, re: true}},
		{situation: "ps stop", args: []string{"ps", "stop", pid(0)}, ref: answer{out: "✓ SIGTERM sent to process {PID}\n"}},
		{situation: "ps kill -s 9", args: []string{"ps", "kill", pid(1), "-s", "9"}, ref: answer{out: "✓ Signal 9 sent to process {PID}\n"}},
		{
			situation: "ps kill of a signal the reference refuses", args: []string{"ps", "kill", pid(2), "-s", "10"},
			ref:  answer{out: "✗ Error: Unsupported signal: 10\n", code: 1},
			ours: &answer{out: "✓ Signal 10 sent to process {PID}\n"},
			row:  "ps kill signals",
		},
		{situation: "ps restart of a process init did not start", args: []string{"ps", "restart", pid(3)}, ref: answer{out: "✗ Error: Process {PID} is not managed by init, cannot restart\n", code: 1}},
		{
			situation: "ps status of a missing PID", args: []string{"ps", "status", missing},
			ref:  answer{out: `✗ Error: Failed to get process status: .*\n`, code: 1, re: true},
			ours: &answer{out: "✗ Error: Process {PID} not found\n", code: 1},
			row:  "missing PIDs",
		},
		{
			situation: "ps stop of a missing PID", args: []string{"ps", "stop", missing},
			ref:  answer{out: "✗ Error: Failed to stop process: ESRCH: No such process\n", code: 1},
			ours: &answer{out: "✗ Error: Process {PID} not found\n", code: 1},
			row:  "missing PIDs",
		},
		{
			situation: "ps kill of a missing PID", args: []string{"ps", "kill", missing, "-s", "9"},
			ref:  answer{out: "✗ Error: Failed to send signal: ESRCH: No such process\n", code: 1},
			ours: &answer{out: "✗ Error: Process {PID} not found\n", code: 1},
			row:  "missing PIDs",
		},
		{
			situation: "log line timestamps", args: []string{"logs", "-n", "1", "worker"},
			ref:  answer{out: `\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] .*\n`, re: true},
			ours: &answer{out: `\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\] .*\n`, re: true},
			row:  "log timestamps",
		},
		{
			situation: "disable of a running service", args: []string{"disable", "worker"},
			ref: answer{out: "✓ Service 'worker' disabled\n"},
		},
		{
			// The reference stops it (and list no longer counts it as
			// active); we leave it running, as systemd does.
			situation: "a service after disable", args: []string{"status", "worker"},
			ref:  answer{out: "  Enabled: no\n  Status: inactive (dead)\n", partial: true},
			ours: &answer{out: "  Enabled: no\n  Status: active (running)\n", partial: true},
			row:  "disable",
		},
	}
	docs, err := os.ReadFile("../docs/initctl.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		want := c.ref
		if c.ours != nil {
			want = *c.ours
			if !strings.Contains(string(docs), "| "+c.row+" |") {
				t.Errorf("%s: we differ from the reference, but docs/initctl.md has no row %q in its differences table", c.situation, c.row)
			}
		}
		r := initctl(t, nil, append([]string{"-s", in.sock}, c.args...)...)
		got := r.stdout
		if r.code != 0 {
			got = r.stderr
		}
		target := ""
		if len(c.args) > 1 {
			target = c.args[len(c.args)-1]
			if c.args[0] == "ps" && len(c.args) > 2 {
				target = c.args[2]
			}
		}
		if !want.matches(got, strings.NewReplacer("{PID}", target, "{DIR}", in.svcDir)) || r.code != want.code {
			t.Errorf("%s: initctl %s printed\n%s(exit %d); want\n%s(exit %d)", c.situation, strings.Join(c.args, " "), got, r.code, want.out, want.code)
		}
	}

	t.Run("empty service directory", func(t *testing.T) {
		empty := startInit(t, nil)
		if r := initctl(t, nil, "-s", empty.sock, "list"); r.stdout != "No services found\n" || r.code != 0 {
			t.Errorf("list: %+v, want \"No services found\" and exit 0", r)
		}
	})
	t.Run("unknown request variant", func(t *testing.T) {
		c, err := net.Dial("unix", in.sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		wc := wait.NewConn(c)
		wc.Write([]byte(`{"FormatDisk":{"name":"x"}}`))
		b := make([]byte, 4096)
		n, _ := wc.Read(b)
		if got := string(b[:n]); !strings.HasPrefix(got, `{"Error":{"message":"Invalid request: `) {
			t.Errorf("answer %s, want an Error whose message starts with the reference's \"Invalid request: \"", got)
		}
	})
	t.Run("ps list columns", func(t *testing.T) {
		r := initctl(t, nil, "-s", in.sock, "ps", "list")
		lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
		if r.code != 0 || len(lines) < 3 || lines[0] != "PID      PPID     STATE        CPU%   MEM      MANAGED    SERVICE    COMMAND" || lines[1] != strings.Repeat("-", 100) {
			t.Fatalf("ps list: %+v", r)
		}
		mem := regexp.MustCompile(`^(\d+K|\d+\.\dM|\d+\.\dG)$`)
		for _, l := range lines[2:] {
			f := strings.Fields(l)
			if len(f) < 8 || !mem.MatchString(f[4]) {
				t.Errorf("ps list row %q: MEM is not as the reference formats it (512K, 1.0M, 1.5G)", l)
			}
			if cmd := strings.Join(f[7:], " "); len(cmd) > maxCommand {
				t.Errorf("ps list row %q: COMMAND longer than %d bytes", l, maxCommand)
			}
		}
	})
}

func (a answer) matches(got string, r *strings.Replacer) bool {
	want := r.Replace(a.out)
	switch {
	case a.re:
		return regexp.MustCompile(`^` + want + `$`).MatchString(got)
	case a.partial:
		have := map[string]bool{}
		for _, l := range strings.Split(got, "\n") {
			have[l] = true
		}
		for _, l := range strings.Split(strings.TrimSuffix(want, "\n"), "\n") {
			if !have[l] {
				return false
			}
		}
		return true
	}
	return got == want
}
