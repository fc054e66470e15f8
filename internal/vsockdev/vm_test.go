package vsockdev_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nitroinit/nitroinit/internal/hvsock"
	"github.com/nitroinit/nitroinit/internal/vsockdev"
	"github.com/nitroinit/nitroinit/internal/wait"
)

// echoCheck sends total bytes through an echo stream while reading the echo
// concurrently, and compares byte for byte.
func echoCheck(c net.Conn, total int, seed uint64) error {
	werr := make(chan error, 1)
	go func() {
		gen := newByteStream(seed)
		buf := make([]byte, 61<<10) // odd size: chunks straddle packets
		for sent := 0; sent < total; {
			n := min(len(buf), total-sent)
			gen.fill(buf[:n])
			if _, err := c.Write(buf[:n]); err != nil {
				werr <- fmt.Errorf("write at %d: %w", sent, err)
				return
			}
			sent += n
		}
		werr <- c.(interface{ CloseWrite() error }).CloseWrite()
	}()
	gen := newByteStream(seed)
	buf := make([]byte, 47<<10)
	want := make([]byte, len(buf))
	got := 0
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if got+n > total {
				return fmt.Errorf("echo returned more than the %d bytes sent", total)
			}
			gen.fill(want[:n])
			if !bytes.Equal(buf[:n], want[:n]) {
				for i := range n {
					if buf[i] != want[i] {
						return fmt.Errorf("echoed byte %d is %#x, want %#x", got+i, buf[i], want[i])
					}
				}
			}
			got += n
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("read after %d of %d bytes: %w", got, total, err)
		}
	}
	if got != total {
		return fmt.Errorf("echo ended after %d of %d bytes", got, total)
	}
	return <-werr
}

