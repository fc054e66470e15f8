package logs

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"
)

var lineRE = regexp.MustCompile(`^\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\] `)

// text strips the timestamp prefix, failing the test if it is malformed.
func text(t testing.TB, line string) string {
	t.Helper()
	if !lineRE.MatchString(line) {
		t.Fatalf("malformed line %q", line)
	}
	return line[30:]
}

func texts(t testing.TB, lines []string) []string {
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = text(t, l)
	}
	return out
}

// fileLines reads a whole log file (tests only).
func fileLines(t testing.TB, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	s := strings.TrimSuffix(string(data), "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

func open(t testing.TB, cfg Config) *Log {
	t.Helper()
	if cfg.Dir == "" {
		cfg.Dir = filepath.Join(t.TempDir(), "log")
	}
	l, err := Open(cfg, "svc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func capture(l *Log, s string) { l.Capture(strings.NewReader(s)) }

func numbered(n int) string {
	var b strings.Builder
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "line %05d\n", i)
	}
	return b.String()
}

func TestFormatAndSplitting(t *testing.T) {
	tests := []struct {
		name    string
		maxLine int
		in      string
		want    []string
	}{
		{"plain", 0, "a\nb\n", []string{"a", "b"}},
		{"partial last line", 0, "a\nb", []string{"a", "b"}},
		{"crlf", 0, "a\r\nb\r\n", []string{"a", "b"}},
		{"empty lines kept", 0, "\n\nx\n", []string{"", "", "x"}},
		{"long line split", 4, "abcdefghij\nxy\n", []string{"abcd", "efgh", "ij", "xy"}},
		{"long partial line split", 4, "abcdefghij", []string{"abcd", "efgh", "ij"}},
		{"exact max", 4, "abcd\n", []string{"abcd"}},
		{"nothing", 0, "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := open(t, Config{MaxLine: tt.maxLine, RingLines: 100})
			capture(l, tt.in)
			got := texts(t, l.Lines(100))
			if len(got) != len(tt.want) || (len(got) > 0 && strings.Join(got, "|") != strings.Join(tt.want, "|")) {
				t.Errorf("lines = %q, want %q", got, tt.want)
			}
			if err := l.Flush(); err != nil {
				t.Fatal(err)
			}
			if f := texts(t, fileLines(t, l.Path())); strings.Join(f, "|") != strings.Join(tt.want, "|") {
				t.Errorf("file = %q, want %q", f, tt.want)
			}
		})
	}
}

func TestTimestampIsUTCMicroseconds(t *testing.T) {
	var s stamp
	tm := time.Date(2026, 11, 26, 1, 2, 3, 4567000, time.FixedZone("X", 3600))
	if got, want := string(s.format(tm)), "[2026-11-26T00:02:03.004567Z] "; got != want {
		t.Errorf("format = %q, want %q", got, want)
	}
	// The cached second must be replaced when the second changes.
	if got, want := string(s.format(tm.Add(time.Second+time.Microsecond))), "[2026-11-26T00:02:04.004568Z] "; got != want {
		t.Errorf("format = %q, want %q", got, want)
	}
}

func TestRotation(t *testing.T) {
	const lineLen int64 = 30 + int64(len("line 00000")) + 1 // 41 bytes per stored line
	tests := []struct {
		name      string
		maxSize   int64
		maxFiles  int
		lines     int
		wantFiles []int // lines in svc.log, svc.log.1, ...
	}{
		{"no rotation needed", 10 * lineLen, 3, 10, []int{10}},
		{"one rotation", 10 * lineLen, 3, 11, []int{1, 10}},
		{"oldest dropped", 10 * lineLen, 3, 35, []int{5, 10, 10}},
		{"partial fit rounds down", 10*lineLen + 20, 2, 25, []int{5, 10}},
		{"max files 1 truncates", 10 * lineLen, 1, 25, []int{5}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := open(t, Config{MaxSize: tt.maxSize, MaxFiles: tt.maxFiles})
			capture(l, numbered(tt.lines))
			if err := l.Flush(); err != nil {
				t.Fatal(err)
			}
			var all []string
			for i := 0; i < tt.maxFiles+2; i++ {
				p := l.numbered(i)
				lines := fileLines(t, p)
				if i >= len(tt.wantFiles) {
					if _, err := os.Stat(p); err == nil {
						t.Errorf("%s exists, want only %d files", filepath.Base(p), len(tt.wantFiles))
					}
					continue
				}
				if len(lines) != tt.wantFiles[i] {
					t.Errorf("%s has %d lines, want %d", filepath.Base(p), len(lines), tt.wantFiles[i])
				}
				if st, err := os.Stat(p); err != nil || st.Size() > tt.maxSize {
					t.Errorf("%s: size %v > max %d (%v)", filepath.Base(p), st.Size(), tt.maxSize, err)
				}
				all = append(texts(t, lines), all...) // older files go first
			}
			// The files together hold the newest lines, contiguous and in order.
			for i, s := range all {
				if want := fmt.Sprintf("line %05d", tt.lines-len(all)+i); s != want {
					t.Fatalf("line %d across files = %q, want %q", i, s, want)
				}
			}
		})
	}
}

