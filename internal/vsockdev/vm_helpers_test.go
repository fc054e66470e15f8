package vsockdev

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nitroinit/nitroinit/internal/hvsock"
	"github.com/nitroinit/nitroinit/internal/nitro"
	"github.com/nitroinit/nitroinit/internal/wait"
	"github.com/u-root/mkuimage/cpio"
)

// Guest test ports (see testdata/guest).
const (
	portEcho      = 5000
	portDiscard   = 5001
	portSource    = 5002
	portCommand   = 5003
	portHeartbeat = nitro.HeartbeatPort
)

var guestModules = []string{"vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport"}

// kernelFiles locates the test kernel the way internal/enclavesim does
// (that package imports this one, so the lookup is repeated here):
// NITROINIT_KERNEL (+ NITROINIT_MODULES_DIR), else the cache that
// ci/fetch-kernel.sh fills, ${NITROINIT_CACHE:-~/.cache/nitroinit}/kernel/
// current/{vmlinux,vmlinuz,modules/}. A module that is not found is taken
// as built in (the guest skips it).
type kernelFiles struct {
	kernel  string
	modules map[string]string
}

func findKernel() (*kernelFiles, error) {
	k := &kernelFiles{modules: map[string]string{}}
	modDir := os.Getenv("NITROINIT_MODULES_DIR")
	if img := os.Getenv("NITROINIT_KERNEL"); img != "" {
		if _, err := os.Stat(img); err != nil {
			return nil, fmt.Errorf("NITROINIT_KERNEL=%s: %w", img, err)
		}
		k.kernel = img
	} else {
		cache := os.Getenv("NITROINIT_CACHE")
		if cache == "" {
			home, err := os.UserHomeDir()
			if err != nil {
				return nil, err
			}
			cache = filepath.Join(home, ".cache", "nitroinit")
		}
		dir := filepath.Join(cache, "kernel", "current")
		for _, name := range []string{"vmlinux", "vmlinuz"} {
			if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
				k.kernel = filepath.Join(dir, name)
				break
			}
		}
		if k.kernel == "" {
			return nil, fmt.Errorf("no vmlinux or vmlinuz in %s (run ci/fetch-kernel.sh, or set NITROINIT_KERNEL and NITROINIT_MODULES_DIR)", dir)
		}
		modDir = filepath.Join(dir, "modules")
	}
	if modDir != "" {
		filepath.WalkDir(modDir, func(p string, e fs.DirEntry, err error) error {
			if err != nil || e.IsDir() {
				return nil
			}
			for _, m := range guestModules {
				for _, ext := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
					if e.Name() == m+ext && k.modules[m] == "" {
						k.modules[m] = p
					}
				}
			}
			return nil
		})
	}
	return k, nil
}

// requireVM skips when QEMU or the kernel is missing, and only then.
func requireVM(tb testing.TB) *kernelFiles {
	tb.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		tb.Skip("qemu-system-x86_64 not installed (apt-get install qemu-system-x86): skipping VM test")
	}
	k, err := findKernel()
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
		guestBin = filepath.Join(workDir, "guest-init")
		cmd := exec.Command("go", "build", "-o", guestBin, "./testdata/guest")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		out, err := cmd.CombinedOutput()
		if err != nil {
			guestErr = fmt.Errorf("building testdata/guest: %v\n%s", err, out)
		}
	})
	if guestErr != nil {
		tb.Fatal(guestErr)
	}
	return guestBin
}

// buildInitramfs writes a newc archive with the guest as /init, the vsock
// modules and /dev/console.
func buildInitramfs(tb testing.TB, k *kernelFiles, path string) {
	tb.Helper()
	init, err := os.ReadFile(buildGuest(tb))
	if err != nil {
		tb.Fatal(err)
	}
	recs := []cpio.Record{
		cpio.Directory("dev", 0o755),
		cpio.Directory("proc", 0o755),
		cpio.Directory("sys", 0o755),
		cpio.Directory("modules", 0o755),
		cpio.CharDev("dev/console", 0o600, 5, 1),
		cpio.StaticFile("init", string(init), 0o755),
	}
	for _, m := range guestModules {
		if k.modules[m] == "" {
			continue // built into the kernel
		}
		b, err := os.ReadFile(k.modules[m])
		if err != nil {
			tb.Fatal(err)
		}
		recs = append(recs, cpio.StaticFile("modules/"+filepath.Base(k.modules[m]), string(b), 0o644))
	}
	var buf bytes.Buffer
	w := cpio.Newc.Writer(&buf)
	if err := cpio.WriteRecords(w, recs); err != nil {
		tb.Fatalf("writing initramfs: %v", err)
	}
	if err := cpio.WriteTrailer(w); err != nil {
		tb.Fatalf("writing initramfs trailer: %v", err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		tb.Fatal(err)
	}
}

// testVM is a device plus a QEMU guest attached to it.
type testVM struct {
	dev        *Device
	hybrid     string
	console    *wait.Buffer
	heartbeats chan time.Time
	serveErr   chan error
	cmd        *exec.Cmd
	qemuDone   chan error
	hbLn       net.Listener
	cancel     context.CancelFunc
	logs       *wait.Buffer
	// What startQEMU needs to boot the guest again.
	kernel, initrd, vhostSock string
}

type vmOptions struct {
	guestCID uint32
}

func startVM(tb testing.TB, opt vmOptions) *testVM {
	tb.Helper()
	k := requireVM(tb)
	dir, err := os.MkdirTemp(workDir, "vm")
	if err != nil {
		tb.Fatal(err)
	}
	initrd := filepath.Join(dir, "initramfs.cpio")
	buildInitramfs(tb, k, initrd)
	vm := &testVM{
		hybrid:     filepath.Join(dir, "vsock.sock"),
		console:    &wait.Buffer{},
		logs:       &wait.Buffer{},
		heartbeats: make(chan time.Time, 16),
		serveErr:   make(chan error, 1),
		qemuDone:   make(chan error, 1),
	}
	dev, err := New(Config{
		VhostUserSocket: filepath.Join(dir, "vhost.sock"),
		HybridSocket:    vm.hybrid,
		GuestCID:        opt.guestCID,
		Logf: func(f string, a ...any) {
			fmt.Fprintf(vm.logs, time.Now().Format("15:04:05.000 ")+f+"\n", a...)
		},
	})
	if err != nil {
		tb.Fatal(err)
	}
	vm.dev = dev
	ctx, cancel := context.WithCancel(context.Background())
	vm.cancel = cancel
	go func() { vm.serveErr <- dev.Serve(ctx) }()

	vm.hbLn, err = net.Listen("unix", hvsock.ListenPath(vm.hybrid, portHeartbeat))
	if err != nil {
		tb.Fatal(err)
	}
	go func() {
		for {
			c, err := vm.hbLn.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				b := make([]byte, 1)
				if _, err := io.ReadFull(c, b); err != nil || b[0] != nitro.HeartbeatByte {
					return
				}
				if _, err := c.Write(b); err == nil {
					vm.heartbeats <- time.Now()
				}
			}()
		}
	}()

	vm.kernel, vm.initrd, vm.vhostSock = k.kernel, initrd, dev.cfg.VhostUserSocket
	vm.startQEMU(tb)
	return vm
}

