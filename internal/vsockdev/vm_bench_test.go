package vsockdev_test

import (
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nitroinit/nitroinit/internal/vsockdev"
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
			bench.vm = vm
			if err := vm.heartbeat(); err != nil {
				bench.err = fmt.Sprintf("the benchmark VM: %v\n%s", err, vm.console.String())
				return
			}
			bench.err = ""
		}()
		<-done
	})
	if bench.err != "" {
		b.Fatal(bench.err)
	}
	return bench.vm
}

func shutdownBenchVM() {
	if vm := bench.vm; vm != nil {
		vm.shutdown()
	}
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
	// The measured traffic: a wait.Conn would add a deadline call to each
	// Read and Write, which the Unix baseline lacks; 5 minutes only bounds a hang.
	c.SetDeadline(time.Now().Add(5 * time.Minute))
	if perOpBytes > 0 {
		b.SetBytes(int64(perOpBytes))
	}
	b.ResetTimer()
	dev := traffic(b, c)
	b.StopTimer()
	u := vsockdev.UnixPeer(b, serve)
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
	runBoth(b, portDiscard, vsockdev.HostDiscard, vsockdev.SendAll, vsockdev.BenchChunk)
}

// BenchmarkGuestToHost: the guest's source port writes 1 MiB per op to the
// host.
func BenchmarkGuestToHost(b *testing.B) {
	runBoth(b, portSource, vsockdev.HostSource, vsockdev.ReceiveAll, vsockdev.BenchChunk)
}

// BenchmarkRoundTrip: one 64-byte message echoed by the guest per op.
func BenchmarkRoundTrip(b *testing.B) {
	runBoth(b, portEcho, vsockdev.HostEcho, vsockdev.RoundTrips, 0)
}
