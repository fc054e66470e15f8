package forward

import (
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nitroinit/nitroinit/internal/forward/forwardtest"
	"github.com/nitroinit/nitroinit/internal/testbin"
	"github.com/nitroinit/nitroinit/internal/wait"
)

// The benchmarks compare the forwarder with socat doing the same forwarding
// in the same run: a client on TCP, a forwarder, and an echo server behind
// it on TCP or on a Unix socket (the parent side of hybrid vsock, where our
// forwarder also does the CONNECT handshake and socat connects raw). The
// direct case (no forwarder) is the baseline for the added latency.
//
//	go test ./internal/forward -run '^$' -bench . -benchtime 2s
//
// docs/benchmarks.md has the results as ratios.

// benchPath is one way from the client to the echo server.
type benchPath struct {
	name    string
	network string // what the client dials: "tcp", or "unix" for direct to a Unix echo
	addr    string
}

// setupPaths starts, for the given transport ("tcp" or "unix"), the echo
// servers, our forwarder and socat, and returns the paths.
func setupPaths(b *testing.B, transport string) []benchPath {
	b.Helper()
	dir := b.TempDir()
	var ourTarget Endpoint
	var socatTarget string
	var direct benchPath
	switch transport {
	case "tcp":
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		forwardtest.Serve(b, l, forwardtest.Echo)
		direct = benchPath{"direct", "tcp", l.Addr().String()}
		ourTarget = Endpoint{Kind: KindTCP, Addr: direct.addr}
		socatTarget = "TCP:" + direct.addr
	case "unix":
		raw := filepath.Join(dir, "raw.sock")
		l, err := net.Listen("unix", raw)
		if err != nil {
			b.Fatal(err)
		}
		forwardtest.Serve(b, l, forwardtest.Echo)
		direct = benchPath{"direct", "unix", raw}
		hy := forwardtest.HybridDevice(b, forwardtest.HybridEcho)
		ourTarget = Endpoint{Kind: KindHybrid, Addr: hy, Port: 5000}
		socatTarget = "UNIX-CONNECT:" + raw
	}
	// Both forwarders run as their own processes, as they would be used:
	// ours is the real initctl forward.
	paths := []benchPath{direct}
	ours := startProc(b, initctlBinary(b), "forward", "--listen", "tcp:{ADDR}", "--connect", ourTarget.String())
	paths = append(paths, benchPath{"ours", "tcp", ours})
	if socat, err := exec.LookPath("socat"); err == nil {
		addr := startProc(b, socat, "TCP-LISTEN:{PORT},bind=127.0.0.1,fork,reuseaddr", socatTarget)
		paths = append(paths, benchPath{"socat", "tcp", addr})
	} else {
		b.Log("socat not installed: no baseline (apt-get install socat)")
	}
	return paths
}

// startProc runs a forwarder program listening on a free 127.0.0.1 port
// ({ADDR} or {PORT} in args) and waits until it accepts connections.
func startProc(b *testing.B, prog string, args ...string) string {
	b.Helper()
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := free.Addr().String()
	free.Close()
	_, port, _ := net.SplitHostPort(addr)
	for i, a := range args {
		args[i] = strings.NewReplacer("{ADDR}", addr, "{PORT}", port).Replace(a)
	}
	cmd := exec.Command(prog, args...)
	if v := os.Getenv("BENCH_FWD_GOMAXPROCS"); v != "" {
		cmd.Env = append(os.Environ(), "GOMAXPROCS="+v)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		// socat forks a child per connection: end the group we started.
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		cmd.Wait()
	})
	// Its start shows nothing until it listens: a plain stall interval.
	wait.For(b, prog+" to listen on "+addr, func() (bool, string) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return false, err.Error()
		}
		c.Close()
		return true, ""
	})
	return addr
}

var initctlBin string

// initctlBinary builds initctl once per run.
func initctlBinary(b *testing.B) string {
	b.Helper()
	if initctlBin != "" {
		return initctlBin
	}
	dir, err := os.MkdirTemp("", "forward-bench-")
	if err != nil {
		b.Fatal(err)
	}
	bins, err := testbin.Build(dir, "", "./initctl")
	if err != nil {
		b.Fatal(err)
	}
	initctlBin = bins[0]
	return initctlBin
}

// The paths are measured interleaved, one op on each in turn, so that the
// shared machine's slow spells hit all of them alike; each benchmark
// reports every path's figure and the ratios as metrics.

// conns dials every path.
func conns(b *testing.B, paths []benchPath) []net.Conn {
	b.Helper()
	cs := make([]net.Conn, len(paths))
	for i, p := range paths {
		c, err := net.Dial(p.network, p.addr)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		cs[i] = c
	}
	return cs
}

// report adds per-path metrics (value per op, in unit) and ours/socat.
func report(b *testing.B, paths []benchPath, total []time.Duration, metric func(d time.Duration) float64, unit string) {
	vals := map[string]float64{}
	for i, p := range paths {
		vals[p.name] = metric(total[i])
		b.ReportMetric(vals[p.name], p.name+"-"+unit)
	}
	if s, ok := vals["socat"]; ok && s > 0 {
		b.ReportMetric(vals["ours"]/s, "ours/socat")
	}
}

// BenchmarkThroughput streams 1 MiB per op through each path, reading the
// echo back concurrently. Higher is better: ours/socat >= 1 meets the goal.
func BenchmarkThroughput(b *testing.B) {
	for _, transport := range []string{"tcp", "unix"} {
		b.Run(transport, func(b *testing.B) {
			paths := setupPaths(b, transport)
			cs := conns(b, paths)
			buf := make([]byte, 1<<20)
			total := make([]time.Duration, len(paths))
			b.ResetTimer()
			for range b.N {
				for i, c := range cs {
					start := time.Now()
					read := make(chan error, 1)
					go func() {
						_, err := io.CopyN(io.Discard, c, int64(len(buf)))
						read <- err
					}()
					if _, err := c.Write(buf); err != nil {
						b.Fatal(err)
					}
					if err := <-read; err != nil {
						b.Fatal(err)
					}
					total[i] += time.Since(start)
				}
			}
			report(b, paths, total, func(d time.Duration) float64 {
				return float64(b.N) * float64(len(buf)) / d.Seconds() / 1e6
			}, "MB/s")
		})
	}
}

// BenchmarkRoundTrip sends one byte and waits for its echo, per op and
// path. A forwarder's added latency is its round trip minus direct's; the
// reported ratio ours/socat compares the added latencies (<= 1 meets the
// goal).
func BenchmarkRoundTrip(b *testing.B) {
	for _, transport := range []string{"tcp", "unix"} {
		b.Run(transport, func(b *testing.B) {
			paths := setupPaths(b, transport)
			cs := conns(b, paths)
			one := []byte{'x'}
			total := make([]time.Duration, len(paths))
			b.ResetTimer()
			for range b.N {
				for i, c := range cs {
					start := time.Now()
					if _, err := c.Write(one); err != nil {
						b.Fatal(err)
					}
					if _, err := io.ReadFull(c, one); err != nil {
						b.Fatal(err)
					}
					total[i] += time.Since(start)
				}
			}
			added := make([]time.Duration, len(paths))
			for i := range total {
				added[i] = total[i] - total[0] // paths[0] is direct
			}
			us := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(b.N) }
			for i, p := range paths {
				b.ReportMetric(us(total[i]), p.name+"-µs")
			}
			report(b, paths[1:], added[1:], us, "added-µs")
		})
	}
}
