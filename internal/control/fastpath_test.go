package control_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	. "github.com/nitroinit/nitroinit/internal/control"
	"github.com/nitroinit/nitroinit/internal/control/controltest"
	"github.com/nitroinit/nitroinit/internal/wire"
)

// sendSplit sends req in two writes, the second after a pause, so that
// init accepts the connection with only req[:split] in the socket buffer
// (usually: the answer must not depend on it), and reads the answer until
// init closes. A write may fail when init has answered what it had (a
// refusal, a request that is not JSON); the answer is read all the same.
// With readAfter it also waits before reading, so that init meets a full
// socket buffer when the answer is large.
func sendSplit(t *testing.T, path string, req []byte, split int, readAfter time.Duration) []byte {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if split > 0 {
		c.Write(req[:split])
		time.Sleep(20 * time.Millisecond)
	}
	c.Write(req[split:])
	time.Sleep(readAfter)
	var out bytes.Buffer
	if _, err := out.ReadFrom(c); err != nil {
		t.Fatalf("read the answer to %.60q: %v", req, err)
	}
	return out.Bytes()
}

// current adds StatusVersion to versioned: its version, unless the
// answer is live.
type current struct{ *versioned }

func (c current) StatusVersion(string) (uint64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.version, !c.live
}

// oneSlot is a server with one connection slot, for tests that need
// requests to be complete in the socket buffer when init accepts them.
type oneSlot struct{ path string }

func serveOneSlot(t *testing.T, cfg Config, tr Transport) oneSlot {
	t.Helper()
	path := filepath.Join(t.TempDir(), "init.sock")
	l, err := ListenUnix(path, false)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Logf == nil {
		cfg.Logf = t.Logf
	}
	cfg.MaxConns = 1
	srv := NewServer(cfg)
	go srv.Serve(context.Background(), l, tr)
	t.Cleanup(func() { srv.Close() })
	return oneSlot{path}
}

// queued sends the warm requests one after the other (to fill the status
// cache), then holds the slot with a silent connection while it connects
// and sends each of reqs, so that each is complete in its socket buffer
// when init accepts it (unless the policy refuses the silent one at
// once); then it frees the slot, waits readAfter and reads the answers.
func (o oneSlot) queued(t *testing.T, warm, reqs [][]byte, readAfter time.Duration) [][]byte {
	t.Helper()
	for _, req := range warm {
		sendSplit(t, o.path, req, 0, 0)
	}
	dial := func() net.Conn {
		c, err := net.Dial("unix", o.path)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(20 * time.Second))
		return c
	}
	hold := dial()
	defer hold.Close()
	var conns []net.Conn
	for _, req := range reqs {
		c := dial()
		defer c.Close()
		if _, err := c.Write(req); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	ping, _ := wire.Request{Kind: wire.KindPing}.MarshalJSON()
	hold.Write(ping)
	time.Sleep(readAfter)
	var out [][]byte
	for _, c := range append([]net.Conn{hold}, conns...) {
		var b bytes.Buffer
		if _, err := b.ReadFrom(c); err != nil {
			t.Fatal(err)
		}
		out = append(out, b.Bytes())
	}
	return out[1:]
}

