package vmtests

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nitroinit/nitroinit/initramfs/image"
	"github.com/nitroinit/nitroinit/internal/control"
	"github.com/nitroinit/nitroinit/internal/forward/forwardtest"
	"github.com/nitroinit/nitroinit/internal/testbin"
	"github.com/nitroinit/nitroinit/internal/wait"
	"github.com/nitroinit/nitroinit/internal/wire"
)

// Guest ports of the network image.
const (
	netWWWPort    = 8080 // busybox httpd on 127.0.0.1, and its ingress vsock port
	netEchoPort   = 7000 // internal/testprog/echo, and its ingress vsock port
	netEgressPort = 8443 // the host's vsock port for egress
)

// busyboxPath finds a static busybox for the guest: Debian's busybox-static
// installs /bin/busybox. CI installs it (ci/install-deps.sh), so there the
// test fails rather than skips without it.
func busyboxPath(t *testing.T) string {
	t.Helper()
	for _, p := range []string{os.Getenv("NITROINIT_BUSYBOX"), "/bin/busybox", "/usr/bin/busybox"} {
		if p == "" {
			continue
		}
		out, err := exec.Command("file", "-L", p).Output()
		if err == nil && strings.Contains(string(out), "statically linked") {
			return p
		}
		if err != nil {
			if _, serr := os.Stat(p); serr == nil {
				return p // no file(1): trust the package
			}
		}
	}
	msg := "needs a static busybox in the guest: apt-get install busybox-static (or set NITROINIT_BUSYBOX)"
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// buildEcho builds internal/testprog/echo, the TCP echo server the guest
// runs, as a static binary in dir.
func buildEcho(t *testing.T, dir string) string {
	t.Helper()
	out := filepath.Join(dir, "echo")
	goBuild(t, out, "./internal/testprog/echo")
	return out
}

// goBuild builds the module's package pkg as the static binary out.
func goBuild(t *testing.T, out, pkg string) {
	t.Helper()
	bins, err := testbin.Build(filepath.Dir(out), "", pkg)
	if err != nil {
		t.Fatal(err)
	}
	if bins[0] != out {
		if err := os.Rename(bins[0], out); err != nil {
			t.Fatal(err)
		}
	}
}

// hostProc is a program the test runs on the host, ended by PID.
type hostProc struct {
	cmd *exec.Cmd
	log *syncBuffer
}

func startHost(t *testing.T, name string, args ...string) *hostProc {
	t.Helper()
	p := &hostProc{cmd: exec.Command(name, args...), log: &syncBuffer{}}
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	p.cmd.Env = append(os.Environ(), "INITCTL_CONFIG=/nonexistent/initctl.yaml")
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", strings.Join(p.cmd.Args, " "), err)
	}
	t.Cleanup(func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		p.cmd.Wait()
		if t.Failed() {
			t.Logf("=== host %s\n%s", strings.Join(p.cmd.Args, " "), p.log.String())
		}
	})
	return p
}

