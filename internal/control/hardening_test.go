package control_test

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/nitroinit/nitroinit/internal/control"
	"github.com/nitroinit/nitroinit/internal/wait"
	"github.com/nitroinit/nitroinit/internal/wire"
)

// TestRefusedPIDs checks the PIDs that must never reach kill(2): init
// itself (as PID 1 or, in supervisor mode, its own PID), and numbers that
// the kernel's 32-bit pid_t would truncate into 1 or -1.
func TestRefusedPIDs(t *testing.T) {
	ts := startServer(t, nil)
	tests := []struct {
		pid  int64
		want string
	}{
		{1, "init itself"},
		{int64(os.Getpid()), "init itself"},
		{0, "Invalid PID"},
		{-5, "Invalid PID"},
		{4294967297, "Invalid PID"}, // would become kill(1, ...)
		{4294967295, "Invalid PID"}, // would become kill(-1, ...)
	}
	for _, kind := range []string{"ProcessKill", "ProcessStop", "ProcessRestart"} {
		for _, tt := range tests {
			body := fmt.Sprintf(`{"pid":%d}`, tt.pid)
			if kind == "ProcessKill" {
				body = fmt.Sprintf(`{"pid":%d,"signal":9}`, tt.pid)
			}
			r := decodeResp(t, raw(t, ts.path, []byte(fmt.Sprintf(`{%q:%s}`, kind, body))))
			if r.Kind != "Error" || !strings.Contains(r.Message, tt.want) {
				t.Errorf("%s pid %d: %+v, want an Error with %q", kind, tt.pid, r, tt.want)
			}
		}
	}
	for _, c := range ts.be.Calls() {
		if strings.Contains(c, "Signal") || strings.Contains(c, "Restart") {
			t.Errorf("a refused PID reached the handler: %s", c)
		}
	}
}

// TestFollowsCannotTakeEverySlot: logs -f holds its connection, so only a
// quarter of a socket's slots may be followers; other requests still get
// through.
func TestFollowsCannotTakeEverySlot(t *testing.T) {
	ts := startServer(t, func(c *control.Config) { c.MaxConns = 4 })
	ts.be.Publish("webapp", "before the follows")
	follow := []byte(`{"ServiceLogsFollow":{"name":"webapp","lines":1}}`)
	first, err := net.Dial("unix", ts.path)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	if _, err := first.Write(follow); err != nil {
		t.Fatal(err)
	}
	// A follow is sent its history once it holds its slot: after that
	// line, the second follow must find the slot taken, however slowly
	// the server got there.
	var line wire.Response
	if err := json.NewDecoder(wait.NewConn(first)).Decode(&line); err != nil || line.Kind != wire.KindLogLine {
		t.Fatalf("first follow: %+v, %v; want its history line", line, err)
	}
	second := decodeResp(t, raw(t, ts.path, follow))
	if second.Kind != "Error" || !strings.Contains(second.Message, "too many logs -f") {
		t.Fatalf("second follow with MaxConns 4: %+v, want the follow limit", second)
	}
	if r := decodeResp(t, raw(t, ts.path, []byte(`"Ping"`))); r.Kind != "Pong" {
		t.Fatalf("ping beside a follow: %+v", r)
	}
}
