package enclavesim

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nitroinit/nitroinit/initramfs/image"
	"github.com/nitroinit/nitroinit/internal/wait"
)

// realInitImage builds the project's init, initctl and test service, and an
// image with init as PID 1, one service, and init.yaml from InitYAML. It
// returns the image and the host's initctl binary.
func realInitImage(t testing.TB, k Kernel, hostCID uint32) (img, initctl string) {
	t.Helper()
	initBin, err := goBuild(t, "./init")
	if err != nil {
		t.Fatalf("building the project's init: %v", err)
	}
	initctl, err = goBuild(t, "./initctl")
	if err != nil {
		t.Fatalf("building initctl: %v", err)
	}
	svc, err := goBuild(t, "./internal/testprog/svc")
	if err != nil {
		t.Fatalf("building the test service: %v", err)
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "init.yaml")
	if err := os.WriteFile(cfg, []byte(InitYAML(hostCID, k.Modules, false)), 0o644); err != nil {
		t.Fatal(err)
	}
	service := filepath.Join(dir, "sleeper.service")
	if err := os.WriteFile(service, []byte("ExecStart = \"/usr/bin/svc sleep\"\nRestart = \"always\"\nServiceEnable = true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	echo := filepath.Join(dir, "echo.service")
	if err := os.WriteFile(echo, []byte(fmt.Sprintf("ExecStart = \"/usr/bin/svc echo-vsock %d\"\nRestart = \"always\"\n", echoPort)), 0o644); err != nil {
		t.Fatal(err)
	}
	img = filepath.Join(dir, "enclave.cpio")
	spec := image.Spec{
		Init: initBin, Initctl: initctl, Config: cfg, Modules: k.Modules,
		Services: []string{service, echo},
		Files:    []image.File{{Src: svc, Dst: "/usr/bin/svc"}},
	}
	if err := spec.WriteFile(img); err != nil {
		t.Fatal(err)
	}
	return img, initctl
}

// echoPort is the guest vsock port of the echo service in realInitImage.
const echoPort = 5000

// echoCheck writes n pseudo-random bytes to c while reading the echo back
// (full duplex, so neither direction waits for the other) and compares.
func echoCheck(t *testing.T, nc net.Conn, n int) {
	t.Helper()
	c := wait.NewConn(nc)
	sum := sha256.New()
	werr := make(chan error, 1)
	go func() {
		rng := rand.New(rand.NewPCG(1, 2))
		buf := make([]byte, 64<<10)
		left := n
		for left > 0 {
			k := min(left, len(buf))
			for i := 0; i < k; i += 8 {
				binary.LittleEndian.PutUint64(buf[i:], rng.Uint64())
			}
			sum.Write(buf[:k])
			if _, err := c.Write(buf[:k]); err != nil {
				werr <- err
				return
			}
			left -= k
		}
		werr <- nil
	}()
	back := sha256.New()
	start := time.Now()
	got, err := io.CopyN(back, c, int64(n))
	if err != nil {
		t.Fatalf("read %d of %d echoed bytes: %v", got, n, err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(sum.Sum(nil), back.Sum(nil)) {
		t.Fatalf("%d bytes echoed, but they differ from what was sent", n)
	}
	t.Logf("%d MB echoed byte for byte in %s", n>>20, time.Since(start).Round(time.Millisecond))
}

// TestBootRealInit boots the project's init as PID 1: its heartbeat reaches
// the parent's listener, initctl on the host lists its service through the
// hybrid socket, and `initctl shutdown` powers the guest off.
func TestBootRealInit(t *testing.T) {
	k := needSim(t)
	img, initctl := realInitImage(t, k, HostCIDFor(RouteVhostUser))
	vm := startGuest(t, k, img, "", vmLifetime)
	ctx := guestCtx(t, vm, "the guest")
	hb, err := vm.Heartbeat(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("heartbeat %s after QEMU start", hb.Sub(vm.Started()).Round(time.Millisecond))

	ctl := func(args ...string) (string, error) {
		full := append([]string{"--vsock-uds", vm.HybridSocket()}, args...)
		out, err := exec.CommandContext(ctx, initctl, full...).CombinedOutput()
		return string(out), err
	}
	// The control listener opens just after the heartbeat; wait for the
	// service to be running.
	var out string
	wait.Limits{Progress: vm.ConsoleLines}.For(t, "initctl list to show sleeper running", func() (bool, string) {
		out, err = ctl("list")
		return err == nil && strings.Contains(out, "sleeper") && strings.Contains(out, "running"), fmt.Sprintf("%v\n%s\nconsole:\n%s", err, out, vm.ConsoleTail(5))
	})
	t.Logf("initctl list:\n%s", out)

	// Data through a service of init's: the echo service listens on guest
	// vsock port echoPort.
	t.Run("100MB_echo_through_a_service", func(t *testing.T) {
		c, err := vm.Dial(ctx, echoPort)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		echoCheck(t, c, 100<<20)
	})
	t.Run("200_concurrent_host_connections", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan error, 200)
		for i := 0; i < 200; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				c, err := vm.Dial(ctx, echoPort)
				if err != nil {
					errs <- fmt.Errorf("connection %d: %w", i, err)
					return
				}
				defer c.Close()
				msg := bytes.Repeat([]byte{byte(i)}, 4096)
				wc := wait.NewConn(c)
				if _, err := wc.Write(msg); err != nil {
					errs <- fmt.Errorf("connection %d: write: %w", i, err)
					return
				}
				got := make([]byte, len(msg))
				if _, err := io.ReadFull(wc, got); err != nil || !bytes.Equal(got, msg) {
					errs <- fmt.Errorf("connection %d: echo wrong or short: %v", i, err)
				}
			}(i)
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
	if out, err := ctl("ps", "list"); err != nil || !strings.Contains(out, "/usr/bin/svc sleep") {
		t.Errorf("initctl ps list: %v\n%s", err, out)
	}
	if out, err := ctl("shutdown"); err != nil {
		t.Fatalf("initctl shutdown: %v\n%s", err, out)
	}
	exit, err := vm.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if exit.Kind != ExitPowerOff {
		t.Errorf("exit %s, want power-off; console:\n%s", exit, vm.ConsoleTail(15))
	}
}

// BenchmarkBootToHeartbeat measures QEMU start to the parent receiving the
// heartbeat, for the project's init against a minimal init (simguest) that
// does nothing but mount /dev, /proc and /sys, load the vsock modules and
// send the heartbeat: same kernel, same run. Each iteration boots both, one
// after the other, so load from elsewhere on the machine hits both alike.
// The difference is what init's own boot steps cost before the heartbeat.
func BenchmarkBootToHeartbeat(b *testing.B) {
	k := needSim(b)
	minimal := guestImage(b, k)
	real, _ := realInitImage(b, k, HostCIDFor(RouteVhostUser))
	cases := []struct {
		name, img, append string
		total             time.Duration
	}{
		{name: "minimal", img: minimal, append: "simguest_mode=heartbeat"},
		{name: "init", img: real},
	}
	n := 0
	for b.Loop() {
		n++
		for i := range cases {
			tc := &cases[i]
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			vm, err := Start(ctx, Options{Initrd: tc.img, Append: tc.append, Timeout: 3 * time.Minute})
			if err != nil {
				cancel()
				b.Fatal(err)
			}
			hb, err := vm.Heartbeat(ctx)
			vm.Stop()
			cancel()
			if err != nil {
				b.Fatalf("%s: %v", tc.name, err)
			}
			tc.total += hb.Sub(vm.Started())
		}
	}
	for _, tc := range cases {
		b.ReportMetric(float64(tc.total.Milliseconds())/float64(n), tc.name+"-ms/heartbeat")
	}
	b.ReportMetric(float64((cases[1].total-cases[0].total).Milliseconds())/float64(n), "init-overhead-ms")
	b.ReportMetric(0, "ns/op")
}
