package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nitroinit/nitroinit/internal/control"
	"github.com/nitroinit/nitroinit/internal/control/controltest"
	"github.com/nitroinit/nitroinit/internal/hvsock"
	"github.com/nitroinit/nitroinit/internal/testbin"
	"github.com/nitroinit/nitroinit/internal/wait"
	"github.com/nitroinit/nitroinit/internal/wire"
)

// initctlBin is the real initctl, built once for all tests.
var initctlBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "initctl-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	built, err := testbin.Build(dir, "", "./initctl")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	initctlBin = built[0]
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type fixture struct {
	srv  *control.Server
	be   *controltest.Handler
	sock string
	dir  string
	pid  int // the managed "webapp" process
}

// serve runs a control server with the in-memory backend on a real Unix
// socket; extra listeners can be added with srv.Serve.
func serve(t *testing.T, mod func(*control.Config)) *fixture {
	t.Helper()
	dir := t.TempDir()
	f := &fixture{be: controltest.New(), sock: filepath.Join(dir, "init.sock"), dir: dir}
	// A real process plays the service's main PID: the server refuses to
	// signal its own PID, so the test's cannot serve.
	sleeper := exec.Command("sleep", "300")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sleeper.Process.Kill(); sleeper.Wait() })
	f.pid = sleeper.Process.Pid
	f.be.SetManaged(f.pid, "webapp")
	cfg := control.Config{Handler: f.be, IOTimeout: 5 * time.Second, Logf: t.Logf}
	if mod != nil {
		mod(&cfg)
	}
	f.srv = control.NewServer(cfg)
	l, err := control.ListenUnix(f.sock, false)
	if err != nil {
		t.Fatal(err)
	}
	go f.srv.Serve(context.Background(), l, control.TransportUnix)
	t.Cleanup(func() { f.srv.Close() })
	return f
}

type result struct {
	code           int
	stdout, stderr string
}

