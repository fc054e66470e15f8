package forward

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nitroinit/nitroinit/internal/forward/forwardtest"
	"github.com/nitroinit/nitroinit/internal/hvsock"
	"github.com/nitroinit/nitroinit/internal/wait"
)

func TestParseEndpoint(t *testing.T) {
	good := []struct {
		in   string
		want Endpoint
	}{
		{"tcp:127.0.0.1:80", Endpoint{Kind: KindTCP, Addr: "127.0.0.1:80"}},
		{"127.0.0.1:80", Endpoint{Kind: KindTCP, Addr: "127.0.0.1:80"}},
		{"tcp:[::1]:443", Endpoint{Kind: KindTCP, Addr: "[::1]:443"}},
		{"vsock:3:8000", Endpoint{Kind: KindVsock, CID: 3, Port: 8000}},
		{"vsock:8000", Endpoint{Kind: KindVsock, CID: cidAny, Port: 8000}},
		{"hvsock:/run/vm.sock:5000", Endpoint{Kind: KindHybrid, Addr: "/run/vm.sock", Port: 5000}},
	}
	for _, tc := range good {
		got, err := ParseEndpoint("--listen", tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseEndpoint(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
		if again, err := ParseEndpoint("x", got.String()); err != nil || again != got {
			t.Errorf("round trip of %q through %q: %+v, %v", tc.in, got.String(), again, err)
		}
	}
	bad := []struct{ in, msg string }{
		{"nonsense", "use tcp:HOST:PORT"},
		{"vsock:3:x", `bad port "x"`},
		{"vsock:a:80", `bad CID "a"`},
		{"vsock:1:2:3", "use tcp:HOST:PORT"},
		{"hvsock:5000", "want hvsock:UNIX_SOCKET:PORT"},
		{"tcp:localhost", "use tcp:HOST:PORT"},
		{"tcp:localhost:http", `bad port "http"`},
	}
	for _, tc := range bad {
		_, err := ParseEndpoint("--connect", tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.msg) ||
			!strings.Contains(err.Error(), "--connect") || !strings.Contains(err.Error(), fmt.Sprintf("%q", tc.in)) {
			t.Errorf("ParseEndpoint(%q) error %v; want one naming --connect, the value and %q", tc.in, err, tc.msg)
		}
	}
}

func TestParseAllowList(t *testing.T) {
	a, err := ParseAllowList("allow.yaml", []byte(`
allowlist:
- {address: kms.us-east-1.amazonaws.com, port: 443}
- address: 127.0.0.1
  port: 8080
- {address: "::1", port: 80}
`))
	if err != nil {
		t.Fatal(err)
	}
	for target, want := range map[string]bool{
		"kms.us-east-1.amazonaws.com:443": true,
		"KMS.us-east-1.amazonaws.com:443": true,
		"kms.us-east-1.amazonaws.com:80":  false,
		"127.0.0.1:8080":                  true,
		"[::1]:80":                        true,
		"127.0.0.2:8080":                  false,
		"garbage":                         false,
	} {
		if got := a.Allowed(target); got != want {
			t.Errorf("Allowed(%q) = %v, want %v", target, got, want)
		}
	}
	bad := []struct{ yaml, want string }{
		{"allowlist:\n- {address: a.example, port: 99999}\n", `allow.yaml:2: "99999": not a TCP port`},
		{"allowlist:\n- {address: a.example, port: 443}\n- {address: b.example, prt: 1}\n", `allow.yaml:3: "prt": unknown key`},
		{"allowlist:\n- {port: 443}\n", `allow.yaml:2: "": entry has no address`},
		{"allow:\n- {address: a, port: 1}\n", `allow.yaml:1: "allow": unknown key`},
		{"allowlist: everything\n", `allow.yaml:1: "everything": want a list`},
		{"allowlist:\n- {address: 'a b', port: 1}\n", `allow.yaml:2: "a b": not a host name`},
		{"", "empty"},
		{"allowlist: [\n", "not valid YAML"},
	}
	for _, tc := range bad {
		_, err := ParseAllowList("allow.yaml", []byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseAllowList(%q) error %v, want %q", tc.yaml, err, tc.want)
		}
	}
}

func TestListenErrorNamesAddress(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	e := Endpoint{Kind: KindTCP, Addr: l.Addr().String()}
	_, err = Listen(e)
	if err == nil || !strings.Contains(err.Error(), l.Addr().String()) || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("Listen on a used port: %v; want the address and the reason", err)
	}
}

// logs collects a forwarder's log lines.
type logs struct {
	mu    sync.Mutex
	lines []string
}

func (l *logs) logf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
}