// TestAnswerAtOnce checks that requests the accept loop answers itself
// (a status, complete when init accepts the connection) and those it hands
// on to a worker with what it read get the same bytes as from a server
// whose handler has no status versions, where workers answer everything,
// however the request is split.
func TestAnswerAtOnce(t *testing.T) {
	plain := startServer(t, nil)
	be := current{&versioned{Handler: controltest.New()}}
	st, _ := plain.be.ServiceStatus("webapp")
	be.set(1, false, st.RestartCount)
	fast := startServer(t, func(c *Config) { c.Handler = be })
	enc := func(r wire.Request) []byte {
		b, err := r.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	cases := []struct {
		name string
		req  []byte
	}{
		{"status", enc(wire.Request{Kind: wire.KindServiceStatus, Name: "webapp"})},
		{"status with blanks", []byte(` { "ServiceStatus" : { "name" : "webapp" } } `)},
		{"status of an unknown service", enc(wire.Request{Kind: wire.KindServiceStatus, Name: "nosuch"})},
		{"ping", enc(wire.Request{Kind: wire.KindPing})},
		{"list", enc(wire.Request{Kind: wire.KindListServices})},
		{"unknown request", []byte(`{"Nope":{"name":"webapp"}}`)},
		{"not JSON", []byte(`status webapp`)},
		{"longer than the first read", bytes.Replace(enc(wire.Request{Kind: wire.KindServiceStatus, Name: "webapp"}), []byte(`{"name"`), []byte(`{`+strings.Repeat(" ", 2000)+`"name"`), 1)},
	}
	var reqs [][]byte
	for _, tc := range cases {
		reqs = append(reqs, tc.req)
	}
	atOnce := serveOneSlot(t, Config{Handler: be}, TransportUnix).queued(t, reqs, reqs, 0)
	for i, tc := range cases {
		want := sendSplit(t, plain.path, tc.req, 0, 0)
		if len(want) == 0 {
			t.Fatalf("%s: no answer from the plain server", tc.name)
		}
		if got := atOnce[i]; !bytes.Equal(got, want) {
			t.Errorf("%s, complete when accepted: got\n%.300s\nwant\n%.300s", tc.name, got, want)
		}
		for _, split := range []int{0, 1, len(tc.req) / 2, len(tc.req) - 1} {
			if got := sendSplit(t, fast.path, tc.req, split, 0); !bytes.Equal(got, want) {
				t.Errorf("%s, split at %d: got\n%.300s\nwant\n%.300s", tc.name, split, got, want)
			}
		}
	}
}

// bigStatus answers status with an ExecStart longer than a socket buffer.
type bigStatus struct{ current }

func (b bigStatus) ServiceStatusAt(name string) (wire.ServiceStatus, uint64, bool, error) {
	st, v, live, err := b.current.ServiceStatusAt(name)
	st.ExecStart = strings.Repeat("x", 4<<20)
	return st, v, live, err
}

// TestAnswerAtOnceLargerThanTheSocketBuffer checks that an answer the
// accept loop cannot write at once, because the client does not read yet,
// is finished by a worker.
func TestAnswerAtOnceLargerThanTheSocketBuffer(t *testing.T) {
	be := bigStatus{current{&versioned{Handler: controltest.New()}}}
	st, _, _, _ := be.ServiceStatusAt("webapp")
	want, err := wire.Response{Kind: wire.KindServiceStatus, Status: &st}.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	req, _ := wire.Request{Kind: wire.KindServiceStatus, Name: "webapp"}.MarshalJSON()
	for i, got := range serveOneSlot(t, Config{Handler: be, IOTimeout: 5 * time.Second}, TransportUnix).queued(t, [][]byte{req}, [][]byte{req, req, req}, 50*time.Millisecond) {
		if !bytes.Equal(got, want) {
			t.Errorf("client %d: got %d bytes, want the %d of the encoded status", i, len(got), len(want))
		}
	}
}

// panicky panics when asked about a status.
type panicky struct{ *controltest.Handler }

func (panicky) StatusVersion(string) (uint64, bool) { panic("status exploded") }

func (panicky) ServiceStatusAt(string) (wire.ServiceStatus, uint64, bool, error) {
	panic("status exploded")
}

// TestAnswerAtOncePanic checks that a panic while answering in the accept
// loop costs the one connection, is logged, and the server goes on.
func TestAnswerAtOncePanic(t *testing.T) {
	var (
		mu   sync.Mutex
		logs strings.Builder
	)
	cfg := Config{Handler: panicky{controltest.New()}, Logf: func(format string, args ...any) {
		mu.Lock()
		fmt.Fprintf(&logs, format+"\n", args...)
		mu.Unlock()
	}}
	status, _ := wire.Request{Kind: wire.KindServiceStatus, Name: "webapp"}.MarshalJSON()
	ping, _ := wire.Request{Kind: wire.KindPing}.MarshalJSON()
	for i, got := range serveOneSlot(t, cfg, TransportUnix).queued(t, nil, [][]byte{status, ping, status, ping}, 0) {
		if i%2 == 0 && len(got) != 0 {
			t.Errorf("a status whose handler panics was answered: %.200q", got)
		}
		if i%2 == 1 && string(got) != `"Pong"` {
			t.Errorf("ping after a panic: %q", got)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(logs.String(), "panic in connection: status exploded") {
		t.Errorf("the panic was not logged; log:\n%s", logs.String())
	}
}

// TestAnswerAtOnceReadOnlyPeer checks the policy on the accept loop's
// path for a peer that is not privileged: a vsock peer, here served on a
// Unix socket, whose CID the server cannot learn.
func TestAnswerAtOnceReadOnlyPeer(t *testing.T) {
	status, _ := wire.Request{Kind: wire.KindServiceStatus, Name: "webapp"}.MarshalJSON()
	start, _ := wire.Request{Kind: wire.KindServiceStart, Name: "webapp"}.MarshalJSON()
	for _, tc := range []struct {
		name   string
		policy Policy
		req    []byte
		want   string
	}{
		{"read-only status", Policy{VsockClasses: []Class{ClassRead}}, status, `{"ServiceStatus":{"status":{"name":"webapp"`},
		{"read-only start", Policy{VsockClasses: []Class{ClassRead}}, start, `permission denied: \"manage\" requests over vsock`},
		{"unlisted status", Policy{VsockCIDs: []uint32{3}}, status, `vsock peer CID unknown is not in control.permissions.vsock.cids`},
	} {
		cfg := Config{Handler: current{&versioned{Handler: controltest.New()}}, Policy: tc.policy}
		for i, got := range serveOneSlot(t, cfg, TransportVsock).queued(t, [][]byte{status}, [][]byte{tc.req, tc.req}, 0) {
			if !bytes.Contains(got, []byte(tc.want)) {
				t.Errorf("%s, client %d: %.300s, want containing %s", tc.name, i, got, tc.want)
			}
		}
	}
}

// TestAnswerAtOnceSeesChanges checks that the accept loop never answers
// from the cache with a status of an older version, nor with a live one.
func TestAnswerAtOnceSeesChanges(t *testing.T) {
	be := current{&versioned{Handler: controltest.New()}}
	srv := serveOneSlot(t, Config{Handler: be}, TransportUnix)
	req, _ := wire.Request{Kind: wire.KindServiceStatus, Name: "webapp"}.MarshalJSON()
	for _, step := range []struct {
		name    string
		version uint64
		live    bool
	}{
		{"first", 1, false},
		{"new version", 2, false},
		{"live", 2, true},
		{"live again", 2, true},
		{"no longer live", 3, false},
	} {
		restart := int(step.version)*10 + len(step.name)
		be.set(step.version, step.live, restart)
		want := fmt.Sprintf(`"restart_count":%d,`, restart)
		// No warming: the cache holds the previous step's answer.
		for i, got := range srv.queued(t, nil, [][]byte{req, req}, 0) {
			if !bytes.Contains(got, []byte(want)) {
				t.Errorf("%s, client %d: %.300s, want %s", step.name, i, got, want)
			}
		}
	}
}