// initctl runs the binary with a config path that does not exist, so only
// flags and the given environment matter.
func initctl(t *testing.T, env []string, args ...string) result {
	t.Helper()
	cmd := exec.Command(initctlBin, args...)
	cmd.Env = append([]string{"INITCTL_CONFIG=/nonexistent/initctl.yaml", "PATH=/usr/bin:/bin"}, env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return result{code, out.String(), errb.String()}
}

// TestCommands runs every command against the server, in table form and
// with -o json, checking exit code, output and what reached the backend.
func TestCommands(t *testing.T) {
	f := serve(t, nil)
	me := fmt.Sprint(f.pid)
	tests := []struct {
		args     []string
		code     int
		want     []string // lines or fragments expected in stdout (stderr for errors)
		jsonKind string   // the response kind with -o json
		call     string   // a call the backend must have seen
	}{
		{args: []string{"ping"}, want: []string{"✓ Pong - init system is responsive\n"}, jsonKind: "Pong"},
		{args: []string{"list"}, want: []string{
			"NAME                      ENABLED    ACTIVE     RESTART         RESTARTS   STATE\n" + strings.Repeat("-", 75) + "\n",
			"database                  enabled    active     always          1          running\n",
			"worker                    disabled   inactive   on-failure      0          disabled\n",
		}, jsonKind: "ServiceList"},
		{args: []string{"status", "webapp"}, want: []string{
			"Service: webapp\n  Enabled: yes\n  Status: active (running)\n  PID: 1234\n  Command: /usr/bin/python3 /app/server.py\n  Working Directory: /app\n  Restart Policy: always\n  Restart Delay: 5s\n  Restart Count: 3\n  Last Exit Code: 0\n  After: database, cache\n  Requires: database\n  Before: monitor\n",
		}, jsonKind: "ServiceStatus"},
		{args: []string{"status", "nosuch"}, code: 1, want: []string{"✗ Error: Service 'nosuch' not found\n"}, jsonKind: "Error"},
		{args: []string{"start", "webapp"}, want: []string{"✓ Service 'webapp' started\n"}, jsonKind: "Success", call: "start webapp"},
		{args: []string{"stop", "webapp"}, want: []string{"✓ Service 'webapp' stopped\n"}, jsonKind: "Success", call: "stop webapp"},
		{args: []string{"restart", "webapp"}, want: []string{"✓ Service 'webapp' restarted\n"}, jsonKind: "Success", call: "restart webapp"},
		{args: []string{"enable", "worker"}, want: []string{"✓ Service 'worker' enabled\n"}, jsonKind: "Success", call: "enable worker"},
		{args: []string{"enable", "--now", "worker"}, want: []string{"✓ Service 'worker' enabled\n✓ Service 'worker' started\n"}, jsonKind: "Success", call: "start worker"},
		{args: []string{"disable", "worker"}, want: []string{"✓ Service 'worker' disabled\n"}, jsonKind: "Success", call: "disable worker"},
		{args: []string{"logs", "webapp"}, want: []string{"[2026-01-01 10:00:00] listening on :8080\n[2026-01-01 10:00:01] ready\n"}, jsonKind: "ServiceLogs"},
		{args: []string{"logs", "webapp", "-n", "1"}, want: []string{"[2026-01-01 10:00:01] ready\n"}, jsonKind: "ServiceLogs"},
		{args: []string{"logs-clear", "database"}, want: []string{"✓ Logs cleared for service 'database'\n"}, jsonKind: "Success", call: "clear database"},
		{args: []string{"ps", "list"}, want: []string{
			"PID      PPID     STATE        CPU%   MEM      MANAGED    SERVICE    COMMAND\n" + strings.Repeat("-", 100) + "\n",
			"\n" + fmt.Sprintf("%-8s", me) + " ",
			" yes        webapp     ",
		}, jsonKind: "ProcessList"},
		{args: []string{"ps", "status", me}, want: []string{"Process: " + me + "\n  Name: ", "  Managed by Init: yes\n  Service: webapp\n"}, jsonKind: "ProcessStatus"},
		{args: []string{"ps", "status", "999999999"}, code: 1, want: []string{"✗ Error: Process 999999999 not found\n"}, jsonKind: "Error"},
		{args: []string{"ps", "start", "/usr/bin/myapp", "--config", "/etc/myapp.conf", "-e", "LOG_LEVEL=debug", "--verbose", "-e", "PORT=8080"},
			want: []string{"✓ Process started with PID 789 (PID: 789)\n"}, jsonKind: "ProcessStarted",
			call: "startprocess /usr/bin/myapp [--config /etc/myapp.conf --verbose] [LOG_LEVEL=debug PORT=8080]"},
		{args: []string{"ps", "run", "/bin/bash", "script.sh"}, want: []string{"✓ Process started with PID 789"}, jsonKind: "ProcessStarted", call: "startprocess /bin/bash [script.sh] []"},
		{args: []string{"ps", "stop", "789"}, want: []string{"✓ SIGTERM sent to process 789\n"}, jsonKind: "Success", call: "signal 789 15 true"},
		{args: []string{"ps", "kill", "789"}, want: []string{"✓ Signal 15 sent to process 789\n"}, jsonKind: "Success", call: "signal 789 15 false"},
		{args: []string{"ps", "kill", "789", "-s", "9"}, want: []string{"✓ Signal 9 sent to process 789\n"}, jsonKind: "Success", call: "signal 789 9 false"},
		{args: []string{"ps", "kill", "789", "--signal", "SIGHUP"}, want: []string{"✓ Signal 1 sent to process 789\n"}, jsonKind: "Success", call: "signal 789 1 false"},
		{args: []string{"ps", "kill", "789", "-s", "KILL"}, want: []string{"✓ Signal 9 sent"}, jsonKind: "Success"},
		{args: []string{"ps", "kill", "789", "-s", "RTMIN+2"}, want: []string{"✓ Signal 36 sent"}, jsonKind: "Success"},
		{args: []string{"ps", "kill", "1", "-s", "9"}, code: 1, want: []string{"✗ Error: Refusing to signal PID 1"}, jsonKind: "Error"},
		{args: []string{"ps", "restart", "789"}, code: 1, want: []string{"✗ Error: Process 789 is not managed by init, cannot restart\n"}, jsonKind: "Error"},
		{args: []string{"ps", "restart", me}, want: []string{"✓ Service 'webapp' restarted\n"}, jsonKind: "Success"},
		{args: []string{"system-status"}, want: []string{"System Status\n  Uptime: 2d 5h 32m 15s\n  Services: 3 total, 2 enabled, 2 active\n  Processes: ", " total\n  Service Directory: /service\n  Log Directory: /log\n", "    This connection: read, manage, exec\n"}, jsonKind: "SystemStatus"},
		{args: []string{"reload"}, want: []string{"✓ Service configurations reloaded\n"}, jsonKind: "Success", call: "reload"},
		{args: []string{"reboot"}, want: []string{"✓ System reboot initiated\n"}, jsonKind: "Success", call: "shutdown reboot=true"},
		{args: []string{"shutdown"}, want: []string{"✓ System shutdown initiated\n"}, jsonKind: "Success", call: "shutdown reboot=false"},
	}
	for _, tc := range tests {
		name := strings.Join(tc.args, " ")
		r := initctl(t, nil, append([]string{"-s", f.sock}, tc.args...)...)
		out := r.stdout
		if tc.code != 0 {
			out = r.stderr
		}
		if r.code != tc.code {
			t.Errorf("%s: exit %d, want %d\nstdout: %s\nstderr: %s", name, r.code, tc.code, r.stdout, r.stderr)
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("%s: output lacks %q:\n%s", name, w, out)
			}
		}
		if tc.call != "" && !strings.Contains(strings.Join(f.be.Calls(), "\n"), tc.call) {
			t.Errorf("%s: backend never saw %q", name, tc.call)
		}

		// The same with -o json (after the command) and --json (before).
		for _, form := range [][]string{append(append([]string{"-s", f.sock}, tc.args...), "-o", "json"), append([]string{"--json", "-s", f.sock}, tc.args...)} {
			if tc.args[0] == "ps" && (tc.args[1] == "start" || tc.args[1] == "run") && form[0] != "--json" {
				// ps start passes trailing words to the command; put -o first.
				form = append([]string{"-s", f.sock, "ps", tc.args[1], "-o", "json"}, tc.args[2:]...)
			}
			r := initctl(t, nil, form...)
			if r.code != tc.code {
				t.Errorf("%v: exit %d, want %d; stderr %s", form, r.code, tc.code, r.stderr)
			}
			lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
			for _, l := range lines {
				var resp wire.Response
				if err := json.Unmarshal([]byte(l), &resp); err != nil {
					t.Errorf("%v: stdout line %q is not a response: %v", form, l, err)
					continue
				}
				if resp.Kind != tc.jsonKind {
					t.Errorf("%v: kind %s, want %s", form, resp.Kind, tc.jsonKind)
				}
			}
		}
	}
}

