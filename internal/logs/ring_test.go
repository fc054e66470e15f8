package logs

import (
	"fmt"
	"strings"
	"testing"
)

// numberedLines returns n lines "p0", "p1", ... for prefix p.
func numberedLines(p string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%d", p, i)
	}
	return out
}

// The ring grows its slots as lines arrive; growing keeps the lines in
// order, also after the byte bound has moved its head.
func TestRingGrowsInOrder(t *testing.T) {
	long := strings.Repeat("x", 20)
	tests := []struct {
		name            string
		lines, maxBytes int
		add             []string
		want            string
		slots           int // len(slots) after the adds
	}{
		{"fewer than the first slots", 1000, 1 << 20, numberedLines("a", 3), "a0 a1 a2", firstSlots},
		{"grown twice", 1000, 1 << 20, numberedLines("a", 20), strings.Join(numberedLines("a", 20), " "), 4 * firstSlots},
		{"capped at lines", 10, 1 << 20, numberedLines("a", 25), "a15 a16 a17 a18 a19 a20 a21 a22 a23 a24", 10},
		{
			// The byte bound drops the first two long lines, moving the
			// head on; short ones then fill the slots round the end, and
			// the ring grows from a moved head.
			"grows after the head moved", 1000, 40,
			append([]string{long, long, long}, numberedLines("b", 9)...),
			long + " b0 b1 b2 b3 b4 b5 b6 b7 b8", 2 * firstSlots,
		},
		{"no lines", 0, 1 << 20, numberedLines("a", 5), "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRing(tt.lines, tt.maxBytes)
			for _, l := range tt.add {
				r.add(nil, []byte(l), 0)
			}
			var got []string
			for _, b := range r.last(tt.lines) {
				got = append(got, string(b))
			}
			if g := strings.Join(got, " "); g != tt.want {
				t.Errorf("lines = %q, want %q", g, tt.want)
			}
			if len(r.slots) != tt.slots {
				t.Errorf("%d slots, want %d", len(r.slots), tt.slots)
			}
		})
	}
}
