package control_test

import (
	"bufio"
	"context"
	"fmt"
	. "github.com/nitroinit/nitroinit/internal/control"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nitroinit/nitroinit/internal/wait"
	"github.com/nitroinit/nitroinit/internal/wire"
)

// waitFor waits until cond holds (internal/wait: a plain stall interval,
// as cond has nothing to describe).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	wait.For(t, what, wait.Bool(cond))
}

// TestLogsStream stands in for the host with Unix listeners, one per port,
// and checks lines flow, two services stream at once, Stop ends them, and a
// host that goes away is cleaned up without touching the service.
func TestLogsStream(t *testing.T) {
	dir := t.TempDir()
	hostPath := func(port uint32) string { return filepath.Join(dir, fmt.Sprintf("host_%d", port)) }
	ts := startServer(t, func(c *Config) {
		c.DialVsock = func(ctx context.Context, cid, port uint32) (net.Conn, error) {
			if cid != 2 {
				return nil, fmt.Errorf("test host is CID 2, not %d", cid)
			}
			var d net.Dialer
			return d.DialContext(ctx, "unix", hostPath(port))
		}
	})
	ts.be.SetActive("worker", true)
	listen := func(port uint32) <-chan net.Conn {
		l, err := net.Listen("unix", hostPath(port))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		ch := make(chan net.Conn, 1)
		go func() {
			c, err := l.Accept()
			if err == nil {
				ch <- c
			}
		}()
		return ch
	}
	webCh, workCh := listen(9100), listen(9101)
	for _, tc := range []struct {
		name string
		port uint32
	}{{"webapp", 9100}, {"worker", 9101}} {
		r := ts.do(t, wire.Request{Kind: wire.KindServiceLogsStream, Name: tc.name, VsockCID: 2, VsockPort: tc.port})
		if r.Kind != wire.KindLogsStreamStarted || r.Service != tc.name || r.VsockPort != tc.port || r.VsockCID != 2 {
			t.Fatalf("stream %s: %+v", tc.name, r)
		}
	}
	if r := ts.do(t, wire.Request{Kind: wire.KindServiceLogsStream, Name: "webapp", VsockCID: 2, VsockPort: 9100}); r.Kind != wire.KindError || !strings.Contains(r.Message, "already active") {
		t.Errorf("second stream on the same port: %+v", r)
	}
	if r := ts.do(t, wire.Request{Kind: wire.KindServiceLogsStream, Name: "webapp", VsockCID: 2, VsockPort: 9199}); r.Kind != wire.KindError || !strings.Contains(r.Message, "Failed to connect to VSock 2:9199") {
		t.Errorf("stream to a port nobody listens on: %+v", r)
	}
	if r := ts.do(t, wire.Request{Kind: wire.KindServiceLogsStream, Name: "nosuch", VsockCID: 2, VsockPort: 9100}); r.Kind != wire.KindError || r.Message != "Service 'nosuch' not found" {
		t.Errorf("stream of unknown service: %+v", r)
	}
	webC, workC := <-webCh, <-workCh
	defer webC.Close()
	web, work := bufio.NewReader(webC), bufio.NewReader(workC)
	ts.be.Publish("webapp", "web line 1")
	ts.be.Publish("worker", "work line 1")
	ts.be.Publish("webapp", "web line 2")
	for _, want := range []struct {
		r    *bufio.Reader
		line string
	}{{web, "web line 1\n"}, {web, "web line 2\n"}, {work, "work line 1\n"}} {
		got, err := want.r.ReadString('\n')
		if err != nil || got != want.line {
			t.Errorf("read %q, %v; want %q", got, err, want.line)
		}
	}
	if n := ts.srv.ActiveStreams(); n != 2 {
		t.Errorf("ActiveStreams = %d, want 2", n)
	}

	// Stop closes the webapp stream (the host sees EOF) and leaves worker.
	if r := ts.do(t, wire.Request{Kind: wire.KindServiceLogsStreamStop, Name: "webapp"}); r.Kind != wire.KindSuccess {
		t.Errorf("stop: %+v", r)
	}
	if _, err := web.ReadString('\n'); err == nil {
		t.Error("webapp stream still open after stop")
	}
	if n := ts.be.OpenSubs("webapp"); n != 0 {
		t.Errorf("webapp has %d open subscriptions after stop", n)
	}

	// Two streams of one service on two ports: a stop naming a port ends
	// only that one (the other terminal's stream goes on).
	aCh, bCh := listen(9200), listen(9201)
	for _, port := range []uint32{9200, 9201} {
		if r := ts.do(t, wire.Request{Kind: wire.KindServiceLogsStream, Name: "webapp", VsockCID: 2, VsockPort: port}); r.Kind != wire.KindLogsStreamStarted {
			t.Fatalf("stream to %d: %+v", port, r)
		}
	}
	aC, bC := <-aCh, <-bCh
	defer aC.Close()
	defer bC.Close()
	if r := ts.do(t, wire.Request{Kind: wire.KindServiceLogsStreamStop, Name: "webapp", VsockPort: 9200}); r.Kind != wire.KindSuccess {
		t.Errorf("stop of port 9200: %+v", r)
	}
	ts.be.Publish("webapp", "after stop")
	if got, err := bufio.NewReader(bC).ReadString('\n'); err != nil || got != "after stop\n" {
		t.Errorf("port 9201 after stopping 9200: %q, %v", got, err)
	}
	if _, err := bufio.NewReader(aC).ReadString('\n'); err == nil {
		t.Error("port 9200 still streaming after its stop")
	}
	ts.do(t, wire.Request{Kind: wire.KindServiceLogsStreamStop, Name: "webapp"})

	// The host goes away: the worker stream is cleaned up on its own, even
	// though the service writes nothing, and the service is untouched.
	workC.Close()
	waitFor(t, "worker stream cleanup", func() bool { return ts.srv.ActiveStreams() == 0 && ts.be.OpenSubs("worker") == 0 })
	for _, c := range ts.be.Calls() {
		t.Errorf("streaming touched the service: %s", c)
	}
}