func TestRingAndLinesBeyondRing(t *testing.T) {
	const total = 3000
	l := open(t, Config{RingLines: 10, MaxSize: 20 * 1024, MaxFiles: 4})
	capture(l, numbered(total))
	tests := []struct {
		n    int
		want int // lines expected
	}{
		{1, 1}, {10, 10}, {11, 11}, {500, 500}, {1500, 1500}, {100000, -1},
	}
	for _, tt := range tests {
		got := texts(t, l.Lines(tt.n))
		if tt.want >= 0 && len(got) != tt.want {
			t.Errorf("Lines(%d) gave %d lines, want %d", tt.n, len(got), tt.want)
		}
		for i, s := range got {
			if want := fmt.Sprintf("line %05d", total-len(got)+i); s != want {
				t.Fatalf("Lines(%d)[%d] = %q, want %q", tt.n, i, s, want)
			}
		}
		if tt.want < 0 && (len(got) == 0 || len(got) >= total) {
			t.Errorf("Lines(%d) gave %d lines; want everything still on disk (< %d)", tt.n, len(got), total)
		}
	}
	if got := l.Lines(0); got != nil {
		t.Errorf("Lines(0) = %q", got)
	}
}

func TestLinesAfterReopen(t *testing.T) {
	dir := t.TempDir()
	l1, err := Open(Config{Dir: dir, RingLines: 100}, "svc")
	if err != nil {
		t.Fatal(err)
	}
	capture(l1, "old 1\nold 2\n")
	l1.Close()
	l2 := open(t, Config{Dir: dir, RingLines: 100})
	capture(l2, "new 1\n")
	if got := texts(t, l2.Lines(3)); strings.Join(got, "|") != "old 1|old 2|new 1" {
		t.Errorf("Lines after reopen = %q (appending to the old file)", got)
	}
}

func TestTailFileChunkBoundaries(t *testing.T) {
	// Lines of varying length so that many cross a 64 KiB boundary.
	r := rand.New(rand.NewSource(1))
	var b strings.Builder
	var want []string
	for b.Len() < 5*tailChunk {
		s := strings.Repeat("x", r.Intn(3000)) + fmt.Sprint(len(want))
		want = append(want, s)
		b.WriteString(s + "\n")
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "f.log"), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := Open(Config{Dir: dir, MaxFiles: 1, MaxSize: 1 << 30}, "f")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for _, n := range []int{1, 7, 100, len(want) - 1, len(want), len(want) + 5} {
		got := l.Lines(n)
		exp := want
		if n < len(want) {
			exp = want[len(want)-n:]
		}
		if strings.Join(got, "\n") != strings.Join(exp, "\n") {
			t.Errorf("Lines(%d): got %d lines, want %d", n, len(got), len(exp))
		}
	}
}

