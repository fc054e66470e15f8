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

	. "github.com/nitroinit/nitroinit/internal/control"
	"github.com/nitroinit/nitroinit/internal/control/controltest"
	"github.com/nitroinit/nitroinit/internal/wait"
	"github.com/nitroinit/nitroinit/internal/wire"
)

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
// once); then it frees the slot and reads the answers.
func (o oneSlot) queued(t *testing.T, warm, reqs [][]byte) [][]byte {
	t.Helper()
	for _, req := range warm {
		raw(t, o.path, req)
	}
	dial := func() *wait.Conn {
		c, err := net.Dial("unix", o.path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return wait.NewConn(c)
	}
	hold := dial()
	var conns []*wait.Conn
	for _, req := range reqs {
		c := dial()
		c.Write(req) // may fail where the policy refuses: see below
		conns = append(conns, c)
	}
	// Where the policy refuses the silent connection at once, this write
	// fails, or lands after the refusal and makes the close a reset: its
	// answer is not what the caller asked about, so it is not read.
	ping, _ := wire.Request{Kind: wire.KindPing}.MarshalJSON()
	hold.Write(ping)
	var out [][]byte
	for _, c := range conns {
		// Where the policy refuses, init answers and closes perhaps before
		// the request is written, so the write may fail and the close be
		// a reset: what was read is the answer, and the caller checks it.
		var b bytes.Buffer
		if _, err := b.ReadFrom(c); err != nil {
			t.Logf("reading an answer: %v", err)
		}
		out = append(out, b.Bytes())
	}
	return out
}

// TestAnswerAtOnce checks that requests the accept loop answers itself
// (a status, complete when init accepts the connection) and those it hands
// on to a worker with what it read get the same bytes as from a server
// whose handler has no status versions, where workers answer everything.
func TestAnswerAtOnce(t *testing.T) {
	plain := startServer(t, nil)
	be := current{&versioned{Handler: controltest.New()}}
	st, _ := plain.be.ServiceStatus("webapp")
	be.set(1, false, st.RestartCount)
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
	atOnce := serveOneSlot(t, Config{Handler: be}, TransportUnix).queued(t, reqs, reqs)
	for i, tc := range cases {
		want := raw(t, plain.path, tc.req)
		if len(want) == 0 {
			t.Fatalf("%s: no answer from the plain server", tc.name)
		}
		if got := atOnce[i]; !bytes.Equal(got, want) {
			t.Errorf("%s: got\n%.300s\nwant\n%.300s", tc.name, got, want)
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
// accept loop cannot write at once, because it is larger than the socket
// buffer, is finished by a worker.
func TestAnswerAtOnceLargerThanTheSocketBuffer(t *testing.T) {
	be := bigStatus{current{&versioned{Handler: controltest.New()}}}
	st, _, _, _ := be.ServiceStatusAt("webapp")
	want, err := wire.Response{Kind: wire.KindServiceStatus, Status: &st}.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	req, _ := wire.Request{Kind: wire.KindServiceStatus, Name: "webapp"}.MarshalJSON()
	for i, got := range serveOneSlot(t, Config{Handler: be}, TransportUnix).queued(t, [][]byte{req}, [][]byte{req, req, req}) {
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
	for i, got := range serveOneSlot(t, cfg, TransportUnix).queued(t, nil, [][]byte{status, ping, status, ping}) {
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
// path for peers that are not privileged: vsock peers, here served on a
// Unix socket, whose CID the server cannot learn.
func TestAnswerAtOnceReadOnlyPeer(t *testing.T) {
	status, _ := wire.Request{Kind: wire.KindServiceStatus, Name: "webapp"}.MarshalJSON()
	start, _ := wire.Request{Kind: wire.KindServiceStart, Name: "webapp"}.MarshalJSON()
	readOnly := serveOneSlot(t, Config{Handler: current{&versioned{Handler: controltest.New()}}, Policy: Policy{VsockClasses: []Class{ClassRead}}}, TransportVsock)
	for i, got := range readOnly.queued(t, [][]byte{status}, [][]byte{status, start, status}) {
		want := `{"ServiceStatus":{"status":{"name":"webapp"`
		if i == 1 {
			want = `permission denied: \"manage\" requests over vsock`
		}
		if !bytes.Contains(got, []byte(want)) {
			t.Errorf("read-only peer, request %d: %.300s, want containing %s", i, got, want)
		}
	}
	// No peer of this server may send anything, so nobody fills its
	// cache; the accept loop turns the peer over to a worker before it
	// reads, and the worker refuses it.
	unlisted := serveOneSlot(t, Config{Handler: current{&versioned{Handler: controltest.New()}}, Policy: Policy{VsockCIDs: []uint32{3}}}, TransportVsock)
	for i, got := range unlisted.queued(t, nil, [][]byte{status, status}) {
		if want := `vsock peer CID unknown is not in control.permissions.vsock.cids`; !bytes.Contains(got, []byte(want)) {
			t.Errorf("unlisted peer, request %d: %.300s, want containing %s", i, got, want)
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
		for i, got := range srv.queued(t, nil, [][]byte{req, req}) {
			if !bytes.Contains(got, []byte(want)) {
				t.Errorf("%s, client %d: %.300s, want %s", step.name, i, got, want)
			}
		}
	}
}
