package procfs

import (
	"errors"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	tail := " 1 2 3 4 5 6 7 8 9 10 250 50 13 14 15 16 17 18 12345 20 64 22 23 24"
	tests := []struct {
		in      string
		want    Stat
		wantErr string
	}{
		{in: "42 (sleep) S" + tail, want: Stat{Comm: "sleep", State: "S", PPID: 1, UTime: 250, STime: 50, StartTicks: 12345, RSSPages: 64}},
		{in: "42 (a b) c)) R" + tail, want: Stat{Comm: "a b) c)", State: "R", PPID: 1, UTime: 250, STime: 50, StartTicks: 12345, RSSPages: 64}},
		{in: "42 sleep S 1 2", wantErr: "no (comm)"},
		{in: "42 (x) S 1 2 3", wantErr: "want at least 22"},
		{in: "42 (x) S x" + tail[2:], wantErr: "field 4"},
	}
	for _, tc := range tests {
		got, err := ParseStat([]byte(tc.in))
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseStat(%q) err = %v, want %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseStat(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

// fakeProc writes a minimal proc tree so the arithmetic can be checked
// against hand-computed values.
func fakeProc(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	write := func(name, body string) {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("uptime", "1100.00 500.00\n")
	write("stat", "cpu 1 2 3\nbtime 1764151200\nprocesses 9\n")
	// Started 100 s after boot, so 1000 s old; 300 ticks = 3 s of CPU.
	write("7/stat", "7 (worker) S 1 7 7 0 -1 0 0 0 0 0 200 100 0 0 20 0 1 0 10000 0 25 0 0")
	write("7/cmdline", "/bin/worker\x00--fast\x00")
	write("9/stat", "9 (kthreadd) I 0 0 0 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 0 0 0 0 0")
	write("9/cmdline", "")
	write("self/stat", "not a pid dir")
	return root
}

func TestFakeProc(t *testing.T) {
	fs := FS{Root: fakeProc(t)}
	list, err := fs.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].PID != 7 || list[1].PID != 9 {
		t.Fatalf("List = %+v, want pids 7 and 9", list)
	}
	w := list[0]
	pageKB := uint64(os.Getpagesize()) / 1024
	checks := []struct {
		what      string
		got, want any
	}{
		{"name", w.Name, "worker"},
		{"ppid", w.PPID, 1},
		{"state", w.State, "S"},
		{"cmdline", w.Cmdline, "/bin/worker --fast"},
		{"start", w.StartTime, uint64(1764151200 + 100)},
		{"rss", w.MemoryKB, 25 * pageKB},
		{"kthread cmdline", list[1].Cmdline, "[kthreadd]"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.what, c.got, c.want)
		}
	}
	if math.Abs(w.CPUPercent-0.3) > 1e-9 {
		t.Errorf("cpu = %v, want 0.3 (3 s over 1000 s)", w.CPUPercent)
	}
	if n, err := fs.Count(); err != nil || n != 2 {
		t.Errorf("Count = %d, %v; want 2", n, err)
	}
	if _, err := fs.Process(12345); !errors.Is(err, ErrNoProcess) {
		t.Errorf("Process(12345) err = %v, want ErrNoProcess", err)
	}
}

func TestRealChild(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	time.Sleep(50 * time.Millisecond) // let exec finish so comm is "sleep"
	p, err := FS{}.Process(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	now := uint64(time.Now().Unix())
	if p.PPID != os.Getpid() || p.Name != "sleep" || p.Cmdline != "sleep 30" || p.MemoryKB == 0 {
		t.Errorf("child = %+v, want ppid %d, name sleep, cmdline 'sleep 30', rss > 0", p, os.Getpid())
	}
	// btime is rounded to a second and starttime to a tick.
	if p.StartTime+3 < now || p.StartTime > now+1 {
		t.Errorf("start time %d, want about %d", p.StartTime, now)
	}
	list, err := FS{}.List()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, q := range list {
		found = found || q.PID == cmd.Process.Pid
	}
	if !found {
		t.Errorf("List lacks child %d", cmd.Process.Pid)
	}
}