func (vm *testVM) startQEMU(tb testing.TB) {
	tb.Helper()
	kernel, initrd, vhostSock := vm.kernel, vm.initrd, vm.vhostSock
	vm.cmd = exec.Command("qemu-system-x86_64",
		"-machine", "q35,accel=tcg,memory-backend=mem",
		"-m", "256M",
		"-object", "memory-backend-memfd,id=mem,size=256M,share=on",
		"-smp", "1",
		"-nodefaults", "-no-user-config", "-nographic",
		"-serial", "stdio",
		"-kernel", kernel, "-initrd", initrd,
		"-append", "console=ttyS0 quiet panic=-1",
		"-chardev", "socket,id=vs0,path="+vhostSock,
		"-device", "vhost-user-vsock-pci,chardev=vs0",
	)
	vm.cmd.Stdout = vm.console
	vm.cmd.Stderr = vm.console
	if err := vm.cmd.Start(); err != nil {
		tb.Fatalf("starting QEMU: %v", err)
	}
	cmd := vm.cmd
	go func() { vm.qemuDone <- cmd.Wait() }()
}

// stopQEMU asks the guest to power off and waits for QEMU, killing it if
// the guest does not comply.
func (vm *testVM) stopQEMU(tb testing.TB) {
	if vm.cmd == nil {
		return
	}
	if reply, err := vm.command("poweroff"); err != nil || reply != "ok" {
		tb.Logf("poweroff command: %q %v", reply, err)
	}
	// A guest that stopped printing without powering off is killed.
	stalled := wait.Limits{Progress: vm.console.Len}.Until(context.Background(), "QEMU to exit", wait.Receive(vm.qemuDone, nil))
	if stalled != nil {
		vm.cmd.Process.Kill()
		<-vm.qemuDone
	}
	vm.cmd = nil
}

func (vm *testVM) close(tb testing.TB) {
	vm.stopQEMU(tb)
	vm.hbLn.Close()
	vm.cancel()
	select {
	case err := <-vm.serveErr:
		if err != nil {
			tb.Errorf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		tb.Errorf("Serve did not return after cancel")
	}
	vm.dev.Close()
	if tb.Failed() {
		tb.Logf("guest console:\n%s", vm.console.String())
		tb.Logf("device log:\n%s", vm.logs.String())
	}
}

// waitHeartbeat waits for the guest's next heartbeat for as long as its
// console advances. The duration is kept for callers and ignored.
func (vm *testVM) waitHeartbeat(tb testing.TB, _ time.Duration) {
	tb.Helper()
	err := wait.Limits{Progress: vm.console.Len}.Until(context.Background(), "a heartbeat on "+hvsock.ListenPath(vm.hybrid, portHeartbeat), wait.Receive(vm.heartbeats, nil))
	if err != nil {
		tb.Fatalf("%v\nconsole:\n%s\ndevice log:\n%s", err, vm.console.String(), vm.logs.String())
	}
}

// dial connects to a guest port, retrying while the guest is not listening
// yet (the device answers such a CONNECT with a closed socket), for as long
// as the guest's console advances.
func (vm *testVM) dial(port uint32) (net.Conn, error) {
	var c net.Conn
	err := wait.Limits{Progress: vm.console.Len}.Until(context.Background(), fmt.Sprintf("guest port %d", port), func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
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
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := fmt.Fprintf(c, "%s\n", line); err != nil {
		return "", err
	}
	reply, err := bufio.NewReader(c).ReadString('\n')
	if err != nil && !(errors.Is(err, io.EOF) && reply != "") {
		return "", fmt.Errorf("command %q: reply %q: %w", line, reply, err)
	}
	return strings.TrimSpace(reply), nil
}

// pattern matches the guest's source pattern.
func pattern(i uint64) byte { return byte(i*7 + i>>11) }

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

func le64(n uint64) []byte {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], n)
	return b[:]
}