func TestUsageAndReachability(t *testing.T) {
	f := serve(t, nil)
	tests := []struct {
		args []string
		env  []string
		code int
		want string
	}{
		{args: []string{"-s", f.sock, "status"}, code: 2, want: "accepts 1 arg(s), received 0"},
		{args: []string{"-s", f.sock, "ps", "kill", "789", "-s", "NOPE"}, code: 2, want: `unknown signal "NOPE"`},
		{args: []string{"-s", f.sock, "ps", "kill", "789", "-s", "65"}, code: 2, want: "signal 65: want 1 to 64"},
		{args: []string{"-s", f.sock, "ps", "status", "abc"}, code: 2, want: `PID "abc": not a number`},
		{args: []string{"-s", f.sock, "list", "--bogus"}, code: 2, want: "unknown flag: --bogus"},
		{args: []string{"-s", f.sock, "-o", "yaml", "list"}, code: 2, want: `--output-format "yaml": want table or json`},
		{args: []string{"-s", f.sock, "-p", "carrier-pigeon", "list"}, code: 2, want: `--protocol "carrier-pigeon"`},
		{args: []string{"-p", "hybrid", "list"}, code: 2, want: "protocol hybrid needs --vsock-uds"},
		{args: []string{"-s", f.sock, "ps", "start"}, code: 2, want: "ps start needs a command"},
		{args: []string{"-s", filepath.Join(f.dir, "nothing.sock"), "ping"}, code: 3, want: "cannot reach init over unix socket"},
		{args: []string{"--vsock-uds", filepath.Join(f.dir, "nothing.sock"), "ping"}, code: 3, want: "cannot reach init over hybrid vsock"},
		{args: []string{"-s", f.sock, "nosuch"}, code: 2, want: `unknown command "nosuch"`},
		{args: []string{"-s", f.sock}, code: 2, want: "initctl needs a command"},
		{args: []string{"-s", f.sock, "ps"}, code: 2, want: "initctl ps needs a command"},
		{args: []string{"-s", f.sock, "ps", "bogus"}, code: 2, want: `unknown command "bogus" for "initctl ps"`},
		{args: []string{"--help"}, code: 0},
		{args: []string{"ps", "start", "--help"}, code: 0},
		{args: []string{"ping"}, env: []string{"INIT_SOCKET=" + f.sock}, code: 0},
		{args: []string{"ping", "--socket", f.sock}, code: 0},
		{args: []string{"list", "--json", "--socket", f.sock}, code: 0},
	}
	for _, tc := range tests {
		r := initctl(t, tc.env, tc.args...)
		if r.code != tc.code || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit %d with %q", tc.args, r.code, r.stderr, tc.code, tc.want)
		}
	}
}

