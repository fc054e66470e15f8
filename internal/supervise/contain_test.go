package supervise

import (
	"syscall"
	"testing"
)

func TestFormatBytes(t *testing.T) {
	for _, tc := range []struct {
		n    uint64
		want string
	}{
		{64 << 20, "64M"},
		{1 << 30, "1G"},
		{3 << 29, "1536M"},
		{512 << 10, "512K"},
		{1000, "1000B"},
		{(64 << 20) + 1, "64.0M"},
	} {
		if got := FormatBytes(tc.n); got != tc.want {
			t.Errorf("FormatBytes(%d) = %q, want %q", tc.n, got, tc.want)
		}
	}
}

func TestExitOOM(t *testing.T) {
	for _, tc := range []struct {
		e       Exit
		want    string
		restart bool // under on-failure
	}{
		{Exit{Signal: syscall.SIGKILL, OOM: oomWhy(64 << 20)}, "killed by the OOM killer: memory.max 64M reached", true},
		{Exit{Signal: syscall.SIGKILL, OOM: oomWhy(-1)}, "killed by the OOM killer: the system ran out of memory", true},
		// A child was OOM-killed and the main process exited 0: still a failure.
		{Exit{Code: 0, OOM: oomWhy(64 << 20)}, "exited with code 0 after the OOM killer killed one of its processes: memory.max 64M reached", true},
	} {
		if got := tc.e.String(); got != tc.want {
			t.Errorf("String = %q, want %q", got, tc.want)
		}
		if got := ShouldRestart("on-failure", tc.e); got != tc.restart {
			t.Errorf("%s: on-failure restarts = %v, want %v", tc.want, got, tc.restart)
		}
		if tc.e.Success() || tc.e.Clean() {
			t.Errorf("%s counts as a success", tc.want)
		}
	}
}
