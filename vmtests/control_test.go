package vmtests

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nitroinit/nitroinit/internal/wait"
	"github.com/nitroinit/nitroinit/internal/wire"
)

// TestControl runs every initctl command from the host against the main VM
// over vsock, with the host's real initctl binary, and checks its output,
// its exit code and, through the control protocol, what init did.
func TestControl(t *testing.T) {
	e := mainVM(t)
	pidOf := e.runningPID
	ensureRunning := func(t *testing.T, name string) int {
		t.Helper()
		if st := e.status(t, name); st.State != "running" {
			e.do(t, wire.Request{Kind: wire.KindServiceStart, Name: name})
		}
		return pidOf(t, name)
	}
	wantOut := func(t *testing.T, out string, wants ...string) {
		t.Helper()
		for _, w := range wants {
			if !strings.Contains(out, w) {
				t.Errorf("output lacks %q:\n%s", w, out)
			}
		}
	}

	t.Run("ping", func(t *testing.T) {
		e.explain(t)
		wantOut(t, e.initctlOK(t, "ping"), "✓ Pong - init system is responsive")
	})

	t.Run("list", func(t *testing.T) {
		e.explain(t)
		out := e.initctlOK(t, "list")
		wantOut(t, out, "NAME", "ENABLED", "ACTIVE", "RESTART", "RESTARTS")
		row := lineWith(out, "ctl ")
		if f := strings.Fields(row); len(f) < 4 || f[1] != "enabled" || f[2] != "active" || f[3] != "always" {
			t.Errorf("ctl row %q: want enabled, active, always", row)
		}
		if f := strings.Fields(lineWith(out, "counter ")); len(f) < 2 || f[1] != "disabled" {
			t.Errorf("counter row %q: want disabled", lineWith(out, "counter "))
		}
	})

	t.Run("list_json", func(t *testing.T) {
		e.explain(t)
		out := e.initctlOK(t, "-o", "json", "list")
		var v struct {
			ServiceList struct {
				Services []struct {
					Name    string `json:"name"`
					Enabled bool   `json:"enabled"`
				} `json:"services"`
			}
		}
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			t.Fatalf("-o json list is not one JSON value: %v\n%s", err, out)
		}
		found := false
		for _, s := range v.ServiceList.Services {
			found = found || (s.Name == "ctl" && s.Enabled)
		}
		if !found {
			t.Errorf("JSON service list lacks an enabled ctl: %s", out)
		}
	})

	t.Run("status", func(t *testing.T) {
		e.explain(t, "ctl")
		pid := ensureRunning(t, "ctl")
		out := e.initctlOK(t, "status", "ctl")
		wantOut(t, out, "Service: ctl", "Enabled: yes", "Status: active (running)",
			fmt.Sprintf("PID: %d", pid), "Command: /bin/svc sleep ctl-marker", "Restart Policy: always")
		out, errOut, code := e.initctl(t, "status", "no-such-service")
		if code != 1 || !strings.Contains(errOut, "✗ Error") {
			t.Errorf("status of an unknown service: exit %d, stdout %q, stderr %q; want exit 1 and ✗ Error", code, out, errOut)
		}
	})

	t.Run("stop_start_restart", func(t *testing.T) {
		e.explain(t, "ctl")
		pid := ensureRunning(t, "ctl")
		wantOut(t, e.initctlOK(t, "stop", "ctl"), "✓ Service 'ctl' stopped")
		if st := e.status(t, "ctl"); st.State != "inactive" || st.PID != nil {
			t.Errorf("after stop: state %q pid %v, want inactive", st.State, st.PID)
		}
		wantOut(t, e.initctlOK(t, "start", "ctl"), "✓ Service 'ctl' started")
		started := pidOf(t, "ctl")
		if started == pid {
			t.Errorf("start reused PID %d", pid)
		}
		wantOut(t, e.initctlOK(t, "restart", "ctl"), "✓ Service 'ctl' restarted")
		if again := pidOf(t, "ctl"); again == started {
			t.Errorf("restart kept PID %d", again)
		}
		if n := len(e.processesWith(t, "ctl-marker")); n != 1 {
			t.Errorf("%d ctl processes after stop, start and restart, want 1", n)
		}
	})

	t.Run("start_of_a_disabled_service", func(t *testing.T) {
		e.explain(t, "dormant")
		defer e.retire(t, "dormant")
		// Disabled means "not started at boot". A manual start either runs
		// it (as systemd does) or says that it is disabled; it must not
		// answer with a reason that explains nothing.
		out, errOut, code := e.initctl(t, "start", "dormant")
		switch {
		case code == 0:
			e.waitState(t, "dormant", "running")
		case code == 1 && strings.Contains(errOut, "disabled"):
		default:
			t.Errorf("start of a disabled service: exit %d, stdout %q, stderr %q; want it started, or an error that says it is disabled", code, out, errOut)
		}
	})

	t.Run("enable_disable", func(t *testing.T) {
		e.explain(t, "ctl")
		wantOut(t, e.initctlOK(t, "disable", "ctl"), "✓ Service 'ctl' disabled")
		if f := strings.Fields(lineWith(e.initctlOK(t, "list"), "ctl ")); len(f) < 2 || f[1] != "disabled" {
			t.Errorf("list after disable: ctl row %q", f)
		}
		wantOut(t, e.initctlOK(t, "enable", "ctl"), "✓ Service 'ctl' enabled")
		if st := e.status(t, "ctl"); !st.Enabled {
			t.Errorf("ctl not enabled after enable: %+v", st)
		}
	})

	t.Run("logs", func(t *testing.T) {
		e.explain(t, "talk")
		e.waitLog(t, "talk", "stderr line 3")
		out := strings.TrimRight(e.initctlOK(t, "logs", "-n", "2", "talk"), "\n")
		if lines := strings.Split(out, "\n"); len(lines) != 2 {
			t.Errorf("logs -n 2 printed %d lines:\n%s", len(lines), out)
		}
		wantOut(t, e.initctlOK(t, "logs", "talk"), "stdout line 1", "stderr line 3")
	})

	t.Run("logs_follow", func(t *testing.T) {
		e.explain(t, "counter")
		defer e.retire(t, "counter")
		wantOut(t, e.initctlOK(t, "enable", "--now", "counter"), "✓ Service 'counter' enabled")
		// Three lines that counter prints after the start: it writes one
		// every 250ms, and -n 1 shows only one old line.
		e.follow(t, 3, " line 0", "logs", "-f", "-n", "1", "counter")
	})

	t.Run("logs_clear", func(t *testing.T) {
		e.explain(t, "chatter")
		e.waitLog(t, "chatter", "stderr line 2")
		wantOut(t, e.initctlOK(t, "logs-clear", "chatter"), "✓ Logs cleared for service 'chatter'")
		if lines := e.logs(t, "chatter", 100); containsLine(lines, "stdout line") {
			t.Errorf("chatter's log still has its lines after logs-clear:\n%s", strings.Join(lines, "\n"))
		}
	})

	t.Run("logs_stream_to_a_host_listener", func(t *testing.T) {
		e.explain(t, "counter")
		defer e.retire(t, "counter")
		e.run(t, "counter")
		args := []string{"logs-stream", "counter", "--listen-cid", strconv.Itoa(int(e.hostCID)), "--listen-port", "9100", "-f"}
		for range 2 {
			// The second round shows the first one's stop reached init: a
			// stream still registered for port 9100 would be refused.
			e.follow(t, 2, " line 0", args...)
		}
	})

	t.Run("ps_list", func(t *testing.T) {
		e.explain(t, "ctl")
		pid := ensureRunning(t, "ctl")
		out := e.initctlOK(t, "ps", "list")
		wantOut(t, out, "PID", "PPID", "STATE", "MANAGED", "SERVICE", "COMMAND")
		row := strings.Fields(lineWith(out, strconv.Itoa(pid)+" "))
		if len(row) < 7 || row[0] != strconv.Itoa(pid) || row[1] != "1" || row[5] != "yes" || row[6] != "ctl" {
			t.Errorf("ps list row of ctl (pid %d): %q; want PPID 1, managed yes, service ctl", pid, row)
		}
		if one := strings.Fields(lineWith(out, "1 ")); len(one) == 0 || one[0] != "1" {
			t.Errorf("ps list has no row for PID 1:\n%s", out)
		}
	})

	t.Run("ps_status", func(t *testing.T) {
		e.explain(t, "ctl")
		pid := ensureRunning(t, "ctl")
		wantOut(t, e.initctlOK(t, "ps", "status", strconv.Itoa(pid)),
			fmt.Sprintf("Process: %d", pid), "Parent PID: 1", "Managed by Init: yes", "Service: ctl", "ctl-marker")
	})

	t.Run("exec_denied_by_default", func(t *testing.T) {
		e.explain(t)
		before := len(e.processesWith(t, "exec-probe"))
		pid := strconv.Itoa(ensureRunning(t, "ctl"))
		for _, args := range [][]string{
			{"ps", "start", "/bin/svc", "sleep", "exec-probe"},
			{"ps", "stop", pid},
			{"ps", "restart", pid},
			{"ps", "kill", pid, "-s", "KILL"},
			{"reboot"},
			{"shutdown"},
		} {
			out, errOut, code := e.initctl(t, args...)
			if code != 1 || !strings.Contains(errOut, "permission denied") || !strings.Contains(errOut, "exec") {
				t.Errorf("initctl %s over vsock without exec: exit %d, stdout %q, stderr %q; want exit 1, permission denied, exec",
					strings.Join(args, " "), code, out, errOut)
			}
		}
		if after := len(e.processesWith(t, "exec-probe")); after != before {
			t.Errorf("a refused ps start still started a process (%d -> %d)", before, after)
		}
		if now := strconv.Itoa(pidOf(t, "ctl")); now != pid {
			t.Errorf("refused ps requests still changed ctl's PID (%s -> %s)", pid, now)
		}
	})

	t.Run("system_status", func(t *testing.T) {
		e.explain(t)
		wantOut(t, e.initctlOK(t, "system-status"), "System Status", "Uptime:", "Services:", "Processes:",
			"Service Directory: /service", "Log Directory: /log", "Mode: pid1", "Version: vmtest",
			"Heartbeat: ok", "NSM: absent", "Module: ", "This connection: read, manage")
	})

	t.Run("reload", func(t *testing.T) {
		e.explain(t, "ctl")
		pid := ensureRunning(t, "ctl")
		for i := 0; i < 3; i++ {
			wantOut(t, e.initctlOK(t, "reload"), "✓ Service configurations reloaded")
		}
		if again := pidOf(t, "ctl"); again != pid {
			t.Errorf("reload of unchanged files restarted ctl (%d -> %d)", pid, again)
		}
		if n := len(e.processesWith(t, "ctl-marker")); n != 1 {
			t.Errorf("%d ctl processes after three reloads, want 1", n)
		}
	})

	t.Run("exit_codes", func(t *testing.T) {
		e.explain(t)
		tests := []struct {
			name string
			args []string
			want int
		}{
			{"success", []string{"ping"}, 0},
			{"init error", []string{"stop", "no-such-service"}, 1},
			{"usage error", []string{"status"}, 2},
			{"bad signal", []string{"ps", "kill", "2", "-s", "NOSUCHSIG"}, 2},
		}
		for _, tc := range tests {
			if _, errOut, code := e.initctl(t, tc.args...); code != tc.want {
				t.Errorf("%s: initctl %s exited %d, want %d (stderr %q)", tc.name, strings.Join(tc.args, " "), code, tc.want, errOut)
			}
		}
		// Unreachable: a port nobody listens on.
		args := append(e.initctlTarget(), "--vsock-port", "9999", "ping")
		ctx, cancel := e.answerContext("initctl to a port nobody listens on")
		defer cancel()
		err := exec.CommandContext(ctx, bin.initctl, args...).Run()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 {
			t.Errorf("initctl to a port nobody listens on: %v, want exit status 3", err)
		}
	})

	t.Run("malformed_oversized_and_slow_clients", func(t *testing.T) {
		e.explain(t, "ctl")
		pid := ensureRunning(t, "ctl")
		tests := []struct {
			name string
			send []byte
		}{
			{"not JSON", []byte("this is not json\n")},
			{"unknown request", []byte(`{"FormatDisk":{"name":"x"}}`)},
			{"wrong field type", []byte(`{"ServiceStatus":{"name":42}}`)},
			{"oversized", append([]byte(`{"ServiceStatus":{"name":"`), make([]byte, 2<<20)...)},
		}
		for _, tc := range tests {
			got, err := e.rawExchange(t, tc.send, waitTimeout)
			if err != nil && !strings.Contains(got, "Error") {
				t.Errorf("%s: %v (received %q); want an Error response or a closed connection", tc.name, err, got)
			}
			if strings.Contains(got, "Error") {
				t.Logf("%s: init answered %.200s", tc.name, got)
			}
		}
		// A client that dribbles a valid request, a byte every 500ms (7 s
		// in all, however slow the machine), is cut off when io_timeout
		// (2s) has passed: init hangs up without answering the request it
		// would answer had it waited for the whole of it. Asserted on that
		// outcome, not on how long it took.
		func() {
			ctx, cancel := e.answerContext("the dribbling client's connection")
			defer cancel()
			c, err := e.vm.DialOnce(ctx, controlPort)
			if err != nil {
				t.Fatalf("dribbling client: %v", err)
			}
			defer c.Close()
			start := time.Now()
			for _, b := range []byte(`"SystemStatus"`) {
				if _, err := c.Write([]byte{b}); err != nil {
					break // init hung up
				}
				time.Sleep(500 * time.Millisecond) // the dribble: behaviour under test
			}
			got, err := io.ReadAll(wait.NewConn(c))
			if isTimeout(err) || strings.Contains(string(got), "SystemStatus") {
				t.Errorf("dribbling client after %s: %q, %v; want it cut off after io_timeout", time.Since(start).Round(time.Millisecond), got, err)
			}
		}()
		// More silent clients than max_connections (16): init must drop them
		// after io_timeout (2s) and keep serving.
		var wg sync.WaitGroup
		closed := make(chan bool, 24)
		for i := 0; i < 24; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := e.answerContext("a silent client's connection")
				defer cancel()
				c, err := e.vm.DialOnce(ctx, controlPort)
				if err != nil {
					closed <- true // refused outright is fine too
					return
				}
				defer c.Close()
				// init may say why before it hangs up; read to the end.
				// A stall interval without its hanging up is a timeout.
				_, err = io.Copy(io.Discard, wait.NewConn(c))
				closed <- !isTimeout(err)
			}()
		}
		// While they hang around, a real client still gets through.
		if r, err := e.try(wire.Request{Kind: wire.KindPing}); err != nil || r.Kind != wire.KindPong {
			t.Errorf("ping among 24 silent clients: %+v, %v", r, err)
		}
		wg.Wait()
		close(closed)
		for c := range closed {
			if !c {
				t.Errorf("a silent client was still connected after a stall interval (io_timeout is 2s)")
				break
			}
		}
		wantOut(t, e.initctlOK(t, "ping"), "Pong")
		if again := pidOf(t, "ctl"); again != pid {
			t.Errorf("ctl's PID changed from %d to %d while clients misbehaved", pid, again)
		}
	})
}

