package supervise

import (
	"errors"
	"syscall"
	"testing"
	"time"

	"github.com/nitroinit/nitroinit/internal/unit"
)

func TestShouldRestart(t *testing.T) {
	ok := Exit{}
	fail := Exit{Code: 3}
	term := Exit{Signal: syscall.SIGTERM}
	segv := Exit{Signal: syscall.SIGSEGV}
	timeout := Exit{TimedOut: true, Signal: syscall.SIGKILL}
	execErr := Exit{ExecErr: errors.New("no such file")}
	tests := []struct {
		policy unit.Restart
		exit   Exit
		want   bool
	}{
		{unit.RestartNo, ok, false}, {unit.RestartNo, fail, false}, {unit.RestartNo, segv, false},
		{unit.RestartAlways, ok, true}, {unit.RestartAlways, fail, true}, {unit.RestartAlways, segv, true},
		{unit.RestartOnSuccess, ok, true}, {unit.RestartOnSuccess, term, true}, {unit.RestartOnSuccess, fail, false}, {unit.RestartOnSuccess, segv, false},
		{unit.RestartOnFailure, ok, false}, {unit.RestartOnFailure, term, false}, {unit.RestartOnFailure, fail, true},
		{unit.RestartOnFailure, segv, true}, {unit.RestartOnFailure, timeout, true}, {unit.RestartOnFailure, execErr, true},
		{unit.RestartOnAbnormal, ok, false}, {unit.RestartOnAbnormal, fail, false}, {unit.RestartOnAbnormal, term, false},
		{unit.RestartOnAbnormal, segv, true}, {unit.RestartOnAbnormal, timeout, true},
	}
	for _, tt := range tests {
		if got := ShouldRestart(tt.policy, tt.exit); got != tt.want {
			t.Errorf("ShouldRestart(%s, %v) = %v, want %v", tt.policy, tt.exit, got, tt.want)
		}
	}
}

func TestStartLimiter(t *testing.T) {
	l := StartLimiter{Burst: 3, Interval: 10 * time.Second}
	t0 := time.Unix(1000, 0)
	for i := 0; i < 3; i++ {
		if !l.Allow(t0.Add(time.Duration(i) * time.Second)) {
			t.Fatalf("start %d refused", i)
		}
	}
	if l.Allow(t0.Add(3 * time.Second)) {
		t.Fatal("fourth start within 10s allowed")
	}
	// The first start falls out of the window after 10 s.
	if !l.Allow(t0.Add(10*time.Second + time.Millisecond)) {
		t.Fatal("start after the window refused")
	}
	l.Reset()
	if !l.Allow(t0.Add(11 * time.Second)) {
		t.Fatal("start after Reset refused")
	}
	off := StartLimiter{Burst: 1, Interval: 0}
	for i := 0; i < 100; i++ {
		if !off.Allow(t0) {
			t.Fatal("disabled limiter refused a start")
		}
	}
}

func TestExitStrings(t *testing.T) {
	tests := []struct {
		e    Exit
		want string
		code int
	}{
		{Exit{Code: 0}, "exited with code 0", 0},
		{Exit{Code: 2}, "exited with code 2", 2},
		{Exit{Signal: syscall.SIGKILL}, "killed by SIGKILL", 137},
		{Exit{ExecErr: errors.New("x")}, "failed to start: x", 127},
	}
	for _, tt := range tests {
		if got := tt.e.String(); got != tt.want {
			t.Errorf("%#v: %q, want %q", tt.e, got, tt.want)
		}
		if got := tt.e.StatusCode(); got != tt.code {
			t.Errorf("%#v: code %d, want %d", tt.e, got, tt.code)
		}
	}
}
