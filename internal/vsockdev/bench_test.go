package vsockdev

import (
	"encoding/binary"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// The host side of the benchmarks: a Unix socket peer for each of the
// guest's test ports, as the baseline every benchmark compares against.
// BenchmarkDeviceRoundTrip uses them here, and the VM benchmarks
// (vm_bench_test.go, package vsockdev_test) through export_test.go.

// unixPeer serves the guest's test protocol on a plain Unix socket on the
// host: the baseline every benchmark compares against.
func unixPeer(b *testing.B, serve func(net.Conn)) net.Conn {
	b.Helper()
	path := filepath.Join(b.TempDir(), "peer.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		b.Fatal(err)
	}
	go func() {
		defer ln.Close()
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		serve(c)
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		b.Fatal(err)
	}
	return c
}

func hostDiscard(c net.Conn) {
	n, _ := io.Copy(io.Discard, c)
	c.Write(le64(uint64(n)))
}

func hostSource(c net.Conn) {
	var h [8]byte
	if _, err := io.ReadFull(c, h[:]); err != nil {
		return
	}
	n := binary.LittleEndian.Uint64(h[:])
	buf := make([]byte, 64<<10)
	for off := uint64(0); off < n; {
		k := min(uint64(len(buf)), n-off)
		for i := uint64(0); i < k; i++ {
			buf[i] = pattern(off + i)
		}
		if _, err := c.Write(buf[:k]); err != nil {
			return
		}
		off += k
	}
}

func hostEcho(c net.Conn) { io.Copy(c, c) }

const benchChunk = 1 << 20

func sendAll(b *testing.B, c net.Conn) time.Duration {
	buf := make([]byte, benchChunk)
	start := time.Now()
	for range b.N {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	c.(interface{ CloseWrite() error }).CloseWrite()
	var h [8]byte
	if _, err := io.ReadFull(c, h[:]); err != nil {
		b.Fatal(err)
	}
	if got := binary.LittleEndian.Uint64(h[:]); got != uint64(b.N)*benchChunk {
		b.Fatalf("peer received %d bytes, want %d", got, uint64(b.N)*benchChunk)
	}
	return time.Since(start)
}

func receiveAll(b *testing.B, c net.Conn) time.Duration {
	want := uint64(b.N) * benchChunk
	start := time.Now()
	if _, err := c.Write(le64(want)); err != nil {
		b.Fatal(err)
	}
	n, err := io.Copy(io.Discard, c)
	if err != nil || uint64(n) != want {
		b.Fatalf("received %d of %d bytes: %v", n, want, err)
	}
	return time.Since(start)
}

func roundTrips(b *testing.B, c net.Conn) time.Duration {
	msg := make([]byte, 64)
	reply := make([]byte, 64)
	start := time.Now()
	for range b.N {
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, reply); err != nil {
			b.Fatal(err)
		}
	}
	return time.Since(start)
}

// pattern matches the guest's source pattern (testdata/guest).
func pattern(i uint64) byte { return byte(i*7 + i>>11) }

func le64(n uint64) []byte {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], n)
	return b[:]
}
