package enclavesim

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nitroinit/nitroinit/initramfs/image"
)

// realInitImage builds the project's init, initctl and test service, and an
// image with init as PID 1, one service, and init.yaml from InitYAML. It
// returns the image and the host's initctl binary.
func realInitImage(t testing.TB, k Kernel, hostCID uint32) (img, initctl string) {
	t.Helper()
	initBin, err := goBuild(t, "../../init")
	if err != nil {
		t.Skipf("the project's init does not build yet: %v", err)
	}
	initctl, err = goBuild(t, "../../initctl")
	if err != nil {
		t.Skipf("initctl does not build yet: %v", err)
	}
	svc, err := goBuild(t, "../../internal/testprog/svc")
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
	img = filepath.Join(dir, "enclave.cpio")
	spec := image.Spec{
		Init: initBin, Initctl: initctl, Config: cfg, Modules: k.Modules,
		Services: []string{service},
		Files:    []image.File{{Src: svc, Dst: "/usr/bin/svc"}},
	}
	if err := spec.WriteFile(img); err != nil {
		t.Fatal(err)
	}
	return img, initctl
}

// TestBootRealInit boots the project's init as PID 1: its heartbeat reaches
// the parent's listener, initctl on the host lists its service through the
// hybrid socket, and `initctl shutdown` powers the guest off.
func TestBootRealInit(t *testing.T) {
	k := needSim(t)
	img, initctl := realInitImage(t, k, HostCIDFor(RouteVhostUser))
	vm := startGuest(t, k, img, "", 3*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
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
	for {
		out, err = ctl("list")
		if err == nil && strings.Contains(out, "sleeper") && strings.Contains(out, "running") {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("initctl list never showed sleeper running: %v\n%s\nconsole:\n%s", err, out, vm.ConsoleTail(20))
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("initctl list:\n%s", out)
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
