// Package logs keeps the output of each service: a log file with size-based
// rotation, an in-memory ring of the last lines, and live subscribers.
//
// Every line is stored as "[2006-01-02T15:04:05.000000Z] text" (UTC,
// microseconds). The file never misses a line: writes are synchronous in the
// goroutine that reads the service's pipe, so a slow disk slows the reader,
// the pipe fills and the service blocks on write, as with any pipe.
// Subscribers, on the other hand, never slow anything down: a subscriber that
// does not keep up loses lines and is told how many.
package logs

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Defaults used for zero fields of Config.
const (
	DefaultMaxSize  = 10485760  // bytes per file
	DefaultMaxFiles = 5         // files kept, the live one included
	DefaultMaxLine  = 16 * 1024 // longer lines are split
	DefaultBuffer   = 256       // subscription channel size
	// DefaultRingBytes bounds the memory a ring holds, whatever RingLines
	// says: 100 services keep at most 25 MiB of lines in memory.
	DefaultRingBytes = 256 * 1024
)

// Config says where and how a Log stores its lines.
type Config struct {
	Dir       string    // directory of <name>.log; created 0755 if missing
	MaxSize   int64     // rotate before a file would exceed this many bytes; 0 = DefaultMaxSize
	MaxFiles  int       // files kept, <name>.log included; 1 = truncate instead of rotating; 0 = DefaultMaxFiles
	RingLines int       // lines kept in memory for Lines; 0 = none (Lines reads the files)
	RingBytes int       // bytes those lines may take at most; 0 = DefaultRingBytes
	MaxLine   int       // longest line in bytes (without the timestamp); 0 = DefaultMaxLine
	Console   io.Writer // optional: every stored line is also written here (init's own log)
	// Logf receives the start and the end of each outage of the file
	// (disk full, ...). Default: a line on Console, or on stderr.
	Logf func(format string, args ...any)
}

// Event is one line delivered to a subscriber.
type Event struct {
	Line   string // the formatted line, without the newline
	Missed uint64 // lines dropped just before this one because the subscriber was slow
}

// Log is the log of one service. All methods are safe for concurrent use.
type Log struct {
	cfg  Config
	name string
	path string
	dir  *os.File // the log directory, opened once; files are reached relative to it

	// mu is the one owner of everything below: the file, the ring, the
	// subscribers. Holding it for a whole batch of lines keeps the cost per
	// line at a few hundred nanoseconds.
	mu sync.Mutex
	f  *os.File
	// w batches the lines of one store into one write. It is lent from
	// writers for the call only: store always flushes, so between calls
	// it would hold nothing but its 64 KiB, which every idle service
	// would keep (and whose written pages would count in init's memory).
	w    *bufio.Writer
	size int64 // bytes in the file, buffered ones included
	// durable is the file's size after the last successful flush: a failed
	// flush cuts the file back to it, so that a line is either whole in the
	// file or only in the ring, never half written.
	durable int64
	ring    ring
	subs    map[*Subscription]struct{}
	stamp   stamp
	closed  bool
	gen     int64 // rotations so far: a line written in generation g is in file number gen-g
	// unflushed counts the lines buffered since the last successful flush:
	// if the flush fails, they are marked in the ring as not in the file.
	unflushed int
	err       error     // the file's current outage, reported by Err; nil once it recovers
	errSince  time.Time // when the outage began
	lost      int       // lines the file missed during the outage
}

// Open opens (appending) or creates the log file <Dir>/<name>.log.
func Open(cfg Config, name string) (*Log, error) {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return nil, fmt.Errorf("invalid log name %q: it must be a plain file name", name)
	}
	if cfg.MaxSize <= 0 {
		cfg.MaxSize = DefaultMaxSize
	}
	if cfg.MaxFiles <= 0 {
		cfg.MaxFiles = DefaultMaxFiles
	}
	if cfg.MaxLine <= 0 {
		cfg.MaxLine = DefaultMaxLine
	}
	if cfg.RingLines < 0 {
		cfg.RingLines = 0
	}
	if cfg.RingBytes <= 0 {
		cfg.RingBytes = DefaultRingBytes
	}
	cfg.RingBytes = max(cfg.RingBytes, cfg.MaxLine+len(stamp{}.buf))
	dir, err := openDir(cfg.Dir)
	if err != nil {
		return nil, err
	}
	l := &Log{
		cfg:  cfg,
		name: name,
		path: filepath.Join(cfg.Dir, name+".log"),
		dir:  dir,
		ring: newRing(cfg.RingLines, cfg.RingBytes),
		subs: map[*Subscription]struct{}{},
	}
	if err := l.openFile(); err != nil {
		dir.Close()
		return nil, err
	}
	return l, nil
}