// freeTCP returns a 127.0.0.1 address nobody listens on right now.
func freeTCP(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// vsockEndpoint is how the host reaches guest port on e's route, in
// initctl forward's syntax; hostListen is where the guest's connections to
// host port arrive.
func (e *enclave) vsockEndpoint(port int) string {
	if e.target.Protocol == control.ProtocolHybrid {
		return fmt.Sprintf("hvsock:%s:%d", e.target.HybridPath, port)
	}
	return fmt.Sprintf("vsock:%d:%d", e.target.VsockCID, port)
}

func (e *enclave) hostListen(port int) string {
	if e.target.Protocol == control.ProtocolHybrid {
		return fmt.Sprintf("hvsock:%s:%d", e.target.HybridPath, port)
	}
	return fmt.Sprintf("vsock:%d", port)
}

// TestNetwork boots an enclave whose apps are real third-party servers
// (busybox httpd and wget) behind loopback, and reaches them through the
// forwarders of initctl on both sides.
func TestNetwork(t *testing.T) {
	needVM(t)
	bb := busyboxPath(t)
	stopShared()
	dir := t.TempDir()

	hello := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "hello from the host\n")
	}))
	defer hello.Close()
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "must not be reached\n")
	}))
	defer other.Close()
	helloAddr, otherAddr := hello.Listener.Addr().String(), other.Listener.Addr().String()
	allow := filepath.Join(dir, "allowlist.yaml")
	_, helloPort, _ := net.SplitHostPort(helloAddr)
	writeHostFile(t, allow, "allowlist:\n- {address: 127.0.0.1, port: "+helloPort+"}\n")
	index := filepath.Join(dir, "index.html")
	writeHostFile(t, index, "served by busybox httpd inside the enclave\n")

	fwd := "/usr/bin/initctl forward "
	g := guest{
		config: guestYAML("", ""),
		files: []image.File{
			{Src: bb, Dst: "/bin/busybox", Mode: 0o755},
			{Src: index, Dst: "/www/index.html", Mode: 0o644},
			{Src: buildEcho(t, dir), Dst: "/bin/echo", Mode: 0o755},
		},
		services: map[string]string{
			// The first services: what lo looks like when they start.
			"lo.service":      "ExecStart = \"/bin/busybox ip addr show dev lo\"\nBefore = [\"www\", \"echo\"]",
			"www.service":     fmt.Sprintf(`ExecStart = "/bin/busybox httpd -f -p 127.0.0.1:%d -h /www"`, netWWWPort),
			"echo.service":    fmt.Sprintf(`ExecStart = "/bin/echo 127.0.0.1:%d"`, netEchoPort),
			"in-www.service":  fmt.Sprintf(`ExecStart = "%s --listen vsock:%d --connect tcp:127.0.0.1:%d"`, fwd, netWWWPort, netWWWPort),
			"in-echo.service": fmt.Sprintf(`ExecStart = "%s --listen vsock:%d --connect tcp:127.0.0.1:%d --max-connections 100"`, fwd, netEchoPort, netEchoPort),
			"out-ok.service": fmt.Sprintf(`ExecStart = "%s --listen tcp:127.0.0.1:8000 --connect vsock:$HOSTCID:%d --target %s"`,
				fwd, netEgressPort, helloAddr),
			"out-bad.service": fmt.Sprintf(`ExecStart = "%s --listen tcp:127.0.0.1:8001 --connect vsock:$HOSTCID:%d --target %s"`,
				fwd, netEgressPort, otherAddr),
			"fetch.service.disabled":    "ExecStart = \"/bin/busybox wget -q -O - http://127.0.0.1:8000/\"\nRestart = \"no\"",
			"fetchbad.service.disabled": "ExecStart = \"/bin/busybox wget -q -O - http://127.0.0.1:8001/\"\nRestart = \"no\"",
		},
	}
	e := soloBoot(t, "network", g)
	t.Cleanup(func() { e.stop() }) // after explain's cleanup, which needs the VM
	e.explain(t, "lo", "www", "echo", "in-www", "in-echo", "out-ok", "out-bad", "fetch", "fetchbad")

	t.Run("loopback_before_the_first_service", func(t *testing.T) {
		lines := strings.Join(e.waitLog(t, "lo", "::1/128"), "\n")
		for _, want := range []string{"LOOPBACK,UP", "inet 127.0.0.1/8", "inet6 ::1/128"} {
			if !strings.Contains(lines, want) {
				t.Errorf("ip addr show dev lo in the first service lacks %q:\n%s", want, lines)
			}
		}
		console := e.vm.Console()
		up, first := strings.Index(console, "boot: loopback lo up"), strings.Index(console, "supervise: lo: started")
		if up < 0 || first < 0 || up > first {
			t.Errorf("loopback line at %d, first service start at %d; want loopback first:\n%s", up, first, e.initLog())
		}
	})

	wwwAddr := freeTCP(t)
	startHost(t, bin.initctl, "forward", "--listen", "tcp:"+wwwAddr, "--connect", e.vsockEndpoint(netWWWPort))
	t.Run("ingress_to_a_loopback_server", func(t *testing.T) {
		var body string
		eventually(t, waitTimeout, "busybox httpd through ingress", func() (bool, string) {
			// An attempt that gets no answer for a stall interval is a
			// hang; a refused one is retried at once.
			r, err := (&http.Client{Timeout: waitTimeout}).Get("http://" + wwwAddr + "/index.html")
			if err != nil {
				return false, err.Error()
			}
			defer r.Body.Close()
			b, _ := io.ReadAll(r.Body)
			body = string(b)
			return r.StatusCode == 200, fmt.Sprintf("%s %q", r.Status, body)
		})
		if body != "served by busybox httpd inside the enclave\n" {
			t.Errorf("body %q", body)
		}
	})

	parent := startHost(t, bin.initctl, "forward", "--listen", e.hostListen(netEgressPort), "--allow", allow)
	t.Run("egress_to_a_host_server", func(t *testing.T) {
		e.run(t, "fetch")
		e.waitLog(t, "fetch", "hello from the host")
	})
	t.Run("egress_refused_off_the_allow_list", func(t *testing.T) {
		// fetchbad fails at once: whether init answers the start while it
		// runs or after it exited with code 1 depends on the machine's
		// speed, and both answers are right.
		e.do(t, wire.Request{Kind: wire.KindServiceEnable, Name: "fetchbad"})
		r, err := e.try(wire.Request{Kind: wire.KindServiceStart, Name: "fetchbad"})
		if err != nil {
			t.Fatalf("ServiceStart fetchbad: %v", err)
		}
		if r.Kind == wire.KindError && !strings.Contains(r.Message, "exited with code 1") {
			t.Fatalf("ServiceStart fetchbad: init answered an error other than its exit: %s", r.Message)
		}
		e.waitState(t, "fetchbad", "exited")
		if lines := e.logs(t, "fetchbad", 100); containsLine(lines, "must not be reached") {
			t.Errorf("the refused target answered:\n%s", strings.Join(lines, "\n"))
		}
		want := fmt.Sprintf("target %q is not on the allow-list %s", otherAddr, allow)
		eventually(t, waitTimeout, "the refusal in the parent's log", func() (bool, string) {
			return strings.Contains(parent.log.String(), want), parent.log.String()
		})
	})

	echoAddr := freeTCP(t)
	startHost(t, bin.initctl, "forward", "--listen", "tcp:"+echoAddr, "--connect", e.vsockEndpoint(netEchoPort), "--max-connections", "100")
	eventually(t, waitTimeout, "the echo server through ingress", func() (bool, string) {
		err := echoRoundTrip(echoAddr, []byte("ping"))
		return err == nil, fmt.Sprint(err)
	})
	t.Run("half_close", func(t *testing.T) {
		// The echo ends its stream only after the client's end of stream
		// has crossed both forwarders and the guest's TCP.
		if err := echoRoundTrip(echoAddr, []byte("half-closed but still reading\n")); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("50_concurrent_1MB_both_ways", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan error, 50)
		for i := range 50 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				data := make([]byte, 1<<20)
				rand.Read(data)
				if err := echoRoundTrip(echoAddr, data); err != nil {
					errs <- fmt.Errorf("connection %d: %w", i, err)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
	t.Run("peer_disappears_mid_stream", func(t *testing.T) {
		c, err := net.Dial("tcp", echoAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		wc := wait.NewConn(c)
		go wc.Write(make([]byte, 4<<20))
		// Once data flows, the app in the enclave goes away: stopping the
		// service kills it mid-stream.
		if _, err := io.ReadFull(wc, make([]byte, 1024)); err != nil {
			t.Fatalf("no echo before the app died: %v", err)
		}
		e.do(t, wire.Request{Kind: wire.KindServiceStop, Name: "echo"})
		if _, err := io.Copy(io.Discard, wc); err != nil && isTimeout(err) {
			t.Fatalf("the stream did not end after the app in the enclave died: %v", err)
		}
		// The forwarders are not stuck: the restarted app is reachable.
		e.do(t, wire.Request{Kind: wire.KindServiceStart, Name: "echo"})
		eventually(t, waitTimeout, "the restarted echo server", func() (bool, string) {
			err := echoRoundTrip(echoAddr, []byte("again"))
			return err == nil, fmt.Sprint(err)
		})
	})
}

func writeHostFile(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// echoRoundTrip sends data to the echo server at addr, half-closes, and
// checks that exactly data comes back (by SHA-256) before the end of stream.
// The exchange lives as long as bytes move (wait.Conn): 50 of them at once
// through the forwarders and a guest under TCG are slow, not stuck.
func echoRoundTrip(addr string, data []byte) error {
	c, err := net.DialTimeout("tcp", addr, waitTimeout)
	if err != nil {
		return err
	}
	defer c.Close()
	return forwardtest.RoundTrip(wait.NewConn(c), data)
}

// tutorialCap bounds the whole tutorial (two image builds and boots, on a
// machine ten times slower than the CI machine).
const tutorialCap = 30 * time.Minute

// TestAppsTutorial runs docs/apps.md: every ```sh block, in order, as one
// bash script, with BIN holding init, initctl and initramfs as "make build"
// leaves them. As root it runs in a network namespace of its own, so that
// the page's fixed host ports cannot meet anything else on the machine.
func TestAppsTutorial(t *testing.T) {
	needVM(t)
	busyboxPath(t)
	stopShared()
	page, err := os.ReadFile("../docs/apps.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := shBlocks(string(page))
	if len(blocks) < 5 {
		t.Fatalf("docs/apps.md has %d sh blocks; the tutorial is missing", len(blocks))
	}
	dir := t.TempDir()
	binDir := filepath.Join(dir, "bin")
	if err := os.Mkdir(binDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{bin.init, bin.initctl} {
		data, err := os.ReadFile(b)
		if err != nil {
			t.Fatal(err)
		}
		writeHostFile(t, filepath.Join(binDir, filepath.Base(b)), string(data))
		os.Chmod(filepath.Join(binDir, filepath.Base(b)), 0o755)
	}
	goBuild(t, filepath.Join(binDir, "initramfs"), "./initramfs")
	work := filepath.Join(dir, "myapp")
	if err := os.Mkdir(work, 0o755); err != nil {
		t.Fatal(err)
	}
	script := "set -euo pipefail\nBIN=" + binDir + "\ncd " + work + "\n" + strings.Join(blocks, "\n")
	// The script lives as long as its output or its VM's console grows;
	// between them only a boot is silent for long.
	var out wait.Buffer
	ctx, cancel := wait.Limits{Stall: wait.BootStall, Cap: tutorialCap, Progress: func() int64 {
		fi, _ := os.Stat(filepath.Join(work, "console.log"))
		if fi == nil {
			return out.Len()
		}
		return out.Len() + fi.Size()
	}}.Context(context.Background(), "the tutorial")
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if os.Geteuid() == 0 {
		cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWNET
		cmd.Args = []string{"bash", "-c", "busybox ip link set lo up && exec bash -c \"$0\"", script}
	}
	// The script's own trap stops what it started; if the test gives up
	// first, its whole process group (this test started it) goes.
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	if err != nil {
		if c := context.Cause(ctx); c != nil && ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", err, c)
		}
		boot, _ := os.ReadFile(filepath.Join(work, "boot.log"))
		console, _ := os.ReadFile(filepath.Join(work, "console.log"))
		t.Fatalf("the tutorial failed: %v\n=== output\n%s\n=== boot.log\n%s\n=== console.log (tail)\n%s", err, out.String(), boot, tail(string(console), 60))
	}
	for _, want := range []string{"hello from busybox httpd in the enclave", "hello from the host", "is not on the allow-list"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("tutorial output lacks %q:\n%s", want, out.String())
		}
	}
}

// shBlocks returns the contents of the ```sh fenced blocks of a Markdown page.
func shBlocks(page string) []string {
	var blocks []string
	var cur []string
	in := false
	for _, line := range strings.Split(page, "\n") {
		switch {
		case !in && strings.TrimSpace(line) == "```sh":
			in, cur = true, nil
		case in && strings.TrimSpace(line) == "```":
			in = false
			blocks = append(blocks, strings.Join(cur, "\n"))
		case in:
			cur = append(cur, line)
		}
	}
	return blocks
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