func (l *logs) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// start runs a forwarder from a fresh listener to cfg's target and returns
// the address to dial.
func start(t *testing.T, ln net.Listener, cfg Config) *Forwarder {
	t.Helper()
	cfg.Listener = ln
	f, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return f
}

func tcpListener(t *testing.T) net.Listener {
	t.Helper()
	l, err := Listen(Endpoint{Kind: KindTCP, Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func tcpTarget(addr string) *Endpoint { return &Endpoint{Kind: KindTCP, Addr: addr} }

// TestConcurrentChecksummed forwards 50 connections at once, each carrying
// 1 MB both ways, TCP to TCP (spliced) and through a Unix socket (the hybrid
// vsock listening side).
func TestConcurrentChecksummed(t *testing.T) {
	target := forwardtest.TCPServer(t, forwardtest.Echo)
	unixPath := filepath.Join(t.TempDir(), "vm.sock")
	hybrid := Endpoint{Kind: KindHybrid, Addr: unixPath, Port: 8000}
	hl, err := Listen(hybrid)
	if err != nil {
		t.Fatal(err)
	}
	tl := tcpListener(t)
	start(t, tl, Config{Target: tcpTarget(target)})
	start(t, hl, Config{Target: tcpTarget(target)})
	for _, tc := range []struct {
		name string
		dial func() (net.Conn, error)
	}{
		{"tcp", func() (net.Conn, error) { return net.Dial("tcp", tl.Addr().String()) }},
		{"unix", func() (net.Conn, error) { return net.Dial("unix", hvsock.ListenPath(unixPath, 8000)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var wg sync.WaitGroup
			errs := make(chan error, 50)
			for range 50 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					c, err := tc.dial()
					if err != nil {
						errs <- err
						return
					}
					defer c.Close()
					errs <- forwardtest.RoundTrip(c, randomBytes(1<<20))
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Error(err)
				}
			}
		})
	}
}

// TestIngressHybridHalfClose forwards TCP to a guest port through the hybrid
// handshake. The guest answers only after the client's end of stream, so the
// client's half-close must travel through, and the answer must still come
// back.
func TestIngressHybridHalfClose(t *testing.T) {
	path := forwardtest.HybridDevice(t, func(r io.Reader, c *net.UnixConn) {
		data, _ := io.ReadAll(r)
		fmt.Fprintf(c, "got %d bytes", len(data))
		c.CloseWrite()
	})
	l := tcpListener(t)
	start(t, l, Config{Target: &Endpoint{Kind: KindHybrid, Addr: path, Port: 8080}})
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(make([]byte, 12345))
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "got 12345 bytes" {
		t.Fatalf("answer %q, %v; want \"got 12345 bytes\"", got, err)
	}
}

// TestEgressAllowList runs both egress halves: the enclave side names the
// target, the parent side dials it only when the allow-list has it, and
// logs refusals at a bounded rate.
func TestEgressAllowList(t *testing.T) {
	allowed := forwardtest.TCPServer(t, func(c net.Conn) { io.WriteString(c, "hello from outside") })
	other := forwardtest.TCPServer(t, func(c net.Conn) { io.WriteString(c, "must not be reached") })
	allow, err := ParseAllowList("allow.yaml", []byte("allowlist:\n- {address: 127.0.0.1, port: "+portOf(allowed)+"}\n"))
	if err != nil {
		t.Fatal(err)
	}
	unixPath := filepath.Join(t.TempDir(), "vm.sock")
	parentSide := Endpoint{Kind: KindHybrid, Addr: unixPath, Port: 8443}
	pl, err := Listen(parentSide)
	if err != nil {
		t.Fatal(err)
	}
	var plog logs
	parent := start(t, pl, Config{Allow: allow, AllowFile: "allow.yaml", Logf: plog.logf})
	// The enclave side would dial vsock:3:8443; here it dials the Unix
	// socket where the hybrid device delivers that port.
	toParent := Config{
		Target: &Endpoint{Kind: KindHybrid, Addr: unixPath, Port: 8443},
		Dial: func(ctx context.Context, e Endpoint) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", hvsock.ListenPath(e.Addr, e.Port))
		},
	}
	goodCfg, badCfg := toParent, toParent
	goodCfg.SendTarget, badCfg.SendTarget = allowed, other
	good, bad := tcpListener(t), tcpListener(t)
	start(t, good, goodCfg)
	start(t, bad, badCfg)

	if got := fetch(t, good.Addr().String()); got != "hello from outside" {
		t.Errorf("allowed target: got %q", got)
	}
	for range 30 {
		if got := fetch(t, bad.Addr().String()); got != "" {
			t.Fatalf("refused target: got %q", got)
		}
	}
	log := plog.String()
	if !strings.Contains(log, fmt.Sprintf("target %q is not on the allow-list allow.yaml", other)) {
		t.Errorf("refusal not logged:\n%s", log)
	}
	if n := strings.Count(log, "not on the allow-list"); n > 10 {
		t.Errorf("%d refusal lines for 30 refusals; want at most 10 per period", n)
	}
	if s := parent.Stats(); s.Refused != 30 || s.Total != 1 {
		t.Errorf("parent stats %+v, want 30 refused and 1 forwarded", s)
	}
	// A fixed target off the list is refused when the forwarder is made.
	_, err = New(Config{Listener: pl, Target: tcpTarget(other), Allow: allow, AllowFile: "allow.yaml"})
	if err == nil || !strings.Contains(err.Error(), other) || !strings.Contains(err.Error(), "allow.yaml") {
		t.Errorf("New with a target off the list: %v", err)
	}
}

func portOf(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

func fetch(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b, _ := io.ReadAll(wait.NewConn(c))
	return string(b)
}

// TestLimitAndSlowPeer fills the connection limit with a peer that never
// reads: the next connection is refused at once, and a second forwarder's
// clients are not slowed down, and the stuck one ends by its idle timeout.
func TestLimitAndSlowPeer(t *testing.T) {
	stuck := make(chan struct{})
	t.Cleanup(func() { close(stuck) })
	sink := forwardtest.TCPServer(t, func(c net.Conn) { <-stuck }) // never reads
	l := tcpListener(t)
	var flog logs
	f := start(t, l, Config{Target: tcpTarget(sink), MaxConns: 1, IdleTimeout: 2 * time.Second, Logf: flog.logf})
	held, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	// Write until the buffers between here and the sink are full.
	go held.Write(make([]byte, 64<<20))
	waitActive(t, f, 1)

	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	// Refused at once: the read ends with the connection, not by the
	// stall interval (which fails it as a timeout).
	if n, err := wait.NewConn(c).Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("second connection over the limit: read %d bytes, %v; want it closed at once", n, err)
	}
	c.Close()
	if !strings.Contains(flog.String(), "connections already forwarded (the limit)") {
		t.Errorf("limit refusal not logged: %s", flog.String())
	}

	echoAddr := forwardtest.TCPServer(t, forwardtest.Echo)
	l2 := tcpListener(t)
	start(t, l2, Config{Target: tcpTarget(echoAddr)})
	c2, err := net.Dial("tcp", l2.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if err := forwardtest.RoundTrip(c2, randomBytes(1<<20)); err != nil {
		t.Fatal(err)
	}
	// The stuck connection ends by its idle timeout and frees the slot.
	waitActive(t, f, 0)
}

// TestPeerDisappears has the target reset its connection mid-stream: the
// client sees the stream end and the forwarder lets go of it.
func TestPeerDisappears(t *testing.T) {
	target := forwardtest.TCPServer(t, func(c net.Conn) {
		io.CopyN(c, c, 100<<10)
		c.(*net.TCPConn).SetLinger(0) // close with a reset
	})
	l := tcpListener(t)
	f := start(t, l, Config{Target: tcpTarget(target)})
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	go c.Write(make([]byte, 10<<20))
	wc := wait.NewConn(c)
	n, _ := io.Copy(io.Discard, wc)
	if n > 10<<20 {
		t.Errorf("read %d bytes", n)
	}
	if _, err := wc.Read(make([]byte, 1)); isTimeout(err) {
		t.Fatalf("the client's stream did not end after the target reset: %v", err)
	}
	waitActive(t, f, 0)
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// waitActive waits until f forwards n connections.
func waitActive(t *testing.T, f *Forwarder, n int64) {
	t.Helper()
	wait.For(t, fmt.Sprintf("%d active connections", n), func() (bool, string) {
		st := f.Stats()
		return st.Active == n, fmt.Sprintf("%+v", st)
	})
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestListenHybridInUse(t *testing.T) {
	e := Endpoint{Kind: KindHybrid, Addr: filepath.Join(t.TempDir(), "vm.sock"), Port: 8443}
	l, err := Listen(e)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := Listen(e); err == nil || !strings.Contains(err.Error(), "another program listens there") {
		t.Fatalf("second Listen on %s: %v", e, err)
	}
	// A stale socket file (its listener gone without removing it) is replaced.
	stale := Endpoint{Kind: KindHybrid, Addr: filepath.Join(t.TempDir(), "vm.sock"), Port: 1}
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: hvsock.ListenPath(stale.Addr, stale.Port), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ul.SetUnlinkOnClose(false)
	ul.Close()
	l2, err := Listen(stale)
	if err != nil {
		t.Fatalf("Listen over a stale socket file: %v", err)
	}
	l2.Close()
}