// captureStart is the size of a capture's first read buffer.
const captureStart = 512

// writeBuffer is the size of the buffers in writers: large enough that a
// burst of lines costs one write(2) per batch, not one per line.
const writeBuffer = 64 * 1024

// writers lends the buffer of store's batch.
var writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, writeBuffer) }}

func (l *Log) openFile() error {
	f, err := openIn(l.dir, l.fileName(0), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return fmt.Errorf("cannot open log file: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("cannot stat log file %s: %w", l.path, err)
	}
	l.f, l.size, l.durable = f, st.Size(), st.Size()
	return nil
}

// Name returns the service name the log was opened for.
func (l *Log) Name() string { return l.name }

// Path returns the path of the live log file.
func (l *Log) Path() string { return l.path }

// Err returns the error that keeps lines from the file now (disk full,
// ...), or nil when the file is being written. Lines still reach the ring
// and subscribers while the file fails.
func (l *Log) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// Capture stores what r yields, line by line, until r reports EOF or an
// error. Run one Capture per pipe (stdout, stderr) in its own goroutine. A
// final line without a newline is stored at EOF; a line longer than MaxLine is
// stored as several lines; a trailing '\r' is dropped. Memory use is bounded
// whatever r yields. After Close, Capture keeps reading and discards, so the
// service is never blocked by a closed log. A panic is recovered, reported on
// Console (or stderr) and the rest of r is discarded.
func (l *Log) Capture(r io.Reader) {
	defer func() {
		if p := recover(); p != nil {
			l.reportPanic(p)
			_, _ = io.Copy(io.Discard, r)
		}
	}()
	max := l.cfg.MaxLine
	size := 64 * 1024
	if size < 2*max {
		size = 2 * max
	}
	// The buffer starts small and grows while reads fill it: most
	// services write little, and each idle one would otherwise hold 64 KiB
	// whose pages, once written, count in init's memory.
	buf := make([]byte, min(size, captureStart))
	var lines [][]byte
	start, end := 0, 0
	for {
		n, err := r.Read(buf[end:])
		end += n
		full := end == len(buf)
		lines = lines[:0]
		for start < end {
			i := bytes.IndexByte(buf[start:end], '\n')
			if i < 0 {
				if end-start <= max {
					break // wait for the rest, or EOF
				}
				lines = append(lines, buf[start:start+max])
				start += max
				continue
			}
			line := trimCR(buf[start : start+i])
			start += i + 1
			for len(line) > max {
				lines = append(lines, line[:max])
				line = line[max:]
			}
			lines = append(lines, line)
		}
		if err != nil && start < end {
			lines = append(lines, trimCR(buf[start:end]))
			start = end
		}
		if len(lines) > 0 {
			l.writeBatch(lines)
		}
		// Keep the partial line at the front; it is at most max bytes.
		copy(buf, buf[start:end])
		end -= start
		start = 0
		if err != nil {
			return
		}
		// Grow when a read filled the buffer (more is likely waiting) or
		// a partial line takes half of it. At full size a partial line
		// takes at most max bytes, half the buffer, so a read always has
		// room.
		if (full || end > len(buf)/2) && len(buf) < size {
			nb := make([]byte, min(2*len(buf), size))
			copy(nb, buf[:end])
			buf = nb
		}
	}
}

func trimCR(b []byte) []byte {
	if n := len(b); n > 0 && b[n-1] == '\r' {
		return b[:n-1]
	}
	return b
}

func (l *Log) reportPanic(p any) {
	w := l.cfg.Console
	if w == nil {
		w = os.Stderr
	}
	fmt.Fprintf(w, "logs: panic while capturing %s, discarding its output from now on: %v\n%s", l.name, p, debug.Stack())
}

// writeBatch stores lines that arrived together, under one lock and with one
// timestamp, then flushes the buffer to the file.
func (l *Log) writeBatch(lines [][]byte) {
	l.store(func(now time.Time) {
		for _, line := range lines {
			l.writeLine(now, line)
		}
	})
}

// store runs write, which stores lines with writeLine, under the lock and
// with one timestamp, unless the log is closed: the file is reopened
// first if it had to be closed, and flushed after.
func (l *Log) store(write func(now time.Time)) {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	l.w = writers.Get().(*bufio.Writer)
	defer func() {
		l.w.Reset(nil) // empty: flushLocked wrote or dropped what it held
		writers.Put(l.w)
		l.w = nil
	}()
	l.aim()
	l.reopenLocked()
	write(now)
	l.flushLocked()
}

// Printf stores a line written by init about the service (started, exited,
// ...). A message with newlines becomes several lines.
func (l *Log) Printf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	msg = strings.TrimSuffix(msg, "\n")
	l.store(func(now time.Time) {
		for _, line := range strings.Split(msg, "\n") {
			for len(line) > l.cfg.MaxLine {
				l.writeLine(now, []byte(line[:l.cfg.MaxLine]))
				line = line[l.cfg.MaxLine:]
			}
			l.writeLine(now, []byte(line))
		}
	})
}