func TestConfigFile(t *testing.T) {
	f := serve(t, nil)
	cfg := filepath.Join(f.dir, "initctl.yaml")
	os.WriteFile(cfg, []byte("protocol: unix\nunix_socket_path: "+f.sock+"\n"), 0o644)
	if r := initctl(t, nil, "-c", cfg, "ping"); r.code != 0 {
		t.Errorf("ping via -c: %+v", r)
	}
	if r := initctl(t, []string{"INITCTL_CONFIG=" + cfg}, "ping"); r.code != 0 {
		t.Errorf("ping via INITCTL_CONFIG: %+v", r)
	}
	os.WriteFile(cfg, []byte("protocol: [\n"), 0o644)
	if r := initctl(t, nil, "-c", cfg, "ping"); r.code != 2 || !strings.Contains(r.stderr, cfg) {
		t.Errorf("broken config: exit %d, stderr %q; want 2 naming the file", r.code, r.stderr)
	}
}

// hybridEndpoint plays the VM side of a hybrid vsock device: it accepts on
// path, answers CONNECT <port> with OK, and hands the stream to the server
// as a vsock connection from the host (CID 2).
func hybridEndpoint(t *testing.T, srv *control.Server, path string, port uint32) {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(context.Background(), &hybridListener{Listener: l, port: port}, control.TransportVsock)
}

type hybridListener struct {
	net.Listener
	port uint32
}

// hybridConn keeps the buffered reader used for the handshake.
type hybridConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *hybridConn) Read(p []byte) (int, error) { return c.r.Read(p) }
func (c *hybridConn) PeerCID() uint32            { return 2 }

func (l *hybridListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		br := bufio.NewReader(c)
		// The handshake shows nothing until it is complete: one stall
		// interval for it.
		c.SetDeadline(time.Now().Add(wait.DefaultStall))
		port, err := hvsock.ReadConnect(br)
		if err != nil || port != l.port {
			c.Close()
			continue
		}
		fmt.Fprintf(c, "OK %d\n", 1073741824)
		c.SetDeadline(time.Time{})
		return &hybridConn{Conn: c, r: br}, nil
	}
}

