// Package yield keeps a goroutine that goes from one blocking system call
// to the next from looking, to the Go runtime, like one that never stops
// running.
//
// Such a loop (a reaper in waitid, a device server in read) never parks:
// it stays on the same processor (P), so the P's scheduling tick never
// changes. Once the runtime's sysmon thread has seen the same tick for
// 10 ms (forcePreemptNS in runtime/proc.go), it treats the goroutine as
// long-running and, finding it in a system call, takes its P away at once
// at each of its next calls rather than after the usual 10 ms. With every
// P idle, sysmon then sleeps deeply, and the goroutine's return from its
// system call, finding its P gone, takes an idle one and must wake sysmon
// through a futex to do so; sysmon then polls every 20 µs for a while. On
// init's reaper, perf counted a sysmon wake-up, a futex pair and a
// nanosleep on most exits: a third of its CPU time per exit
// (docs/benchmarks.md, row 1). A runtime.Gosched advances the tick; it
// costs a wake-up of another thread itself, so a Pacer does it at most
// once per Interval.
package yield

import (
	"runtime"
	"time"
)

// Interval is how long a paced goroutine may go without passing through
// the scheduler: half the runtime's 10 ms time slice, so that sysmon sees
// the tick move between any two of its looks.
const Interval = 5 * time.Millisecond

// Pacer passes through the scheduler at most once per Interval. The zero
// value is ready to use; a Pacer belongs to one goroutine.
type Pacer struct{ last time.Time }

// Maybe calls runtime.Gosched if Interval has passed since it last did.
// Call it before each blocking system call of the loop.
func (p *Pacer) Maybe() {
	if now := time.Now(); now.Sub(p.last) >= Interval {
		runtime.Gosched()
		p.last = now
	}
}