// writeLine stores one line; l.mu is held.
func (l *Log) writeLine(now time.Time, line []byte) {
	prefix := l.stamp.format(now)
	n := int64(len(prefix) + len(line) + 1)
	if l.size > 0 && l.size+n > l.cfg.MaxSize {
		l.rotateLocked()
	}
	gen := int64(-1)
	if l.f != nil {
		l.w.Write(prefix)
		l.w.Write(line)
		l.w.WriteByte('\n')
		l.size += n
		l.unflushed++
		gen = l.gen
	} else {
		l.lost++
	}
	l.ring.add(prefix, line, gen)
	if l.cfg.Console != nil {
		// One Write per line so that concurrent writers to the console do
		// not interleave inside a line.
		b := make([]byte, 0, len(prefix)+len(line)+1)
		b = append(append(append(b, prefix...), line...), '\n')
		_, _ = l.cfg.Console.Write(b)
	}
	if len(l.subs) > 0 {
		s := string(prefix) + string(line)
		for sub := range l.subs {
			sub.send(s)
		}
	}
}

// reopenLocked retries opening the file after a failed rotation, once per
// batch, so that a transient error does not stop logging for good.
func (l *Log) reopenLocked() {
	if l.f != nil {
		return
	}
	if err := l.openFile(); err != nil {
		l.setErr(err)
		return
	}
	l.aim()
}

// aim points the lent buffer, if any, at the current file, dropping what
// it holds; l.mu is held.
func (l *Log) aim() {
	if l.w != nil && l.f != nil {
		l.w.Reset(l.f)
	}
}

func (l *Log) flushLocked() {
	if l.f == nil || l.w == nil {
		return // nil w: outside store, where nothing is buffered
	}
	if err := l.w.Flush(); err != nil {
		l.setErr(fmt.Errorf("writing %s: %w", l.path, err))
		// bufio.Writer keeps a write error forever; start afresh so that
		// the log recovers when the disk does (the buffered lines are lost).
		l.aim()
		if l.f.Truncate(l.durable) == nil {
			l.size = l.durable
		}
		l.ring.unwritten(l.unflushed)
		l.lost += l.unflushed
		l.unflushed = 0
		return
	}
	l.durable = l.size
	if l.unflushed > 0 && l.err != nil {
		l.logf("logs: %s is written again after %s; %d lines are missing from it (initctl logs still shows those the ring holds)",
			l.path, time.Since(l.errSince).Round(time.Second), l.lost)
		l.err, l.lost = nil, 0
	}
	l.unflushed = 0
}