// TestHybrid drives initctl through a hybrid vsock socket, including
// logs-stream, whose listener is then the Unix socket PATH_<port>.
func TestHybrid(t *testing.T) {
	var hpath string
	f := serve(t, func(c *control.Config) {
		c.Policy = control.Policy{VsockCIDs: []uint32{2}}
		c.DialVsock = func(ctx context.Context, cid, port uint32) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", hvsock.ListenPath(hpath, port))
		}
	})
	hpath = filepath.Join(f.dir, "vm.vsock")
	hybridEndpoint(t, f.srv, hpath, 9001)

	base := []string{"--vsock-uds", hpath, "--vsock-port", "9001"}
	if r := initctl(t, nil, append(base, "ping")...); r.code != 0 || r.stdout != "✓ Pong - init system is responsive\n" {
		t.Errorf("hybrid ping: %+v", r)
	}
	if r := initctl(t, nil, append(base, "list")...); r.code != 0 || !strings.Contains(r.stdout, "webapp ") {
		t.Errorf("hybrid list: %+v", r)
	}
	// Over vsock exec is off by default: the policy is enforced on this path.
	if r := initctl(t, nil, append(base, "reboot")...); r.code != 1 || !strings.Contains(r.stderr, "control.permissions.vsock.classes to include exec") {
		t.Errorf("hybrid reboot: %+v", r)
	}
	// Same via initctl.yaml, protocol vsock + vsock_uds_path.
	cfg := filepath.Join(f.dir, "initctl.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("protocol: vsock\nvsock_port: 9001\nvsock_uds_path: %s\n", hpath)), 0o644)
	if r := initctl(t, nil, "-c", cfg, "ping"); r.code != 0 {
		t.Errorf("hybrid ping via config: %+v", r)
	}

	// logs-stream: runs until Ctrl-C, then stops the stream cleanly.
	cmd := exec.Command(initctlBin, append(base, "logs-stream", "webapp", "--listen-port", "9200", "-f")...)
	cmd.Env = []string{"INITCTL_CONFIG=/nonexistent"}
	stdout, _ := cmd.StdoutPipe()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	wait.For(t, "the stream to start", wait.Bool(func() bool { return f.srv.ActiveStreams() == 1 }))
	f.be.Publish("webapp", "streamed line 1")
	f.be.Publish("webapp", "streamed line 2")
	sc := bufio.NewScanner(stdout)
	for _, want := range []string{"streamed line 1", "streamed line 2"} {
		if !sc.Scan() || sc.Text() != want {
			t.Fatalf("logs-stream printed %q (%v), want %q; stderr %s", sc.Text(), sc.Err(), want, stderr.String())
		}
	}
	cmd.Process.Signal(syscall.SIGINT)
	err := cmd.Wait()
	if err != nil {
		t.Errorf("logs-stream after Ctrl-C: %v; stderr %s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "Log streaming stopped for service 'webapp'") {
		t.Errorf("logs-stream stderr: %s", stderr.String())
	}
	if n := f.srv.ActiveStreams(); n != 0 {
		t.Errorf("%d streams left after Ctrl-C", n)
	}
	if _, err := os.Stat(hvsock.ListenPath(hpath, 9200)); err == nil {
		t.Errorf("logs-stream left its listener socket behind")
	}
}

// TestLogsFollow checks logs -f: history, live lines, and a clean end on
// Ctrl-C with the subscription released.
func TestLogsFollow(t *testing.T) {
	f := serve(t, nil)
	cmd := exec.Command(initctlBin, "-s", f.sock, "logs", "webapp", "-n", "1", "-f")
	cmd.Env = []string{"INITCTL_CONFIG=/nonexistent"}
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	sc := bufio.NewScanner(stdout)
	if !sc.Scan() || sc.Text() != "[2026-01-01 10:00:01] ready" {
		t.Fatalf("first line %q", sc.Text())
	}
	wait.For(t, "the subscription", wait.Bool(func() bool { return f.be.OpenSubs("webapp") == 1 }))
	f.be.Publish("webapp", "new line")
	if !sc.Scan() || sc.Text() != "new line" {
		t.Fatalf("live line %q", sc.Text())
	}
	cmd.Process.Signal(syscall.SIGINT)
	if err := cmd.Wait(); err != nil {
		t.Errorf("logs -f after Ctrl-C: %v", err)
	}
	wait.For(t, "the subscription to close", wait.Bool(func() bool { return f.be.OpenSubs("webapp") == 0 }))
}

func TestFormatting(t *testing.T) {
	for kb, want := range map[uint64]string{512: "512K", 8397: "8.2M", 12800: "12.5M", 262144: "256.0M", 65536: "64.0M", 1024: "1.0M", 1023: "1023K", 1048576: "1.0G", 1572864: "1.5G"} {
		if got := humanKB(kb); got != want {
			t.Errorf("humanKB(%d) = %q, want %q", kb, got, want)
		}
	}
	for secs, want := range map[uint64]string{192735: "2d 5h 32m 15s", 3600: "1h 0m 0s", 61: "1m 1s", 5: "5s"} {
		if got := uptime(secs); got != want {
			t.Errorf("uptime(%d) = %q, want %q", secs, got, want)
		}
	}
	for in, want := range map[string]int{"9": 9, "KILL": 9, "sigterm": 15, "SIGHUP": 1, "RTMIN": 34, "RTMIN+3": 37, "SIGRTMAX-1": 63, "64": 64} {
		if got, err := parseSignal(in); err != nil || got != want {
			t.Errorf("parseSignal(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"0", "65", "NOPE", "RTMIN+40", "RTMAX+1", "-3"} {
		if _, err := parseSignal(bad); err == nil {
			t.Errorf("parseSignal(%q) accepted", bad)
		}
	}
}

// regexpLine reports whether some line of s matches pattern.
func regexpLine(s, pattern string) bool {
	return regexp.MustCompile(`(?m)` + pattern).MatchString(s)
}
