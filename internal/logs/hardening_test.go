package logs

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nitroinit/nitroinit/internal/wait"
)

// checkContiguous fails unless got is the last len(got) of total numbered
// lines, in order.
func checkContiguous(t *testing.T, got []string, total int) {
	t.Helper()
	for i, s := range texts(t, got) {
		if want := fmt.Sprintf("line %05d", total-len(got)+i); s != want {
			t.Fatalf("line %d of %d = %q, want %q", i, len(got), s, want)
		}
	}
}

// TestLinesRingAndFilesTogether: when the ring holds more than the files
// (small files, or files truncated), -n past the ring still returns every
// line that exists, without duplicates or gaps. Before, it returned only
// what the files held.
func TestLinesRingAndFilesTogether(t *testing.T) {
	tests := []struct {
		name     string
		cfg      Config
		total, n int
		want     int
	}{
		{"ring larger than truncated file", Config{RingLines: 500, MaxSize: 41 * 127, MaxFiles: 1}, 1000, 1000, 500},
		{"ring larger than rotated files", Config{RingLines: 400, MaxSize: 41 * 100, MaxFiles: 2}, 1000, 1000, 400},
		{"files older than ring", Config{RingLines: 50, MaxSize: 41 * 100, MaxFiles: 3}, 1000, 280, 280},
		{"everything", Config{RingLines: 50, MaxSize: 1 << 20, MaxFiles: 3}, 1000, 5000, 1000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := open(t, tt.cfg)
			capture(l, numbered(tt.total))
			got := l.Lines(tt.n)
			if len(got) != tt.want {
				t.Errorf("Lines(%d) gave %d lines, want %d", tt.n, len(got), tt.want)
			}
			checkContiguous(t, got, tt.total)
		})
	}
}

// TestRingIsByteBounded: a ring of many lines holds at most RingBytes.
func TestRingIsByteBounded(t *testing.T) {
	l := open(t, Config{RingLines: 100000, RingBytes: 64 * 1024, MaxLine: 1024})
	long := strings.Repeat("x", 1000)
	for i := 0; i < 1000; i++ {
		l.Printf("%s", long)
	}
	l.mu.Lock()
	held, n := l.ring.bytes, l.ring.n
	l.mu.Unlock()
	if held > 64*1024 || n == 0 {
		t.Errorf("ring holds %d bytes in %d lines, want at most %d", held, n, 64*1024)
	}
}

