package forward

import (
	"fmt"
	"sync"
	"time"
)

// rateLog passes at most burst lines per period to logf and counts the rest,
// so that a client hammering a refused target cannot flood the log (or the
// disk behind it). The count is reported with the next line that passes.
type rateLog struct {
	logf   func(string, ...any)
	burst  int
	period time.Duration

	mu         sync.Mutex
	start      time.Time
	n          int
	suppressed int
}

func newRateLog(logf func(string, ...any), burst int, period time.Duration) *rateLog {
	return &rateLog{logf: logf, burst: burst, period: period}
}

func (r *rateLog) printf(format string, args ...any) {
	r.mu.Lock()
	now := time.Now()
	if now.Sub(r.start) >= r.period {
		r.start, r.n = now, 0
	}
	if r.n >= r.burst {
		r.suppressed++
		r.mu.Unlock()
		return
	}
	r.n++
	dropped := r.suppressed
	r.suppressed = 0
	r.mu.Unlock()
	msg := fmt.Sprintf(format, args...)
	if dropped > 0 {
		msg += fmt.Sprintf(" (%d similar lines suppressed)", dropped)
	}
	r.logf("forward: %s", msg)
}
