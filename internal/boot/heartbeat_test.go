package boot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nitroinit/nitroinit/internal/wait"
)

// serveHeartbeat accepts connections on l and runs answer on each.
func serveHeartbeat(t *testing.T, l net.Listener, answer func(net.Conn)) {
	t.Helper()
	done := make(chan struct{})
	t.Cleanup(func() { l.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				answer(c)
			}()
		}
	}()
}

// echoOne reads the enclave's byte and answers with reply.
func echoOne(reply byte) func(net.Conn) {
	return func(c net.Conn) {
		var b [1]byte
		if _, err := io.ReadFull(c, b[:]); err != nil || b[0] != HeartbeatByte {
			return
		}
		c.Write([]byte{reply})
	}
}

func dialer(network, addr string) func(context.Context) (net.Conn, error) {
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
}

func TestHeartbeatReal(t *testing.T) {
	tests := []struct {
		name    string
		network string
		answer  func(net.Conn) // nil: nobody listens
		// timeout, when set, is the deadline under test; otherwise the
		// heartbeat just has to finish, within one stall interval.
		timeout time.Duration
		wantErr error // nil: success
	}{
		{name: "tcp echo", network: "tcp", answer: echoOne(HeartbeatByte)},
		{name: "unix echo", network: "unix", answer: echoOne(HeartbeatByte)},
		{name: "wrong byte", network: "tcp", answer: echoOne(0x42), wantErr: ErrWrongHeartbeat},
		{
			name: "silent peer times out", network: "unix", timeout: 200 * time.Millisecond, wantErr: os.ErrDeadlineExceeded,
			answer: func(c net.Conn) { io.Copy(io.Discard, c) },
		},
		{
			// The peer reads the byte first: closing with unread data would
			// send a reset instead of a clean end of stream.
			name: "peer closes without answering", network: "tcp", wantErr: io.EOF,
			answer: func(c net.Conn) { c.Read(make([]byte, 1)) },
		},
		{name: "nobody listening", network: "unix", timeout: 300 * time.Millisecond, wantErr: context.DeadlineExceeded},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var addr string
			switch tc.network {
			case "tcp":
				l, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				addr = l.Addr().String()
				serveHeartbeat(t, l, tc.answer)
			case "unix":
				addr = filepath.Join(t.TempDir(), "hb.sock_9000")
				if tc.answer != nil {
					l, err := net.Listen("unix", addr)
					if err != nil {
						t.Fatal(err)
					}
					serveHeartbeat(t, l, tc.answer)
				}
			}
			ctx, cancel := wait.Limits{}.Context(context.Background(), "the heartbeat")
			if tc.timeout > 0 {
				ctx, cancel = context.WithTimeout(context.Background(), tc.timeout)
			}
			defer cancel()
			err := Heartbeat(ctx, dialer(tc.network, addr))
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("Heartbeat: %v", err)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Heartbeat error = %v, want %v", err, tc.wantErr)
			}
		})
	}
}

// TestHeartbeatRetriesUntilListener starts the host side only after the
// enclave has begun dialing, as happens when nitro-cli is slow to listen.
func TestHeartbeatRetriesUntilListener(t *testing.T) {
	path := filepath.Join(t.TempDir(), "v.sock_9000")
	attempts := make(chan struct{}, 100)
	dial := func(ctx context.Context) (net.Conn, error) {
		attempts <- struct{}{}
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}
	ctx, cancel := wait.Limits{}.Context(context.Background(), "the heartbeat")
	defer cancel()
	result := make(chan error, 1)
	go func() { result <- Heartbeat(ctx, dial) }()
	// Wait for two refused attempts before listening.
	n := 0
	wait.For(t, "two refused dial attempts", func() (bool, string) {
		for {
			select {
			case <-attempts:
				n++
			default:
				return n >= 2, fmt.Sprintf("%d attempts", n)
			}
		}
	})
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	serveHeartbeat(t, l, echoOne(HeartbeatByte))
	wait.For(t, "Heartbeat to return", wait.Receive(result, &err))
	if err != nil {
		t.Fatalf("Heartbeat after a late listener: %v", err)
	}
}

// TestHeartbeatCancelWithoutDeadline checks that cancelling a context that
// has no deadline still unblocks the read.
func TestHeartbeatCancelWithoutDeadline(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan struct{})
	serveHeartbeat(t, l, func(c net.Conn) {
		// Signal only once the byte arrived: then the enclave side is past
		// its dial and waiting for the reply.
		var b [1]byte
		io.ReadFull(c, b[:])
		close(accepted)
		io.Copy(io.Discard, c)
	})
	ctx, cancel := context.WithCancel(context.Background())
	result := make(chan error, 1)
	go func() { result <- Heartbeat(ctx, dialer("tcp", l.Addr().String())) }()
	wait.For(t, "the heartbeat byte at the host", wait.Receive(accepted, nil))
	cancel()
	wait.For(t, "Heartbeat to return after cancel", wait.Receive(result, &err))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Heartbeat after cancel = %v, want a deadline error", err)
	}
}
