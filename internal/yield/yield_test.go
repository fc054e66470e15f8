package yield

import (
	"testing"
	"time"
)

func TestPacerYieldsOncePerInterval(t *testing.T) {
	var p Pacer
	p.Maybe() // the zero time is long ago: yields
	first := p.last
	if first.IsZero() {
		t.Fatal("the first call did not yield")
	}
	p.Maybe() // within the interval: does not
	if p.last != first {
		t.Fatalf("yielded again after %v, want not before %v", p.last.Sub(first), Interval)
	}
	p.last = first.Add(-Interval) // as if Interval had passed
	p.Maybe()
	if !p.last.After(first.Add(-time.Nanosecond)) {
		t.Fatalf("did not yield once %v had passed", Interval)
	}
}
