package vsockdev_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nitroinit/nitroinit/initramfs/image"
	"github.com/nitroinit/nitroinit/internal/enclavesim"
	"github.com/nitroinit/nitroinit/internal/hvsock"
	"github.com/nitroinit/nitroinit/internal/nitro"
	"github.com/nitroinit/nitroinit/internal/testbin"
	"github.com/nitroinit/nitroinit/internal/vsockdev"
	"github.com/nitroinit/nitroinit/internal/wait"
)

// Guest test ports (see testdata/guest).
const (
	portEcho    = 5000
	portDiscard = 5001
	portSource  = 5002
	portCommand = 5003
)

// vmLifetime bounds a test VM (Options.Timeout): long enough for a machine
// ten times slower than ours.
const vmLifetime = 30 * time.Minute

// requireVM skips when QEMU or the kernel is missing, and only then.
func requireVM(tb testing.TB) enclavesim.Kernel {
	tb.Helper()
	qemu := "qemu-system-x86_64"
	if q := strings.Fields(os.Getenv("VMTEST_QEMU")); len(q) > 0 {
		qemu = q[0]
	}
	if _, err := exec.LookPath(qemu); err != nil {
		tb.Skipf("QEMU %s not installed (run ci/install-deps.sh or set VMTEST_QEMU): skipping VM test", qemu)
	}
	k, err := enclavesim.FindKernel()
	if err != nil {
		tb.Skipf("test kernel missing: %v", err)
	}
	return k
}

var (
	guestOnce sync.Once
	guestBin  string
	guestErr  error
	workDir   string
)