// setErr records a failure of the file; the first of an outage is
// reported, and so is a change of cause.
func (l *Log) setErr(err error) {
	switch {
	case l.err == nil:
		l.errSince = time.Now()
		l.logf("logs: %v; lines are kept in memory only until it can be written again", err)
	case l.err.Error() != err.Error():
		l.logf("logs: %v", err)
	}
	l.err = err
}

func (l *Log) logf(format string, args ...any) {
	if l.cfg.Logf != nil {
		l.cfg.Logf(format, args...)
		return
	}
	w := l.cfg.Console
	if w == nil {
		w = os.Stderr
	}
	fmt.Fprintf(w, format+"\n", args...)
}

// rotateLocked shifts name.log -> name.log.1 -> ... -> name.log.(MaxFiles-1),
// dropping the oldest, and starts an empty name.log. With MaxFiles 1 the file
// is truncated instead.
func (l *Log) rotateLocked() {
	if l.f == nil {
		return
	}
	l.flushLocked()
	l.gen++
	if l.cfg.MaxFiles <= 1 {
		if err := l.f.Truncate(0); err != nil {
			l.setErr(fmt.Errorf("truncating %s: %w", l.path, err))
			return
		}
		l.size, l.durable = 0, 0
		return
	}
	l.f.Close()
	l.f = nil
	if err := removeIn(l.dir, l.fileName(l.cfg.MaxFiles-1)); err != nil && !errors.Is(err, os.ErrNotExist) {
		l.setErr(fmt.Errorf("removing old log: %w", err))
	}
	for i := l.cfg.MaxFiles - 2; i >= 0; i-- {
		if err := renameIn(l.dir, l.fileName(i), l.fileName(i+1)); err != nil && !errors.Is(err, os.ErrNotExist) {
			l.setErr(fmt.Errorf("rotating: %w", err))
		}
	}
	if err := l.openFile(); err != nil {
		l.setErr(err)
		return
	}
	l.aim()
}

// fileName is the name in the log directory of file i: 0 is the live
// file, 1 the newest rotated one.
func (l *Log) fileName(i int) string {
	if i == 0 {
		return l.name + ".log"
	}
	return l.name + ".log." + strconv.Itoa(i)
}

// numbered is the path of file i.
func (l *Log) numbered(i int) string { return filepath.Join(l.cfg.Dir, l.fileName(i)) }

// Clear empties the live file, removes the rotated ones and empties the ring.
func (l *Log) Clear() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var errs []error
	if l.f != nil {
		l.unflushed = 0
		if err := l.f.Truncate(0); err != nil {
			errs = append(errs, fmt.Errorf("truncating %s: %w", l.path, err))
		}
	} else if f, err := openIn(l.dir, l.fileName(0), os.O_WRONLY, 0); err == nil {
		if err := f.Truncate(0); err != nil {
			errs = append(errs, fmt.Errorf("truncating %s: %w", l.path, err))
		}
		f.Close()
	}
	l.size, l.durable = 0, 0
	l.gen += int64(l.cfg.MaxFiles) // nothing written before is in a file now
	if _, err := l.dir.Seek(0, io.SeekStart); err != nil {
		errs = append(errs, fmt.Errorf("listing %s: %w", l.cfg.Dir, err))
	}
	names, err := l.dir.Readdirnames(-1)
	if err != nil {
		errs = append(errs, fmt.Errorf("listing %s: %w", l.cfg.Dir, err))
	}
	for _, name := range names {
		if _, err := strconv.Atoi(strings.TrimPrefix(name, l.name+".log.")); err != nil || !strings.HasPrefix(name, l.name+".log.") {
			continue // not one of ours (name.log.bak, ...)
		}
		if err := removeIn(l.dir, name); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	l.ring.reset()
	return errors.Join(errs...)
}

// Flush fsyncs the file. Nothing waits in a buffer: every batch of lines
// is written when it is stored.
func (l *Log) Flush() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return l.err
	}
	// Nothing is buffered between stores: each flushes its batch.
	if err := l.f.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", l.path, err)
	}
	return nil
}