// TestFollow checks ServiceLogsFollow: history, then live lines, each as a
// LogLine value, and that closing the connection ends the subscription.
func TestFollow(t *testing.T) {
	ts := startServer(t, nil)
	target := Target{Protocol: ProtocolUnix, UnixPath: ts.path}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan wire.Response, 10)
	done := make(chan error, 1)
	go func() {
		done <- Follow(ctx, target, wire.Request{Kind: wire.KindServiceLogsFollow, Name: "webapp", Lines: 1}, func(r wire.Response) error {
			got <- r
			return nil
		})
	}()
	next := func() wire.Response {
		var r wire.Response
		wait.For(t, "the next event", wait.Receive(got, &r))
		return r
	}
	if r := next(); r.Kind != wire.KindLogLine || r.Line != "[2026-01-01 10:00:01] ready" {
		t.Errorf("history event: %+v", r)
	}
	waitFor(t, "subscription", func() bool { return ts.be.OpenSubs("webapp") == 1 })
	ts.be.Publish("webapp", "live 1")
	if r := next(); r.Kind != wire.KindLogLine || r.Line != "live 1" || r.Missed != 0 {
		t.Errorf("live event: %+v", r)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Follow after cancel: %v", err)
	}
	waitFor(t, "subscription closed after the client left", func() bool { return ts.be.OpenSubs("webapp") == 0 })

	// An unknown service gets one Error and the stream ends.
	var events []wire.Response
	err := Follow(context.Background(), target, wire.Request{Kind: wire.KindServiceLogsFollow, Name: "nosuch", Lines: 5}, func(r wire.Response) error {
		events = append(events, r)
		return nil
	})
	if err != nil || len(events) != 1 || events[0].Kind != wire.KindError {
		t.Errorf("follow of unknown service: %v, %+v", err, events)
	}
}
