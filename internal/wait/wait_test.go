package wait

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestUntil(t *testing.T) {
	short := Limits{Stall: 30 * time.Millisecond, Cap: 300 * time.Millisecond, Poll: 5 * time.Millisecond}
	tests := []struct {
		name   string
		limits Limits
		ctx    func() context.Context
		check  func() Check
		want   error // nil: the wait succeeds
		seen   string
	}{
		{
			name:  "holds at once",
			check: func() Check { return Bool(func() bool { return true }) },
		},
		{
			name:   "holds after moving",
			limits: short,
			check: func() Check {
				n := 0
				return func() (bool, string) { n++; return n == 20, strconv.Itoa(n) }
			},
		},
		{
			name:   "nothing moves",
			limits: short,
			check:  func() Check { return func() (bool, string) { return false, "stuck at 3" } },
			want:   ErrStalled,
			seen:   "stuck at 3",
		},
		{
			name:   "moves forever",
			limits: short,
			check: func() Check {
				n := 0
				return func() (bool, string) { n++; return false, strconv.Itoa(n) }
			},
			want: ErrCap,
		},
		{
			name: "progress signal keeps it alive",
			limits: func() Limits {
				l := short
				n := int64(0)
				l.Progress = func() int64 { n++; return n }
				return l
			}(),
			check: func() Check { return func() (bool, string) { return false, "same" } },
			want:  ErrCap,
			seen:  "same",
		},
		{
			name: "context ends",
			ctx: func() context.Context {
				ctx, cancel := context.WithCancel(context.Background())
				cancel()
				return ctx
			},
			check: func() Check { return func() (bool, string) { return false, "" } },
			want:  context.Canceled,
		},
		{
			name:   "channel closed",
			limits: short,
			check: func() Check {
				ch := make(chan struct{})
				close(ch)
				return Receive(ch, nil)
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			if tt.ctx != nil {
				ctx = tt.ctx()
			}
			err := tt.limits.Until(ctx, "the thing", tt.check())
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Until: %v, want success", err)
				}
				return
			}
			var we *Error
			if !errors.As(err, &we) || !errors.Is(err, tt.want) {
				t.Fatalf("Until: %v, want an *Error caused by %v", err, tt.want)
			}
			if we.What != "the thing" || (tt.seen != "" && we.Seen != tt.seen) {
				t.Errorf("error %+v, want What %q and Seen %q", we, "the thing", tt.seen)
			}
		})
	}
}

func TestContext(t *testing.T) {
	short := Limits{Stall: 30 * time.Millisecond, Poll: 5 * time.Millisecond}
	// Nothing moves: the context ends, and says why.
	ctx, cancel := short.Context(context.Background(), "the guest")
	defer cancel()
	<-ctx.Done()
	if cause := context.Cause(ctx); !errors.Is(cause, ErrStalled) {
		t.Errorf("cause %v, want ErrStalled", cause)
	}
	// Moving: it lives until the progress stops.
	n := int64(0)
	moving := short
	moving.Progress = func() int64 {
		if n < 20 {
			n++
		}
		return n
	}
	ctx, cancel = moving.Context(context.Background(), "the guest")
	defer cancel()
	<-ctx.Done()
	if cause := context.Cause(ctx); !errors.Is(cause, ErrStalled) || n != 20 {
		t.Errorf("cause %v after %d changes, want ErrStalled after 20", cause, n)
	}
}

func TestConn(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	c := Limits{Stall: 500 * time.Millisecond}.Conn(a)
	// A slow writer that keeps moving: every byte arrives.
	go func() {
		for i := 0; i < 5; i++ {
			time.Sleep(10 * time.Millisecond)
			b.Write([]byte{'x'})
		}
	}()
	buf := make([]byte, 1)
	for i := 0; i < 5; i++ {
		if _, err := c.Read(buf); err != nil {
			t.Fatalf("read %d of a moving peer: %v", i, err)
		}
	}
	// Then nothing: the read fails as a timeout that names the stall.
	_, err := c.Read(buf)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !strings.Contains(err.Error(), "nothing moved for 500ms") {
		t.Fatalf("read of a stalled peer: %v, want a timeout naming the stall", err)
	}
}