// Close flushes and closes the file and closes every subscription's channel.
// Capture goroutines still running discard what they read from then on.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	for sub := range l.subs {
		sub.closeLocked()
	}
	defer l.dir.Close()
	if l.f == nil {
		return nil
	}
	err := l.f.Sync() // nothing is buffered between stores
	if cerr := l.f.Close(); err == nil {
		err = cerr
	}
	l.f = nil
	if err != nil {
		return fmt.Errorf("closing %s: %w", l.path, err)
	}
	return nil
}

// Subscription receives every line stored after Subscribe, until it or the
// Log is closed.
type Subscription struct {
	l      *Log
	ch     chan Event
	missed uint64
	closed bool
	// queued remembers the sizes of the lines waiting in ch, oldest
	// first, so that they never hold more than MaxQueuedBytes.
	queued sizeQueue
}

// MaxQueuedBytes bounds the lines waiting for one subscriber that does not
// keep up, whatever their length: beyond it lines are dropped and counted
// in Missed, as when the channel is full.
const MaxQueuedBytes = 256 * 1024

func newSubscription(l *Log, buffer int) *Subscription {
	if buffer < 1 {
		buffer = DefaultBuffer
	}
	return &Subscription{l: l, ch: make(chan Event, buffer), queued: sizeQueue{sizes: make([]int, buffer)}}
}

// Subscribe starts delivering new lines on a channel of the given buffer size
// (DefaultBuffer when buffer < 1). Delivery never blocks the log: when the
// channel is full the line is dropped for this subscriber and counted in the
// next Event's Missed.
func (l *Log) Subscribe(buffer int) *Subscription {
	s := newSubscription(l, buffer)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		s.closeLocked()
		return s
	}
	l.subs[s] = struct{}{}
	return s
}

// C returns the channel of lines; it is closed when the subscription or the
// Log is closed.
func (s *Subscription) C() <-chan Event { return s.ch }

// Close stops delivery and closes the channel. It may be called more than
// once.
func (s *Subscription) Close() {
	s.l.mu.Lock()
	defer s.l.mu.Unlock()
	s.closeLocked()
}

func (s *Subscription) closeLocked() {
	if s.closed {
		return
	}
	s.closed = true
	delete(s.l.subs, s)
	close(s.ch)
}

// send delivers without blocking; s.l.mu is held.
func (s *Subscription) send(line string) {
	// Forget the lines the reader has taken since: ch holds the newest
	// len(ch) of those queued. The reader only ever shortens ch, so a
	// concurrent receive makes this count low, never high.
	s.queued.forget(s.queued.n - len(s.ch))
	if s.queued.bytes+len(line) > MaxQueuedBytes {
		s.missed++
		return
	}
	select {
	case s.ch <- Event{Line: line, Missed: s.missed}:
		s.missed = 0
		s.queued.push(len(line))
	default:
		s.missed++
	}
}

// sizeQueue is a FIFO of line sizes, as long as the channel it accounts for.
type sizeQueue struct {
	sizes   []int
	head, n int
	bytes   int
}

func (q *sizeQueue) push(size int) {
	q.sizes[(q.head+q.n)%len(q.sizes)] = size
	q.n++
	q.bytes += size
}

func (q *sizeQueue) forget(k int) {
	for ; k > 0 && q.n > 0; k-- {
		q.bytes -= q.sizes[q.head]
		q.head = (q.head + 1) % len(q.sizes)
		q.n--
	}
}

// stamp caches the formatted date and time down to the second, so that a
// line costs only six digits of formatting.
type stamp struct {
	sec int64
	buf [30]byte // "[2006-01-02T15:04:05.000000Z] "
	ok  bool
}

func (s *stamp) format(t time.Time) []byte {
	t = t.UTC()
	if sec := t.Unix(); !s.ok || sec != s.sec {
		s.sec, s.ok = sec, true
		t.AppendFormat(s.buf[:0], "[2006-01-02T15:04:05.")
		s.buf[27], s.buf[28], s.buf[29] = 'Z', ']', ' '
	}
	us := t.Nanosecond() / 1000
	for i := 26; i >= 21; i-- {
		s.buf[i] = byte('0' + us%10)
		us /= 10
	}
	return s.buf[:]
}