// concurrentEcho runs conns echo exchanges with the guest at once, the
// i-th of size(i) bytes from seed(i), each failing only when its stream
// stops moving (wait.NewConn).
func concurrentEcho(t *testing.T, vm *testVM, conns int, sizeSeed func(i int) (size int, seed uint64)) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := vm.dial(portEcho)
			if err != nil {
				errs <- fmt.Errorf("conn %d: %w", i, err)
				return
			}
			defer c.Close()
			size, seed := sizeSeed(i)
			if err := echoCheck(wait.NewConn(c), size, seed); err != nil {
				errs <- fmt.Errorf("conn %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestVM boots one guest and runs the end-to-end checks against it in
// order; the reboot check comes last but one, the final echo proves the
// device survived it.
func TestVM(t *testing.T) {
	vm := startVM(t, vmOptions{})
	defer vm.close(t)
	vm.waitHeartbeat(t)

	t.Run("ConnectOKEcho", func(t *testing.T) {
		dc, err := vm.dial(portEcho)
		if err != nil {
			t.Fatal(err)
		}
		defer dc.Close()
		c := wait.NewConn(dc)
		r := bufio.NewReader(c)
		for i := range 100 {
			line := fmt.Sprintf("line %d %s\n", i, strings.Repeat("x", i))
			if _, err := io.WriteString(c, line); err != nil {
				t.Fatal(err)
			}
			got, err := r.ReadString('\n')
			if err != nil || got != line {
				t.Fatalf("echo of %q: got %q, %v", line, got, err)
			}
		}
	})

	t.Run("OKCarriesHostPort", func(t *testing.T) {
		// Raw handshake: the reply is "OK <host port>" and bytes written
		// right behind the CONNECT line are not lost.
		uc, err := net.Dial("unix", vm.hybrid)
		if err != nil {
			t.Fatal(err)
		}
		defer uc.Close()
		c := wait.NewConn(uc)
		if _, err := io.WriteString(c, "CONNECT 5000\nearly bytes\n"); err != nil {
			t.Fatal(err)
		}
		r := bufio.NewReader(c)
		ok, err := r.ReadString('\n')
		if err != nil || !strings.HasPrefix(ok, "OK ") {
			t.Fatalf("handshake reply %q, %v", ok, err)
		}
		var port uint32
		if _, err := fmt.Sscanf(ok, "OK %d\n", &port); err != nil || port < vsockdev.FirstHostPort {
			t.Fatalf("reply %q: want a host port >= %d (%v)", ok, vsockdev.FirstHostPort, err)
		}
		got, err := r.ReadString('\n')
		if err != nil || got != "early bytes\n" {
			t.Fatalf("echo of bytes sent with CONNECT: %q, %v", got, err)
		}
	})

	t.Run("Echo100MB", func(t *testing.T) {
		c, err := vm.dial(portEcho)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		start := time.Now()
		before := vm.dev.Stats()
		if err := echoCheck(wait.NewConn(c), 100<<20, 1); err != nil {
			t.Fatal(err)
		}
		after := vm.dev.Stats()
		t.Logf("100 MiB echoed in %v (%.1f MB/s each way); device counted %d to guest, %d from guest",
			time.Since(start), 100*1.048576/time.Since(start).Seconds(),
			after.BytesToGuest-before.BytesToGuest, after.BytesFromGuest-before.BytesFromGuest)
	})

	t.Run("Source", func(t *testing.T) {
		// Guest -> host one-way, the direction that stalls without
		// credit updates.
		dc, err := vm.dial(portSource)
		if err != nil {
			t.Fatal(err)
		}
		defer dc.Close()
		c := wait.NewConn(dc)
		const n = 20 << 20
		if _, err := c.Write(le64(n)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64<<10)
		var got uint64
		for {
			k, err := c.Read(buf)
			for i := range k {
				if buf[i] != pattern(got+uint64(i)) {
					t.Fatalf("byte %d is %#x, want %#x", got+uint64(i), buf[i], pattern(got+uint64(i)))
				}
			}
			got += uint64(k)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("after %d bytes: %v", got, err)
			}
		}
		if got != n {
			t.Fatalf("got %d bytes, want %d", got, n)
		}
	})

	t.Run("Concurrent200", func(t *testing.T) {
		concurrentEcho(t, vm, 200, func(i int) (int, uint64) { return 4096 + i*13, uint64(100 + i) })
	})

	t.Run("ConcurrentLarge", func(t *testing.T) {
		// Several big full-duplex streams at once: credit and turn-taking
		// must keep every one of them moving.
		const size = 6 << 20
		concurrentEcho(t, vm, 12, func(i int) (int, uint64) { return size + i*4099, uint64(1000 + i) })
	})

	t.Run("GuestDialsHost", func(t *testing.T) {
		for _, cid := range []uint32{2, 3} {
			port := uint32(7000 + cid)
			ln, err := net.Listen("unix", hvsock.ListenPath(vm.hybrid, port))
			if err != nil {
				t.Fatal(err)
			}
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				wc := wait.NewConn(c)
				line, _ := bufio.NewReader(wc).ReadString('\n')
				fmt.Fprintf(wc, "got %s", line)
			}()
			reply, err := vm.command(fmt.Sprintf("dial %d %d", cid, port))
			ln.Close()
			if err != nil {
				t.Fatal(err)
			}
			// The guest sees the peer as the CID it dialled.
			if want := fmt.Sprintf("ok %d got hello", cid); reply != want {
				t.Errorf("guest dial to CID %d: %q, want %q", cid, reply, want)
			}
		}
	})

	t.Run("GuestDialRefused", func(t *testing.T) {
		reply, err := vm.command("dial 3 7999")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(reply, "err ") || !(strings.Contains(reply, "reset") || strings.Contains(reply, "refused")) {
			t.Fatalf("guest dial to a port nobody listens on: %q, want connection reset/refused", reply)
		}
	})

	t.Run("ClientVanishes", func(t *testing.T) {
		// A client that stops reading pins only its own stream, and one
		// that disappears mid-stream leaves the others intact.
		stuck, err := vm.dial(portSource)
		if err != nil {
			t.Fatal(err)
		}
		defer stuck.Close()
		stuck.Write(le64(1 << 30))
		var vanishing []net.Conn
		for range 5 {
			c, err := vm.dial(portEcho)
			if err != nil {
				t.Fatal(err)
			}
			vanishing = append(vanishing, c)
			go func() {
				buf := make([]byte, 1<<20)
				for {
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			}()
		}
		// Not a wait: a moment for the clients to be mid-stream. On a slow
		// machine they vanish earlier in their streams, which proves as much.
		time.Sleep(300 * time.Millisecond)
		for _, c := range vanishing {
			c.Close()
		}
		c, err := vm.dial(portEcho)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := echoCheck(wait.NewConn(c), 5<<20, 7); err != nil {
			t.Fatalf("echo next to a stuck and vanished clients: %v", err)
		}
		stuck.Close()
		// Everything but the streams of this subtest drains away.
		wait.For(t, "the streams to close after their clients left", func() (bool, string) {
			n := vm.dev.Stats().Active
			return n == 0, fmt.Sprintf("%d streams open", n)
		})
	})

	// The guest's side of the device goes away and comes back: an
	// unbound and rebound driver, then a whole reboot. Either way, a
	// stream from before must be reset, and new ones must work.
	t.Run("DriverReload", func(t *testing.T) { survivesGuestReset(t, vm, "reload", "driver reload", 8) })
	t.Run("GuestReboot", func(t *testing.T) { survivesGuestReset(t, vm, "reboot", "reboot", 9) })
}

// survivesGuestReset sends the guest command (which resets the guest's
// vsock driver) and checks that an open stream is reset, that the device
// counts a transport reset, and that a new stream echoes correctly.
func survivesGuestReset(t *testing.T, vm *testVM, command, what string, seed uint64) {
	resets := vm.dev.Stats().Resets
	open, err := vm.dial(portEcho)
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	start := time.Now()
	if reply, err := vm.command(command); err != nil || reply != "ok" {
		t.Fatalf("%s: %q %v", command, reply, err)
	}
	vm.waitHeartbeat(t)
	t.Logf("heartbeat %v after the %s command", time.Since(start), command)
	if n, err := wait.NewConn(open).Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("a stream from before the %s is still open (%d bytes, %v)", what, n, err)
	}
	if vm.dev.Stats().Resets == resets {
		t.Errorf("no transport reset counted across the %s", what)
	}
	c, err := vm.dial(portEcho)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := echoCheck(wait.NewConn(c), 1<<20, seed); err != nil {
		t.Fatalf("echo after %s: %v", what, err)
	}
}

