package boot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/nitroinit/nitroinit/internal/nitro"
)

// HeartbeatByte is what the enclave sends and the parent echoes back.
const HeartbeatByte = nitro.HeartbeatByte

// Dial retry backoff: nitro-cli starts listening around the time the enclave
// boots, so early dials may be refused.
const (
	dialBackoffMin = 50 * time.Millisecond
	dialBackoffMax = time.Second
)

// ErrWrongHeartbeat reports a peer that answered something other than 0xB7.
var ErrWrongHeartbeat = errors.New("wrong heartbeat reply")

// Heartbeat connects with dial, retrying until ctx ends, writes 0xB7 and
// expects 0xB7 back before ctx ends. Only dial failures are retried: a peer
// that accepted and then misbehaved is reported at once.
func Heartbeat(ctx context.Context, dial func(context.Context) (net.Conn, error)) error {
	backoff := dialBackoffMin
	for attempt := 1; ; attempt++ {
		conn, err := dial(ctx)
		if err == nil {
			return exchangeHeartbeat(ctx, conn)
		}
		if ctx.Err() != nil {
			return fmt.Errorf("no connection after %d dial attempts (%w); last error: %v", attempt, ctx.Err(), err)
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("no connection after %d dial attempts (%w); last error: %v", attempt, ctx.Err(), err)
		case <-t.C:
		}
		backoff = min(2*backoff, dialBackoffMax)
	}
}

func exchangeHeartbeat(ctx context.Context, conn net.Conn) error {
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	// A cancelled ctx without a deadline must still unblock the read.
	stop := context.AfterFunc(ctx, func() {
		defer func() { recover() }() // runs in PID 1: never crash it
		conn.SetDeadline(time.Now())
	})
	defer stop()
	if _, err := conn.Write([]byte{HeartbeatByte}); err != nil {
		return fmt.Errorf("send heartbeat byte: %w", err)
	}
	var reply [1]byte
	if _, err := io.ReadFull(conn, reply[:]); err != nil {
		return fmt.Errorf("no heartbeat reply: %w", err)
	}
	if reply[0] != HeartbeatByte {
		return fmt.Errorf("%w: got %#02x, want %#02x (is something other than nitro-cli listening?)", ErrWrongHeartbeat, reply[0], HeartbeatByte)
	}
	return nil
}

// heartbeat runs the heartbeat step with Config's address and timeout.
func (b *booter) heartbeat(ctx context.Context) error {
	if !b.cfg.Heartbeat {
		b.res.Heartbeat = "disabled"
		b.logf("boot: heartbeat disabled (vsock.enabled is false)")
		return nil
	}
	cid, port := b.cfg.HeartbeatCID, b.cfg.HeartbeatPort
	err := b.step("heartbeat", func() error {
		hctx, cancel := context.WithTimeout(ctx, b.cfg.HeartbeatTimeout)
		defer cancel()
		b.logf("boot: heartbeat to %d:%d (waiting up to %s for the parent)", cid, port, b.cfg.HeartbeatTimeout)
		start := time.Now()
		err := Heartbeat(hctx, func(ctx context.Context) (net.Conn, error) {
			return b.ops.DialVsock(ctx, cid, port)
		})
		took := roundDuration(time.Since(start))
		if err != nil {
			return fmt.Errorf("heartbeat to %d:%d (timeout %s): %w", cid, port, b.cfg.HeartbeatTimeout, err)
		}
		b.res.Heartbeat = fmt.Sprintf("ok in %s", took)
		b.logf("boot: heartbeat to %d:%d ok in %s", cid, port, took)
		return nil
	})
	if err != nil {
		b.res.Heartbeat = "failed: " + err.Error()
	}
	return b.fatal(PolicyHeartbeat, err)
}