func TestClear(t *testing.T) {
	l := open(t, Config{RingLines: 5, MaxSize: 4096, MaxFiles: 3})
	capture(l, numbered(500))
	stray := l.Path() + ".bak"
	if err := os.WriteFile(stray, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := l.Clear(); err != nil {
		t.Fatal(err)
	}
	if got := l.Lines(10); len(got) != 0 {
		t.Errorf("Lines after Clear = %q", got)
	}
	matches, _ := filepath.Glob(l.Path() + ".*")
	if len(matches) != 1 || matches[0] != stray {
		t.Errorf("files after Clear: %v, want only %s", matches, stray)
	}
	capture(l, "after\n")
	l.Flush()
	if got := texts(t, fileLines(t, l.Path())); len(got) != 1 || got[0] != "after" {
		t.Errorf("file after Clear and one line = %q", got)
	}
}

func TestSlowSubscriberMissesWhileFileKeepsAll(t *testing.T) {
	l := open(t, Config{RingLines: 10})
	slow := l.Subscribe(4)
	fast := l.Subscribe(1000)
	capture(l, numbered(100))
	capture(l, "last\n")

	var got []Event
	for len(got) < 4 {
		got = append(got, <-slow.C())
	}
	for i := 0; i < 4; i++ {
		if text(t, got[i].Line) != fmt.Sprintf("line %05d", i) || got[i].Missed != 0 {
			t.Errorf("event %d = %+v", i, got[i])
		}
	}
	// Lines 4..99 and "last" were dropped while the buffer was full; nothing
	// has arrived since, so nothing is pending.
	select {
	case e := <-slow.C():
		t.Fatalf("unexpected event %+v", e)
	default:
	}
	capture(l, "after\n")
	e := <-slow.C()
	if text(t, e.Line) != "after" || e.Missed != 97 {
		t.Errorf("event after drops = %+v (%q), want Missed 97", e, text(t, e.Line))
	}
	if n := len(fast.C()); n != 102 {
		t.Errorf("fast subscriber has %d events, want 102", n)
	}
	l.Flush()
	if n := len(fileLines(t, l.Path())); n != 102 {
		t.Errorf("file has %d lines, want 102", n)
	}
	slow.Close()
	slow.Close() // twice is fine
	if _, ok := <-slow.C(); ok {
		t.Error("closed subscription still delivers")
	}
	l.Close()
	for range fast.C() {
	}
	if s := l.Subscribe(1); s != nil {
		if _, ok := <-s.C(); ok {
			t.Error("subscription to a closed log should be closed")
		}
	}
}

func TestCloseDrainsCapture(t *testing.T) {
	l := open(t, Config{})
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { l.Capture(r); close(done) }()
	fmt.Fprintln(w, "before")
	l.Close()
	// More than a pipe buffer: the writer would block forever if Capture
	// stopped reading after Close.
	big := bytes.Repeat([]byte("x\n"), 256*1024)
	if _, err := w.Write(big); err != nil {
		t.Fatal(err)
	}
	w.Close()
	<-done
	r.Close()
}

func TestConcurrentWriters(t *testing.T) {
	const perPipe = 20000
	l := open(t, Config{RingLines: 100, MaxSize: 1 << 30})
	sub := l.Subscribe(64)
	var wg sync.WaitGroup
	for _, src := range []string{"out", "err"} {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(2)
		go func() { defer wg.Done(); l.Capture(r); r.Close() }()
		go func() {
			defer wg.Done()
			bw := bufio.NewWriter(w)
			for i := 0; i < perPipe; i++ {
				fmt.Fprintf(bw, "%s %06d %s\n", src, i, strings.Repeat("y", i%200))
			}
			bw.Flush()
			w.Close()
		}()
	}
	stop := make(chan struct{})
	var readers sync.WaitGroup
	readers.Add(2)
	go func() {
		defer readers.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			l.Printf("status %d", i)
			_ = l.Lines(150)
			time.Sleep(time.Millisecond)
		}
	}()
	go func() {
		defer readers.Done()
		for {
			select {
			case <-stop:
				return
			case <-sub.C():
			}
		}
	}()
	wg.Wait()
	close(stop)
	readers.Wait()
	if err := l.Flush(); err != nil {
		t.Fatal(err)
	}
	next := map[string]int{"out": 0, "err": 0}
	for _, line := range fileLines(t, l.Path()) {
		s := text(t, line)
		if strings.HasPrefix(s, "status ") {
			continue
		}
		var src string
		var i int
		if _, err := fmt.Sscanf(s, "%s %d", &src, &i); err != nil {
			t.Fatalf("garbled line %q", s)
		}
		if i != next[src] || s != fmt.Sprintf("%s %06d %s", src, i, strings.Repeat("y", i%200)) {
			t.Fatalf("line %q out of order or garbled; want %s %d", s, src, next[src])
		}
		next[src]++
	}
	if next["out"] != perPipe || next["err"] != perPipe {
		t.Errorf("file has %v lines per source, want %d each", next, perPipe)
	}
}

