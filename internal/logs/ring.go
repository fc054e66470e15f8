package logs

// ring keeps the last formatted lines, bounded both in lines and in bytes,
// reusing their buffers. Each line remembers the file generation it was
// written in (or -1 when it never reached the file), so that a reader can
// tell which of the newest lines the files also hold.
type ring struct {
	// slots grows towards lines as lines arrive, so that a service that
	// writes little does not hold (and touch) a slot for every line it
	// might keep.
	slots    []slot
	lines    int // lines kept at most
	head, n  int // oldest slot, number of lines held
	bytes    int // bytes held by the n lines
	maxBytes int
}

type slot struct {
	b   []byte
	gen int64 // rotation generation of the file it went to; -1: not in a file
}

func newRing(lines, maxBytes int) ring {
	return ring{lines: lines, maxBytes: maxBytes}
}

// firstSlots is how many slots a ring has before it grows.
const firstSlots = 8

// add stores one line; gen is as in slot.
func (r *ring) add(prefix, line []byte, gen int64) {
	if r.lines == 0 {
		return
	}
	need := len(prefix) + len(line)
	if need > r.maxBytes {
		return // would not fit even alone (maxBytes is never below a line)
	}
	if r.n == len(r.slots) && len(r.slots) < r.lines {
		r.grow()
	}
	for r.n > 0 && (r.n == len(r.slots) || r.bytes+need > r.maxBytes) {
		r.dropOldest()
	}
	i := (r.head + r.n) % len(r.slots)
	r.n++
	b := r.slots[i].b[:0]
	if cap(b) > 4096 && need < 1024 {
		b = nil // do not let one long line pin a big buffer forever
	}
	b = append(append(b, prefix...), line...)
	r.slots[i] = slot{b: b, gen: gen}
	r.bytes += need
}

// grow doubles the slots (up to lines), the oldest line first.
func (r *ring) grow() {
	slots := make([]slot, min(max(2*len(r.slots), firstSlots), r.lines))
	for k := 0; k < r.n; k++ {
		slots[k] = *r.at(k)
	}
	r.slots, r.head = slots, 0
}

func (r *ring) dropOldest() {
	r.bytes -= len(r.slots[r.head].b)
	r.slots[r.head].b = r.slots[r.head].b[:0]
	r.head = (r.head + 1) % len(r.slots)
	r.n--
}

func (r *ring) at(k int) *slot { return &r.slots[(r.head+k)%len(r.slots)] }

// last returns copies of the last n lines, oldest first.
func (r *ring) last(n int) [][]byte {
	n = min(n, r.n)
	out := make([][]byte, n)
	for k := 0; k < n; k++ {
		out[k] = append([]byte(nil), r.at(r.n-n+k).b...)
	}
	return out
}

// unwritten marks the newest n lines as not in the file (a failed flush).
func (r *ring) unwritten(n int) {
	for k := max(0, r.n-n); k < r.n; k++ {
		r.at(k).gen = -1
	}
}

// inFiles counts the lines that the files still hold: written in one of the
// last maxFiles generations.
func (r *ring) inFiles(gen int64, maxFiles int) int {
	c := 0
	for k := 0; k < r.n; k++ {
		if g := r.at(k).gen; g >= 0 && gen-g < int64(maxFiles) {
			c++
		}
	}
	return c
}

func (r *ring) reset() {
	for r.n > 0 {
		r.dropOldest()
	}
	r.head = 0
}
