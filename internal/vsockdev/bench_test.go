package vsockdev

import (
	"encoding/binary"
	"io"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// The benchmarks share one VM per test binary; it is booted by the first
// benchmark that needs it and powered off by TestMain.
var bench struct {
	once sync.Once
	vm   *testVM
	err  string
}

func benchVM(b *testing.B) *testVM {
	b.Helper()
	requireVM(b)
	bench.once.Do(func() {
		done := make(chan struct{})
		// startVM reports through b; run it where a Fatal only ends this
		// goroutine.
		go func() {
			defer close(done)
			bench.err = "VM start failed (see log above)"
			vm := startVM(b, vmOptions{})
			select {
			case <-vm.heartbeats:
			case <-time.After(60 * time.Second):
				bench.err = "no heartbeat from the benchmark VM:\n" + vm.console.String()
				bench.vm = vm
				return
			}
			bench.vm, bench.err = vm, ""
		}()
		<-done
	})
	if bench.err != "" {
		b.Fatal(bench.err)
	}
	return bench.vm
}

func shutdownBenchVM() {
	vm := bench.vm
	if vm == nil {
		return
	}
	if vm.cmd != nil {
		vm.command("poweroff")
		select {
		case <-vm.qemuDone:
		case <-time.After(20 * time.Second):
			vm.cmd.Process.Kill()
			<-vm.qemuDone
		}
	}
	vm.hbLn.Close()
	vm.cancel()
	<-vm.serveErr
	vm.dev.Close()
}

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

// runBoth times the traffic through the device (the benchmark's own
// ns/op) and the same traffic over a host Unix socket, and reports both
// and their ratio.
func runBoth(b *testing.B, port uint32, serve func(net.Conn), traffic func(*testing.B, net.Conn) time.Duration, perOpBytes int) {
	vm := benchVM(b)
	c, err := vm.dial(port)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Minute))
	if perOpBytes > 0 {
		b.SetBytes(int64(perOpBytes))
	}
	b.ResetTimer()
	dev := traffic(b, c)
	b.StopTimer()
	u := unixPeer(b, serve)
	defer u.Close()
	base := traffic(b, u)
	perOp := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / float64(b.N) }
	if perOpBytes > 0 {
		mbps := func(d time.Duration) float64 { return float64(b.N) * float64(perOpBytes) / d.Seconds() / 1e6 }
		b.ReportMetric(mbps(dev), "vsock-MB/s")
		b.ReportMetric(mbps(base), "unix-MB/s")
	} else {
		b.ReportMetric(perOp(dev)/1e3, "vsock-us/rtt")
		b.ReportMetric(perOp(base)/1e3, "unix-us/rtt")
	}
	// How many times slower than a host Unix socket the device is.
	b.ReportMetric(perOp(dev)/perOp(base), "x-unix-time")
}

// BenchmarkHostToGuest: host writes 1 MiB per op into the guest's discard
// port.
func BenchmarkHostToGuest(b *testing.B) {
	runBoth(b, portDiscard, hostDiscard, sendAll, benchChunk)
}

// BenchmarkGuestToHost: the guest's source port writes 1 MiB per op to the
// host.
func BenchmarkGuestToHost(b *testing.B) {
	runBoth(b, portSource, hostSource, receiveAll, benchChunk)
}

// BenchmarkRoundTrip: one 64-byte message echoed by the guest per op.
func BenchmarkRoundTrip(b *testing.B) {
	runBoth(b, portEcho, hostEcho, roundTrips, 0)
}