// Capture's buffer starts at captureStart bytes and grows: lines longer
// than it, however the reads cut them, arrive whole (or split at MaxLine).
func TestCaptureLinesLongerThanFirstBuffer(t *testing.T) {
	long, longer := strings.Repeat("a", 5000), strings.Repeat("b", DefaultMaxLine+3616)
	in := "short\n" + long + "\n" + longer
	want := []string{"short", long, longer[:DefaultMaxLine], longer[DefaultMaxLine:]}
	for _, tt := range []struct {
		name string
		r    func(io.Reader) io.Reader
	}{
		{"whole", func(r io.Reader) io.Reader { return r }},
		{"one byte per read", iotest.OneByteReader},
		{"half of each read", iotest.HalfReader},
	} {
		t.Run(tt.name, func(t *testing.T) {
			l := open(t, Config{RingLines: 10})
			l.Capture(tt.r(strings.NewReader(in)))
			got := texts(t, l.Lines(10))
			if strings.Join(got, "|") != strings.Join(want, "|") {
				t.Errorf("got %d lines of %v bytes, want %d of %v", len(got), lens(got), len(want), lens(want))
			}
		})
	}
}

func lens(lines []string) []int {
	n := make([]int, len(lines))
	for i, l := range lines {
		n[i] = len(l)
	}
	return n
}

func TestBinaryInputIsBounded(t *testing.T) {
	// 8 MiB of random bytes with no newlines must become MaxLine-sized lines
	// without Capture holding more than its buffer.
	data := make([]byte, 8<<20)
	rand.New(rand.NewSource(2)).Read(data)
	data = bytes.ReplaceAll(data, []byte("\n"), []byte("."))
	data = bytes.ReplaceAll(data, []byte("\r"), []byte(".")) // bufio.Scanner would drop a final \r
	l := open(t, Config{MaxLine: 1024, MaxSize: 1 << 30, RingLines: 3})
	l.Capture(bytes.NewReader(data))
	l.Flush()
	f, err := os.Open(l.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 4096), 4096)
	n := 0
	for sc.Scan() {
		if len(sc.Bytes()) != 30+1024 {
			t.Fatalf("line %d has %d bytes, want %d", n, len(sc.Bytes()), 30+1024)
		}
		n++
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if n != len(data)/1024 {
		t.Errorf("%d lines, want %d", n, len(data)/1024)
	}
}

func TestCaptureThroughPipeKeepsEveryLine(t *testing.T) {
	lines := 200000
	if testing.Short() {
		lines = 20000
	}
	l := open(t, Config{MaxSize: 1 << 30})
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		bw := bufio.NewWriterSize(w, 64*1024)
		row := strings.Repeat("z", 89)
		for i := 0; i < lines; i++ {
			fmt.Fprintf(bw, "%09d %s\n", i, row)
		}
		bw.Flush()
		w.Close()
	}()
	l.Capture(r)
	r.Close()
	l.Flush()
	got := fileLines(t, l.Path())
	if len(got) != lines {
		t.Fatalf("file has %d lines, want %d", len(got), lines)
	}
	for _, i := range []int{0, lines / 2, lines - 1} {
		if want := fmt.Sprintf("%09d ", i); !strings.HasPrefix(text(t, got[i]), want) {
			t.Errorf("line %d = %q", i, got[i])
		}
	}
}

func TestPrintfAndConsole(t *testing.T) {
	var console bytes.Buffer
	l := open(t, Config{RingLines: 10, Console: &console})
	l.Printf("started pid %d\nsecond line\n", 42)
	got := texts(t, l.Lines(10))
	if strings.Join(got, "|") != "started pid 42|second line" {
		t.Errorf("Lines = %q", got)
	}
	c := strings.Split(strings.TrimSuffix(console.String(), "\n"), "\n")
	if len(c) != 2 || text(t, c[1]) != "second line" {
		t.Errorf("console = %q", console.String())
	}
}

