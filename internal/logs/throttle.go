package logs

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"
)

// ThrottleWindow is how often a Throttle summarises what it held back.
const ThrottleWindow = 10 * time.Second

// maxThrottleKeys bounds the senders a Throttle tells apart in one window;
// the rest are counted together as "others".
const maxThrottleKeys = 16

// Throttle keeps a flood of one kind of event (refused connections, foreign
// notifications) from filling init's log: the first event of each key in a
// window is logged in full, the others are counted and summarised in one
// line when the window ends ("ignored 27431 notifications from pid 812 in
// the last 10s"). Its memory is bounded whatever the flood. The zero value
// is not usable; create it with NewThrottle.
type Throttle struct {
	what   string // plural noun for the summary, such as "notifications"
	window time.Duration
	logf   func(format string, args ...any)

	mu     sync.Mutex
	counts map[string]int // events held back this window, by key
	timer  *time.Timer
}

// NewThrottle returns a Throttle that logs through logf; what names the
// events in the summary.
func NewThrottle(what string, window time.Duration, logf func(format string, args ...any)) *Throttle {
	return &Throttle{what: what, window: window, logf: logf, counts: map[string]int{}}
}

// Event reports one event from key (a sender, such as "uid 65534"). The
// first of a window per key is logged with format and args; the rest are
// counted.
func (t *Throttle) Event(key, format string, args ...any) {
	t.mu.Lock()
	n, seen := t.counts[key]
	switch {
	case !seen && len(t.counts) >= maxThrottleKeys:
		t.counts["others"]++
	case seen:
		t.counts[key] = n + 1
	default:
		t.counts[key] = 0
	}
	if t.timer == nil {
		t.timer = time.AfterFunc(t.window, t.flush)
	}
	first := !seen && len(t.counts) <= maxThrottleKeys // read under the lock: a concurrent Event writes the map
	t.mu.Unlock()
	if first {
		t.logf(format, args...)
	}
}

// flush logs the window's summary and starts a new window.
func (t *Throttle) flush() {
	t.mu.Lock()
	counts := t.counts
	t.counts = map[string]int{}
	t.timer = nil
	t.mu.Unlock()
	var parts []string
	total := 0
	for k, n := range counts {
		if n > 0 {
			parts = append(parts, fmt.Sprintf("%d from %s", n, k))
			total += n
		}
	}
	if total == 0 {
		return
	}
	sort.Strings(parts)
	t.logf("ignored %d more %s in the last %v (%s)", total, t.what, t.window, strings.Join(parts, ", "))
}

// Stop ends the current window without a summary.
func (t *Throttle) Stop() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.timer != nil {
		t.timer.Stop()
		t.timer = nil
	}
}
