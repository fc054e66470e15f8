// Package wait is how tests (and the initramfs demos, which run as
// tests too) wait: they poll a condition for as long as the thing they
// wait for keeps moving, and fail when it has not moved for a stated
// interval, not when a wall-clock deadline passes.
//
// A fixed deadline turns a slow machine into a red run: the same step that
// takes 2 s on a quiet machine takes 20 s beside other work, and a guest
// under TCG is slower still. What tells a hang from slowness is progress: a
// log that grows, a count that rises, a console that advances. A Check
// describes what it saw each time it is called; a change in that
// description (or in Limits.Progress) is progress and restarts the stall
// interval. Limits.Cap bounds the whole wait, generously, for a thing that
// moves forever without arriving.
package wait

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// Defaults for zero Limits fields. DefaultStall is long enough for a step
// that shows nothing while it runs (a process starting in a guest under TCG)
// on a machine ten times slower than the project's 2-core CI machine;
// DefaultCap for the longest wait there (the zombie storm, about 20 s on a
// quiet machine).
const (
	DefaultStall = 60 * time.Second
	DefaultCap   = 10 * time.Minute
	DefaultPoll  = 100 * time.Millisecond
)

// BootStall is the stall interval for a guest kernel's boot, up to the
// first thing its init prints or sends: the kernel runs with "quiet", so
// its console shows nothing for seconds on a quiet machine, over a minute
// beside other work under TCG.
const BootStall = 5 * time.Minute

// firstPoll is the first interval between checks; it doubles up to
// Limits.Poll, so a condition that holds almost at once costs little time
// and one that takes long costs few checks.
const firstPoll = 5 * time.Millisecond

// Check reports whether the awaited condition holds and describes what it
// saw: a state, a count, the lines of a log. The description is progress
// when it changes, and is the "last seen" of a failure; a Check with
// nothing to describe returns "" and relies on Limits.Progress or Stall.
// Describe the thing awaited, not the clock: a description that changes at
// every call (a timestamp, an uptime) never stalls and waits until Cap.
type Check func() (done bool, seen string)

// Limits bound a wait. The zero value means the defaults.
type Limits struct {
	// Stall is how long the wait may see no progress before it fails.
	Stall time.Duration
	// Cap bounds the whole wait, progress or not.
	Cap time.Duration
	// Poll is the longest interval between two checks.
	Poll time.Duration
	// Progress, when set, is read at every check: a change in its value is
	// progress too. Use it for a sign of life other than what the Check
	// describes, such as the length of a guest's console or of a log file.
	Progress func() int64
}

// Error is a wait that ended without its condition.
type Error struct {
	What    string        // what was awaited
	Seen    string        // the last description the Check gave
	Waited  time.Duration // the whole wait
	Stalled time.Duration // how long nothing moved at the end
	Cause   error         // ErrStalled, ErrCap or the context's error
}

// Causes of an Error.
var (
	ErrStalled = fmt.Errorf("no progress")
	ErrCap     = fmt.Errorf("overall cap reached while still moving")
)

func (e *Error) Error() string {
	s := fmt.Sprintf("waiting for %s: %v (nothing moved for %s, %s in all)", e.What, e.Cause,
		e.Stalled.Round(time.Millisecond), e.Waited.Round(time.Millisecond))
	if e.Seen != "" {
		s += "; last seen: " + e.Seen
	}
	return s
}

func (e *Error) Unwrap() error { return e.Cause }

func (l Limits) withDefaults() Limits {
	if l.Stall <= 0 {
		l.Stall = DefaultStall
	}
	if l.Cap <= 0 {
		l.Cap = DefaultCap
	}
	if l.Poll <= 0 {
		l.Poll = DefaultPoll
	}
	return l
}

// Until calls check until it reports done, and returns nil then. It returns
// an *Error when nothing has moved for l.Stall, when l.Cap has passed or
// when ctx ends.
func (l Limits) Until(ctx context.Context, what string, check Check) error {
	l = l.withDefaults()
	start := time.Now()
	moved := start
	var seen string
	var mark int64
	if l.Progress != nil {
		mark = l.Progress()
	}
	poll := firstPoll
	for i := 0; ; i++ {
		done, s := check()
		if done {
			return nil
		}
		now := time.Now()
		if i == 0 || s != seen {
			seen, moved = s, now
		}
		if l.Progress != nil {
			if m := l.Progress(); m != mark {
				mark, moved = m, now
			}
		}
		var cause error
		switch {
		case now.Sub(moved) >= l.Stall:
			cause = ErrStalled
		case now.Sub(start) >= l.Cap:
			cause = ErrCap
		case ctx.Err() != nil:
			cause = ctx.Err()
		}
		if cause != nil {
			return &Error{What: what, Seen: seen, Waited: now.Sub(start), Stalled: now.Sub(moved), Cause: cause}
		}
		t := time.NewTimer(poll)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
		poll = min(2*poll, l.Poll)
	}
}

// For is Until for a test: it fails t with the error.
func (l Limits) For(t testing.TB, what string, check Check) {
	t.Helper()
	if err := l.Until(context.Background(), what, check); err != nil {
		t.Fatal(err)
	}
}

// Until waits with the default limits.
func Until(ctx context.Context, what string, check Check) error {
	return Limits{}.Until(ctx, what, check)
}

// For waits with the default limits and fails t when the wait fails.
func For(t testing.TB, what string, check Check) {
	t.Helper()
	Limits{}.For(t, what, check)
}

// Bool turns a condition with nothing to describe into a Check.
func Bool(cond func() bool) Check {
	return func() (bool, string) { return cond(), "" }
}

// Receive is a Check that holds once a value arrives on ch or ch is
// closed; the value goes to *v when v is not nil.
func Receive[T any](ch <-chan T, v *T) Check {
	return func() (bool, string) {
		select {
		case x := <-ch:
			if v != nil {
				*v = x
			}
			return true, ""
		default:
			return false, ""
		}
	}
}

// Context returns a context for an API that takes one (a dial, a request,
// a VM's Heartbeat) that ends when l.Progress has not changed for l.Stall,
// or when l.Cap has passed; its cause (context.Cause) is then an *Error
// about what. Without l.Progress nothing counts as progress, and the
// context ends after l.Stall. Call cancel when done.
func (l Limits) Context(parent context.Context, what string) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(parent)
	lim := l
	lim.Progress = nil
	go func() {
		var mark int64
		if l.Progress != nil {
			mark = l.Progress()
		}
		err := lim.Until(ctx, what, func() (bool, string) {
			if ctx.Err() != nil {
				return true, ""
			}
			if l.Progress != nil {
				mark = l.Progress()
			}
			return false, fmt.Sprint(mark)
		})
		cancel(err)
	}()
	return ctx, func() { cancel(context.Canceled) }
}