// TestQEMUReplaced kills QEMU under an open stream and boots a new one on
// the same device: streams of the old guest end, the new guest is served.
func TestQEMUReplaced(t *testing.T) {
	vm := startVM(t, vmOptions{guestCID: 42})
	defer vm.close(t)
	vm.waitHeartbeat(t)
	dc, err := vm.dial(portEcho)
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	c := wait.NewConn(dc)
	go func() {
		buf := make([]byte, 64<<10)
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}()
	if _, err := io.ReadFull(c, make([]byte, 1<<20)); err != nil {
		t.Fatalf("echo before the kill: %v", err)
	}
	vm.killQEMU()
	// Closed by the device: EOF, or ECONNRESET because the device closed
	// with our unread data in its socket.
	if _, err := io.Copy(io.Discard, c); err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("stream of the killed guest: %v, want EOF or ECONNRESET", err)
	}
	wait.For(t, "the streams to close after QEMU died", func() (bool, string) {
		n := vm.dev.Stats().Active
		return n == 0, fmt.Sprintf("%d streams open", n)
	})
	vm.startQEMU(t)
	vm.waitHeartbeat(t)
	c2, err := vm.dial(portEcho)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if err := echoCheck(wait.NewConn(c2), 1<<20, 3); err != nil {
		t.Fatalf("echo with the second QEMU: %v", err)
	}
	// The guest dialled from the configured CID.
	ln, err := net.Listen("unix", hvsock.ListenPath(vm.hybrid, 7100))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Close()
		}
	}()
	if reply, err := vm.command("dial 3 7100"); err != nil || reply != "ok 3" {
		t.Fatalf("guest dial: %q %v", reply, err)
	}
}

// TestHybridBeforeGuest checks what hybrid clients see without a guest
// driver, with a bad request, or without a request (connect timeout).
func TestHybridBeforeGuest(t *testing.T) {
	dir := t.TempDir()
	dev, err := vsockdev.New(vsockdev.Config{VhostUserSocket: dir + "/vu.sock", HybridSocket: dir + "/h.sock", ConnectTimeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- dev.Serve(ctx) }()
	tests := []struct {
		name string
		send string
	}{
		{"no guest driver", "CONNECT 5000\n"},
		{"garbage request", "HELLO\n"},
		{"silent client", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			uc, err := net.Dial("unix", dir+"/h.sock")
			if err != nil {
				t.Fatal(err)
			}
			defer uc.Close()
			c := wait.NewConn(uc)
			io.WriteString(c, tc.send)
			n, err := c.Read(make([]byte, 16))
			if !errors.Is(err, io.EOF) {
				t.Fatalf("read %d bytes, %v; want EOF (connection closed without reply)", n, err)
			}
		})
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dir + "/vu.sock", dir + "/h.sock"} {
		if _, err := net.Dial("unix", p); err == nil {
			t.Errorf("%s still accepts after Serve returned", p)
		}
	}
}

// TestCloseDropsPendingHandshake: Close does not wait for a client that
// never sends its CONNECT line.
func TestCloseDropsPendingHandshake(t *testing.T) {
	dir := t.TempDir()
	dev, err := vsockdev.New(vsockdev.Config{VhostUserSocket: dir + "/vu.sock", HybridSocket: dir + "/h.sock", ConnectTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- dev.Serve(ctx) }()
	c, err := net.Dial("unix", dir+"/h.sock")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "CONN") // no newline: the device keeps waiting
	wait.For(t, "the device to hold the client's handshake", func() (bool, string) {
		n := dev.PendingHandshakes()
		return n == 1, fmt.Sprintf("%d handshakes pending", n)
	})
	cancel()
	wait.For(t, "Serve to return with a client still in its handshake", wait.Receive(done, &err))
	if err != nil {
		t.Fatal(err)
	}
	if n, err := wait.NewConn(c).Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("pending client after Close: %d %v, want EOF at once", n, err)
	}
}
