package control_test

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

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
	follow := []byte(`{"ServiceLogsFollow":{"name":"webapp","lines":0}}`)
	first, err := net.Dial("unix", ts.path)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	if _, err := first.Write(follow); err != nil {
		t.Fatal(err)
	}
	// The first follow may not hold its slot yet when the second asks;
	// then the second becomes the follower: drop it and ask again. A
	// follower gets no answer at all, so each try waits 300 ms for one: a
	// refusal slower than that is tried again, never a failure.
	wait.For(t, "a second follow with MaxConns 4 to get the follow limit", func() (bool, string) {
		c, err := net.Dial("unix", ts.path)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write(follow)
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		var second wire.Response
		if err := json.NewDecoder(c).Decode(&second); err != nil {
			return false, err.Error()
		}
		return second.Kind == "Error" && strings.Contains(second.Message, "too many logs -f"), fmt.Sprintf("%+v", second)
	})
	if r := decodeResp(t, raw(t, ts.path, []byte(`"Ping"`))); r.Kind != "Pong" {
		t.Fatalf("ping beside a follow: %+v", r)
	}
}
