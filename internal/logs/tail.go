package logs

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
)

// tailChunk is the buffer a Tail reads through, backwards to find where its
// lines start and forwards to deliver them; a stored line longer than this
// (not one init wrote) is delivered in pieces of this size.
const tailChunk = 64 * 1024

// Tail is a snapshot of the last lines of a log, taken at one instant
// (Lines, Follow) and delivered later by Each without holding the log's
// lock. It holds the log files open, so rotation or removal after the
// snapshot does not change what it delivers, and its memory is bounded by a
// constant (two tailChunk buffers plus at most RingBytes of copied lines),
// whatever the number of lines asked for or the size of the files.
type Tail struct {
	files []tailFile // oldest first
	skip  int        // newest lines of the files that ring also holds
	need  int        // lines wanted from the files, before those
	ring  [][]byte   // newest lines, copied from memory
}

type tailFile struct {
	f    *os.File
	size int64 // at the snapshot: lines written later are not delivered
}

// Each calls fn with every line of the snapshot, oldest first, without the
// newline. line is valid only until fn returns. It stops at fn's first
// error and returns it; a read error ends the lines early and is returned.
// Each may be called once.
func (t *Tail) Each(fn func(line []byte) error) error {
	defer t.Close()
	if t.need > 0 && len(t.files) > 0 {
		buf := make([]byte, tailChunk)
		start, end, err := t.locate(buf)
		if err != nil {
			return err
		}
		if err := t.forward(start, end, buf, fn); err != nil {
			return err
		}
	}
	for _, line := range t.ring {
		if err := fn(line); err != nil {
			return err
		}
	}
	return nil
}

// Count returns an upper bound of the lines Each delivers, for sizing.
func (t *Tail) Count() int { return t.need + len(t.ring) }

// Close releases the files; Each calls it.
func (t *Tail) Close() {
	for _, f := range t.files {
		f.f.Close()
	}
	t.files = nil
}

// pos is a place in the snapshot's files.
type pos struct {
	file int
	off  int64
}

// locate reads the files backwards and returns where the wanted lines
// start and end: end is the start of the skip newest lines, start need
// lines before it (or the beginning of the oldest file).
func (t *Tail) locate(buf []byte) (start, end pos, err error) {
	last := len(t.files) - 1
	end = pos{last, t.files[last].size}
	count := 0 // line starts seen, from the end
	for i := last; i >= 0; i-- {
		size := t.files[i].size
		found := func(off int64) bool {
			count++
			switch {
			case count == t.skip:
				end = pos{i, off}
			case count == t.skip+t.need:
				start = pos{i, off}
				return true
			}
			return false
		}
		for hi := size; hi > 0; {
			lo := max(0, hi-int64(len(buf)))
			b := buf[:hi-lo]
			n, err := t.files[i].f.ReadAt(b, lo)
			if err != nil && !(errors.Is(err, io.EOF) && n == len(b)) {
				if errors.Is(err, io.EOF) {
					break // truncated since the snapshot
				}
				return pos{}, pos{}, fmt.Errorf("reading %s: %w", t.files[i].f.Name(), err)
			}
			for j := len(b) - 1; j >= 0; j-- {
				if b[j] == '\n' && lo+int64(j)+1 < size && found(lo+int64(j)+1) {
					return start, end, nil
				}
			}
			hi = lo
		}
		if size > 0 && found(0) {
			return start, end, nil
		}
	}
	if count <= t.skip {
		return end, end, nil // the files hold nothing older than the ring
	}
	return pos{0, 0}, end, nil
}

// forward delivers the lines between start and end.
func (t *Tail) forward(start, end pos, buf []byte, fn func([]byte) error) error {
	for i := start.file; i <= end.file; i++ {
		lo, hi := int64(0), t.files[i].size
		if i == start.file {
			lo = start.off
		}
		if i == end.file {
			hi = end.off
		}
		if hi <= lo {
			continue
		}
		r := bufio.NewReaderSize(io.NewSectionReader(t.files[i].f, lo, hi-lo), len(buf))
		for {
			line, err := r.ReadSlice('\n')
			if n := len(line); n > 0 && line[n-1] == '\n' {
				line = line[:n-1]
			}
			if len(line) > 0 || err == nil {
				if ferr := fn(line); ferr != nil {
					return ferr
				}
			}
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
				return fmt.Errorf("reading %s: %w", t.files[i].f.Name(), err)
			}
		}
	}
	return nil
}

// Lines returns the last n lines, oldest first: the ring's and, before
// them, the files' (rotated ones included), with no line twice. It is
// Tail(n) collected; see Tail for the bounds.
func (l *Log) Lines(n int) []string {
	t := l.Tail(n)
	var out []string
	t.Each(func(line []byte) error {
		out = append(out, string(line))
		return nil
	})
	return out
}

// Tail takes a snapshot of the last n lines. The log's lock is held only
// to flush, open the files and copy the lines held in memory; reading them
// happens in Each, without it.
func (l *Log) Tail(n int) *Tail {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.tailLocked(n)
}

// Follow returns the last n lines and a subscription to every line after
// them, taken together so that no line is missed or repeated between the
// two.
func (l *Log) Follow(n, buffer int) (*Tail, *Subscription) {
	s := newSubscription(l, buffer)
	l.mu.Lock()
	defer l.mu.Unlock()
	t := l.tailLocked(n)
	if l.closed {
		s.closeLocked()
	} else {
		l.subs[s] = struct{}{}
	}
	return t, s
}

func (l *Log) tailLocked(n int) *Tail {
	t := &Tail{}
	if n <= 0 {
		return t
	}
	t.ring = l.ring.last(n)
	if n <= l.ring.n {
		return t
	}
	t.need = n - l.ring.n
	t.skip = l.ring.inFiles(l.gen, l.cfg.MaxFiles)
	if l.dir == nil {
		return t
	}
	// The files hold every stored line: store writes each batch before it
	// returns, so nothing waits in a buffer here.
	for i := l.cfg.MaxFiles - 1; i >= 0; i-- {
		f, err := openIn(l.dir, l.fileName(i), os.O_RDONLY, 0)
		if err != nil {
			continue // missing, or a link or FIFO planted there: not ours
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			continue
		}
		t.files = append(t.files, tailFile{f, st.Size()})
	}
	return t
}