func TestMain(m *testing.M) {
	var err error
	workDir, err = os.MkdirTemp("", "vsockdev-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	shutdownBenchVM()
	os.RemoveAll(workDir)
	os.Exit(code)
}

// buildGuest compiles testdata/guest once per test binary.
func buildGuest(tb testing.TB) string {
	tb.Helper()
	guestOnce.Do(func() {
		var bins []string
		bins, guestErr = testbin.Build(workDir, "", "./internal/vsockdev/testdata/guest")
		if guestErr == nil {
			guestBin = bins[0]
		}
	})
	if guestErr != nil {
		tb.Fatal(guestErr)
	}
	return guestBin
}

// testVM is a device of ours, served by the test, with a simulated enclave
// (enclavesim.Start) attached to it; the guest is testdata/guest. The VM
// may be replaced by another on the same device (restart).
type testVM struct {
	dev      *vsockdev.Device
	dir      string
	hybrid   string
	initrd   string
	guestCID uint32
	console  *wait.Buffer // every guest's console, in order
	logs     *wait.Buffer // the device's log
	serveErr chan error
	cancel   context.CancelFunc
	vm       *enclavesim.VM // nil once stopped
	beats    int            // heartbeats seen by waitHeartbeat
}

type vmOptions struct {
	guestCID uint32
}

func startVM(tb testing.TB, opt vmOptions) *testVM {
	tb.Helper()
	k := requireVM(tb)
	// Short and under /tmp: Unix socket names are limited to 107 bytes.
	dir, err := os.MkdirTemp("", "vsd")
	if err != nil {
		tb.Fatal(err)
	}
	vm := &testVM{
		dir:      dir,
		initrd:   filepath.Join(dir, "initramfs.cpio"),
		guestCID: opt.guestCID,
		console:  &wait.Buffer{},
		logs:     &wait.Buffer{},
		serveErr: make(chan error, 1),
	}
	if err := (image.Spec{Init: buildGuest(tb), Modules: k.Modules}).WriteFile(vm.initrd); err != nil {
		tb.Fatal(err)
	}
	cfg := enclavesim.DeviceConfig(dir)
	vm.hybrid = cfg.HybridSocket
	cfg.GuestCID = opt.guestCID
	cfg.Logf = func(f string, a ...any) {
		fmt.Fprintf(vm.logs, time.Now().Format("15:04:05.000 ")+f+"\n", a...)
	}
	vm.dev, err = vsockdev.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	vm.cancel = cancel
	go func() { vm.serveErr <- vm.dev.Serve(ctx) }()
	vm.startQEMU(tb)
	return vm
}

// startQEMU boots a guest on the device: the simulator's VM, with guest
// reboots kept inside it.
func (vm *testVM) startQEMU(tb testing.TB) {
	tb.Helper()
	var err error
	vm.vm, err = enclavesim.Start(context.Background(), enclavesim.Options{
		Initrd:   vm.initrd,
		MemoryMB: 256,
		GuestCID: vm.guestCID,
		Dir:      vm.dir,
		Route:    enclavesim.RouteVhostUser,
		Device:   vm.dev,
		Reboot:   true,
		Console:  vm.console,
		Timeout:  vmLifetime,
		Logf:     func(f string, a ...any) { fmt.Fprintf(vm.logs, f+"\n", a...) },
	})
	if err != nil {
		tb.Fatalf("starting the VM: %v", err)
	}
	vm.beats = 0
}

// killQEMU ends the VM without asking the guest, as a crashed QEMU would.
func (vm *testVM) killQEMU() {
	if vm.vm != nil {
		vm.vm.Stop()
		vm.vm = nil
	}
}

func (vm *testVM) close(tb testing.TB) {
	if err := vm.shutdown(); err != nil {
		tb.Error(err)
	}
	if tb.Failed() {
		tb.Logf("guest console:\n%s", vm.console.String())
		tb.Logf("device and simulator log:\n%s", vm.logs.String())
	}
}

// shutdown powers the guest off (stopping the VM if it does not comply),
// stops the device, removes its directory and says what Serve returned.
func (vm *testVM) shutdown() error {
	if vm.vm != nil {
		vm.command("poweroff")
		wait.Limits{Progress: vm.console.Len}.Until(context.Background(), "the guest to power off", wait.Receive(vm.vm.Done(), nil))
		vm.killQEMU()
	}
	vm.cancel()
	var err error
	if wait.Until(context.Background(), "Serve to return after cancel", wait.Receive(vm.serveErr, &err)) != nil {
		err = fmt.Errorf("Serve did not return after cancel")
	} else if err != nil {
		err = fmt.Errorf("Serve: %w", err)
	}
	vm.dev.Close()
	os.RemoveAll(vm.dir)
	return err
}

// waitHeartbeat waits, for as long as the guest's console advances, for a
// heartbeat the test has not seen yet: the first after a boot, or the next
// after a driver reload or a reboot.
func (vm *testVM) waitHeartbeat(tb testing.TB) {
	tb.Helper()
	err := vm.heartbeat()
	if err != nil {
		tb.Fatalf("%v\nconsole:\n%s\ndevice log:\n%s", err, vm.console.String(), vm.logs.String())
	}
}

func (vm *testVM) heartbeat() error {
	// A boot or reboot shows nothing while the kernel starts.
	err := wait.Limits{Stall: wait.BootStall, Progress: vm.console.Len}.Until(context.Background(), "a heartbeat on "+hvsock.ListenPath(vm.hybrid, nitro.HeartbeatPort), func() (bool, string) {
		n := vm.vm.Heartbeats()
		return n > vm.beats, fmt.Sprintf("%d heartbeats", n)
	})
	if err == nil {
		vm.beats = vm.vm.Heartbeats()
	}
	return err
}

// dial connects to a guest port, retrying while the guest is not listening
// yet (the device answers such a CONNECT with a closed socket), for as long
// as the guest's console advances.
func (vm *testVM) dial(port uint32) (net.Conn, error) {
	var c net.Conn
	err := wait.Limits{Progress: vm.console.Len}.Until(context.Background(), fmt.Sprintf("guest port %d", port), func() (bool, string) {
		// One try shows nothing until it is done (the device's
		// ConnectTimeout ends it first): one stall interval.
		ctx, cancel := wait.Limits{}.Context(context.Background(), fmt.Sprintf("a CONNECT to guest port %d", port))
		defer cancel()
		var err error
		c, err = hvsock.Dial(ctx, vm.hybrid, port)
		return err == nil, fmt.Sprint(err)
	})
	return c, err
}

// command sends one line to the guest's command port and returns the reply.
func (vm *testVM) command(line string) (string, error) {
	c, err := vm.dial(portCommand)
	if err != nil {
		return "", err
	}
	defer c.Close()
	wc := wait.NewConn(c)
	if _, err := fmt.Fprintf(wc, "%s\n", line); err != nil {
		return "", err
	}
	reply, err := bufio.NewReader(wc).ReadString('\n')
	if err != nil && !(errors.Is(err, io.EOF) && reply != "") {
		return "", fmt.Errorf("command %q: reply %q: %w", line, reply, err)
	}
	return strings.TrimSpace(reply), nil
}

// The guest's source pattern, and an 8-byte little-endian count
// (bench_test.go).
var (
	pattern = vsockdev.Pattern
	le64    = vsockdev.Le64
)

// byteStream is a deterministic pseudo-random byte sequence; a reader
// regenerates it to check an echoed stream byte for byte, whatever the
// chunk sizes.
type byteStream struct{ x uint64 }

func newByteStream(seed uint64) *byteStream { return &byteStream{x: seed*0x9E3779B97F4A7C15 | 1} }

func (s *byteStream) fill(b []byte) {
	for i := range b {
		s.x ^= s.x << 13
		s.x ^= s.x >> 7
		s.x ^= s.x << 17
		b[i] = byte(s.x >> 24)
	}
}