func TestOpenErrors(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o644)
	tests := []struct {
		dir, name, want string
	}{
		{t.TempDir(), "../x", "invalid log name"},
		{t.TempDir(), "", "invalid log name"},
		{filepath.Join(file, "sub"), "svc", "cannot create log directory"},
	}
	for _, tt := range tests {
		if _, err := Open(Config{Dir: tt.dir}, tt.name); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Open(%q, %q) error = %v, want %q", tt.dir, tt.name, err, tt.want)
		}
	}
}

// chunkReader hands out at most 64 KiB per Read, like a pipe.
type chunkReader struct{ r *bytes.Reader }

func (c chunkReader) Read(p []byte) (int, error) {
	if len(p) > 64*1024 {
		p = p[:64*1024]
	}
	return c.r.Read(p)
}

// BenchmarkCapture compares Capture with a baseline that only copies the same
// bytes to a file through a 64 KiB bufio.Writer, in the same run. The
// "capture" case reports x-baseline: its time per op over the baseline's.
func BenchmarkCapture(b *testing.B) {
	const lines = 100000
	var in bytes.Buffer
	row := strings.Repeat("b", 89)
	for i := 0; i < lines; i++ {
		fmt.Fprintf(&in, "%09d %s\n", i, row) // 100 bytes per line
	}
	data := in.Bytes()
	dir := b.TempDir()
	var baseline float64
	b.Run("baseline-bufio-copy", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		f, err := os.OpenFile(filepath.Join(dir, "baseline"), os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o640)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		bw := bufio.NewWriterSize(f, 64*1024)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := io.Copy(bw, chunkReader{bytes.NewReader(data)}); err != nil {
				b.Fatal(err)
			}
			bw.Flush()
		}
		b.StopTimer()
		baseline = float64(b.Elapsed()) / float64(b.N)
	})
	b.Run("capture", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		l, err := Open(Config{Dir: dir, RingLines: 1000}, "svc")
		if err != nil {
			b.Fatal(err)
		}
		defer l.Close()
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			l.Capture(chunkReader{bytes.NewReader(data)})
		}
		b.StopTimer()
		if baseline > 0 {
			b.ReportMetric(float64(b.Elapsed())/float64(b.N)/baseline, "x-baseline")
		}
		b.ReportMetric(float64(b.Elapsed())/float64(b.N)/lines, "ns/line")
	})
}

// FuzzCapture checks that whatever a service writes, every stored line is
// well formed and at most MaxLine long, and that no byte other than line
// ends is lost or added.
func FuzzCapture(f *testing.F) {
	f.Add([]byte("a\nb"), uint8(4))
	f.Add([]byte("abcd\r\nefgh\r\r\n\n"), uint8(4))
	f.Add([]byte("\xff\x00\n\r"), uint8(1))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte, max uint8) {
		if len(data) > 1<<16 {
			return
		}
		maxLine := int(max%32) + 1
		l, err := Open(Config{Dir: dir, MaxLine: maxLine, RingLines: 1 << 17, MaxSize: 1 << 30}, "fuzz")
		if err != nil {
			t.Fatal(err)
		}
		defer func() { l.Clear(); l.Close() }()
		l.Capture(bytes.NewReader(data))
		var got []byte
		for _, line := range l.Lines(1 << 17) {
			s := text(t, line)
			if len(s) > maxLine {
				t.Fatalf("line of %d bytes > MaxLine %d", len(s), maxLine)
			}
			got = append(got, s...)
		}
		// Expected: the input without line ends ("\n", "\r\n") and without a
		// "\r" that ends the input.
		want := bytes.ReplaceAll(data, []byte("\r\n"), []byte("\n"))
		want = bytes.ReplaceAll(want, []byte("\n"), nil)
		if bytes.HasSuffix(data, []byte("\r")) {
			want = bytes.TrimSuffix(want, []byte("\r"))
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("stored %q, want %q", got, want)
		}
	})
}