// follow runs a following initctl command (logs -f, logs-stream -f), waits
// for n lines containing match, then interrupts it as a user's Ctrl-C would
// and expects a clean exit. It returns the matching lines.
func (e *enclave) follow(t *testing.T, n int, match string, args ...string) []string {
	t.Helper()
	cmd := exec.Command(bin.initctl, append(e.initctlTarget(), args...)...)
	cmd.Env = []string{"INITCTL_CONFIG=/nonexistent/initctl.yaml"}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	exited := false
	defer func() {
		if !exited {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()
	// The wait goes on while initctl prints lines.
	var got []string
	total := 0
	what := fmt.Sprintf("%d lines with %q from initctl %s", n, match, strings.Join(args, " "))
	eventually(t, waitTimeout, what, func() (bool, string) {
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					err := cmd.Wait()
					exited = true
					t.Fatalf("initctl %s ended (%v) after %d lines; stderr: %s", strings.Join(args, " "), err, len(got), stderr.String())
				}
				total++
				if strings.Contains(l, match) {
					got = append(got, l)
				}
			default:
				return len(got) >= n, fmt.Sprintf("%d lines, %d with %q; stderr: %s", total, len(got), match, stderr.String())
			}
		}
	})
	cmd.Process.Signal(syscall.SIGINT)
	go func() {
		for range lines {
		}
		done <- cmd.Wait()
	}()
	var waitErr error
	eventually(t, waitTimeout, "initctl "+strings.Join(args, " ")+" to exit after Ctrl-C", wait.Receive(done, &waitErr))
	exited = true
	if waitErr != nil {
		t.Errorf("initctl %s after Ctrl-C: %v, want exit 0; stderr: %s", strings.Join(args, " "), waitErr, stderr.String())
	}
	return got
}

// lineWith returns the first line of out that starts with prefix.
func lineWith(out, prefix string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return ""
}

// isTimeout reports whether err, or an error it wraps, is a timeout (a
// deadline, or a wait.Conn that saw nothing move).
func isTimeout(err error) bool {
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}