// TestTailMemoryIsBounded: asking for a billion lines of a large log
// allocates a constant, not the log's size.
func TestTailMemoryIsBounded(t *testing.T) {
	l := open(t, Config{RingLines: 100, MaxSize: 4 << 20, MaxFiles: 3})
	line := strings.Repeat("y", 200) + "\n"
	capture(l, strings.Repeat(line, (10<<20)/len(line)))
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	lines, bytes := 0, 0
	if err := l.Tail(1_000_000_000).Each(func(b []byte) error {
		lines++
		bytes += len(b)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if lines < 40000 || bytes < 8<<20 {
		t.Fatalf("Each gave %d lines, %d bytes; want the ~10 MiB on disk", lines, bytes)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 1<<20 {
		t.Errorf("reading %d bytes of log allocated %d bytes, want a constant under 1 MiB", bytes, alloc)
	}
}

// TestTailDoesNotHoldTheLock: a reader that stops reading does not stop
// the service's writes.
func TestTailDoesNotHoldTheLock(t *testing.T) {
	l := open(t, Config{RingLines: 10, MaxSize: 1 << 20, MaxFiles: 2})
	capture(l, numbered(1000))
	tail := l.Tail(500)
	stuck := make(chan struct{})
	release := make(chan struct{})
	go tail.Each(func([]byte) error {
		select {
		case <-stuck:
		default:
			close(stuck)
		}
		<-release
		return nil
	})
	defer close(release)
	<-stuck
	done := make(chan struct{})
	go func() {
		l.Printf("written while a reader is stuck")
		done <- struct{}{}
	}()
	wait.For(t, "Printf while a Tail reader is stuck", wait.Receive(done, nil))
}

// TestNoSymlinksFollowed: init appends to, reads and clears only regular
// files of its own in the log directory.
func TestNoSymlinksFollowed(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("root only\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(secret, filepath.Join(dir, "planted.log")); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(Config{Dir: dir}, "planted"); err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Errorf("Open over a planted link: err = %v, want a refusal naming the link", err)
	}
	if err := exec.Command("mkfifo", filepath.Join(dir, "fifo.log")).Run(); err == nil {
		done := make(chan error, 1)
		go func() { _, err := Open(Config{Dir: dir}, "fifo"); done <- err }()
		var err error
		wait.For(t, "Open over a FIFO to return", wait.Receive(done, &err))
		if err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("Open over a FIFO: err = %v", err)
		}
	}

	l := open(t, Config{Dir: dir, RingLines: 1, MaxFiles: 3})
	capture(l, "mine\n")
	if err := os.Symlink(secret, filepath.Join(dir, "svc.log.1")); err != nil {
		t.Fatal(err)
	}
	for _, s := range l.Lines(100) {
		if strings.Contains(s, "root only") {
			t.Fatalf("Lines read through a planted link: %q", s)
		}
	}
	if err := l.Clear(); err != nil {
		t.Fatal(err)
	}
	// Rotation moves or removes the link itself, never its target.
	for i := 0; i < 5; i++ {
		l.rotate()
	}
	if b, err := os.ReadFile(secret); err != nil || string(b) != "root only\n" {
		t.Errorf("target of a planted link changed: %q, %v", b, err)
	}
}

func (l *Log) rotate() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.rotateLocked()
}

// TestDirWritableByOthersRefused: a log directory that another user may
// write is refused with a message that says what to do, unless it is
// sticky and owned by root.
func TestDirWritableByOthersRefused(t *testing.T) {
	tests := []struct {
		mode os.FileMode
		ok   bool
	}{
		{0o755, true},
		{0o700, true},
		{0o777, false},
		{0o775, false},
		{0o777 | os.ModeSticky, os.Geteuid() == 0},
	}
	for _, tt := range tests {
		dir := filepath.Join(t.TempDir(), "log")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, tt.mode); err != nil {
			t.Fatal(err)
		}
		l, err := Open(Config{Dir: dir}, "svc")
		if tt.ok != (err == nil) {
			t.Errorf("mode %v: err = %v, want ok=%v", tt.mode, err, tt.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "writable by group or others") {
			t.Errorf("mode %v: error %q does not say why", tt.mode, err)
		}
		if l != nil {
			l.Close()
		}
	}
}

// smallFS mounts a tmpfs of the given size, to fill; it needs root.
func smallFS(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	return dir
}

// TestOutageReportedUntilRecovery: a full filesystem shows in Err until
// the file can be written again, and each outage's start and end is
// logged. It needs root to mount a small tmpfs.
func TestOutageReportedUntilRecovery(t *testing.T) {
	dir := smallFS(t, "256k")
	var mu sync.Mutex
	var msgs []string
	logf := func(f string, a ...any) {
		mu.Lock()
		msgs = append(msgs, fmt.Sprintf(f, a...))
		mu.Unlock()
	}
	l, err := Open(Config{Dir: dir, MaxSize: 1 << 20, MaxFiles: 1, RingLines: 10, Logf: logf}, "svc")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	filler := filepath.Join(dir, "filler")
	for outage := 1; outage <= 2; outage++ {
		os.WriteFile(filler, make([]byte, 512<<10), 0o600) // fills the tmpfs
		capture(l, numbered(2000))
		if err := l.Err(); err == nil || !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("outage %d: Err() = %v, want no space left", outage, err)
		}
		os.Remove(filler)
		l.Clear()
		capture(l, "recovered\n")
		if err := l.Err(); err != nil {
			t.Fatalf("outage %d: Err() after recovery = %v", outage, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	starts, ends := 0, 0
	for _, m := range msgs {
		if strings.Contains(m, "kept in memory only") {
			starts++
		}
		if strings.Contains(m, "is written again") {
			ends++
		}
	}
	if starts != 2 || ends != 2 {
		t.Errorf("got %d outage starts and %d ends logged, want 2 each:\n%s", starts, ends, strings.Join(msgs, "\n"))
	}
}

// TestThrottleSummarises: a flood becomes one line per key and a summary.
// The window is ended by hand, so that the test does not depend on timing.
func TestThrottleSummarises(t *testing.T) {
	var msgs []string
	th := NewThrottle("notifications", time.Hour, func(f string, a ...any) {
		msgs = append(msgs, fmt.Sprintf(f, a...))
	})
	defer th.Stop()
	for i := 0; i < 10000; i++ {
		th.Event("pid 812", "ignored a notification from pid 812")
	}
	for i := 0; i < 100; i++ {
		th.Event(fmt.Sprintf("pid %d", i), "ignored a notification from pid %d", i)
	}
	th.flush()
	if len(msgs) != maxThrottleKeys+1 {
		t.Errorf("%d lines logged for a flood of 10100 events, want %d:\n%s", len(msgs), maxThrottleKeys+1, strings.Join(msgs, "\n"))
	}
	if last := msgs[len(msgs)-1]; !strings.HasPrefix(last, "ignored 10084 more notifications in the last 1h0m0s (85 from others, 9999 from pid 812)") {
		t.Errorf("summary %q", last)
	}
	th.flush()
	th.Event("pid 812", "again")
	if msgs[len(msgs)-1] != "again" {
		t.Errorf("the first event of a new window was not logged: %q", msgs[len(msgs)-1])
	}
}

// TestOutageLinesStayInOrder: lines the file missed during an outage are
// still returned by Lines, in order, between those before and after it,
// with no half-written line in the file.
func TestOutageLinesStayInOrder(t *testing.T) {
	dir := smallFS(t, "64k")
	l, err := Open(Config{Dir: dir, MaxSize: 1 << 20, MaxFiles: 2, RingLines: 100, Logf: func(string, ...any) {}}, "svc")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// Long lines, so that the outage's lines cannot all fit in the
	// file's last, partly used page.
	pad := strings.Repeat("p", 200)
	var lines []string
	for i := 0; i < 100; i++ {
		lines = append(lines, fmt.Sprintf("line %05d %s", i, pad))
	}
	for _, s := range lines[:50] {
		l.Printf("%s", s)
	}
	filler := filepath.Join(dir, "filler")
	os.WriteFile(filler, make([]byte, 128<<10), 0o600)
	for _, s := range lines[50:80] {
		l.Printf("%s", s)
	}
	if l.Err() == nil {
		t.Fatal("no outage")
	}
	os.Remove(filler)
	for _, s := range lines[80:] {
		l.Printf("%s", s)
	}
	got := l.Lines(1000)
	if len(got) != 100 {
		t.Fatalf("Lines gave %d lines, want 100", len(got))
	}
	for i, s := range texts(t, got) {
		if s != lines[i] {
			t.Fatalf("line %d = %.20q, want %.20q", i, s, lines[i])
		}
	}
	for _, s := range fileLines(t, l.Path()) {
		if !strings.HasSuffix(text(t, s), pad) {
			t.Errorf("half-written line in the file: %.60q", s)
		}
	}
}

// TestSubscriberQueueIsByteBounded: a subscriber that does not read holds
// at most MaxQueuedBytes of lines, however long they are; once it reads,
// lines flow again and the drop is counted.
func TestSubscriberQueueIsByteBounded(t *testing.T) {
	l := open(t, Config{})
	sub := l.Subscribe(1024)
	long := strings.Repeat("l", 15000)
	for i := 0; i < 1000; i++ {
		l.Printf("%s", long)
	}
	queued := 0
	for len(sub.C()) > 0 {
		queued += len((<-sub.C()).Line)
	}
	if queued > MaxQueuedBytes || queued == 0 {
		t.Errorf("%d bytes were queued for a subscriber that did not read, want at most %d", queued, MaxQueuedBytes)
	}
	l.Printf("after")
	if ev := <-sub.C(); !strings.HasSuffix(ev.Line, "after") || ev.Missed == 0 {
		t.Errorf("after reading: %.40q missed %d, want the new line and a count of dropped ones", ev.Line, ev.Missed)
	}
}
