package vmtests

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nitroinit/nitroinit/internal/enclavesim"
	"github.com/nitroinit/nitroinit/internal/wait"
)

// TestAppImage builds an image with the initramfs command as a user would
// (--sim-config, an application root with --rootfs, a service with
// --service) and boots it in the simulator: the service must run after the
// root switch, where the initramfs's /service is out of init's sight. The
// file is named to run before the shared VMs boot.
func TestAppImage(t *testing.T) {
	needVM(t)
	stopShared()
	// Short and under /tmp: Unix socket names are limited to 107 bytes.
	dir, err := os.MkdirTemp("", "vmt-appimage-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)

	initramfs := filepath.Join(dir, "initramfs")
	build := exec.Command("go", "build", "-o", initramfs, "./initramfs")
	build.Dir = ".."
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the initramfs command: %v\n%s", err, out)
	}
	root := filepath.Join(dir, "rootfs")
	if err := writeTree(root, nil, map[string]string{"bin/svc": bin.svc}); err != nil {
		t.Fatal(err)
	}
	svc := filepath.Join(dir, "hello.service")
	if err := os.WriteFile(svc, []byte(`ExecStart = "/bin/svc sleep hello-from-the-app-root"`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	// Resolve first: the route decides the CID the heartbeat goes to.
	initrd := filepath.Join(dir, "enclave.cpio")
	if err := os.WriteFile(initrd, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// vmLifetime bounds the VM's life (a VM a test forgot), not a wait.
	ctx, cancel := context.WithTimeout(context.Background(), vmLifetime)
	defer cancel()
	opts, err := enclavesim.Options{
		Initrd: initrd, Kernel: kernel.BootImage(), Dir: filepath.Join(dir, "sim"), Timeout: vmLifetime,
		Logf: t.Logf,
	}.Resolve(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(initramfs, "build", "-o", initrd, "--init", bin.init, "--kernel-modules", "--sim-config",
		"--heartbeat-cid", fmt.Sprint(enclavesim.HostCIDFor(opts.Route)), "--rootfs", root, "--service", svc).CombinedOutput()
	if err != nil {
		t.Fatalf("initramfs build: %v\n%s", err, out)
	}
	if want := "-> /rootfs/service/hello.service"; !strings.Contains(string(out), want) {
		t.Errorf("initramfs build does not say %q:\n%s", want, out)
	}

	vm, err := enclavesim.Start(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Stop()
	defer func() {
		if t.Failed() {
			t.Logf("console tail:\n%s", vm.ConsoleTail(60))
		}
	}()
	// The boot goes on as long as the console advances.
	hbctx, hbcancel := wait.Limits{Stall: wait.BootStall, Progress: vm.ConsoleLines}.Context(ctx, "the heartbeat")
	defer hbcancel()
	if _, err := vm.Heartbeat(hbctx); err != nil {
		t.Fatalf("%v (%v)", err, context.Cause(hbctx))
	}
	ctl := []string{"--protocol", "vsock", "--vsock-cid", fmt.Sprint(opts.GuestCID)}
	if p := vm.HybridSocket(); p != "" {
		ctl = []string{"--vsock-uds", p}
	}
	initctl := func(args ...string) (string, error) {
		// One stall interval for an answer, longer while the console moves.
		cctx, ccancel := wait.Limits{Progress: vm.ConsoleLines}.Context(ctx, "initctl "+strings.Join(args, " "))
		defer ccancel()
		c := exec.CommandContext(cctx, bin.initctl, append(append([]string{}, ctl...), args...)...)
		c.Env = append(os.Environ(), "INITCTL_CONFIG=/nonexistent")
		b, err := c.CombinedOutput()
		return string(b), err
	}
	eventually(t, bootTimeout, "hello to run from the application root", func() (bool, string) {
		out, err := initctl("status", "hello")
		return err == nil && strings.Contains(out, "  Status: active (running)\n") &&
			strings.Contains(out, "  File: /service/hello.service\n"), fmt.Sprintf("%v: %s", err, out)
	})
	if out, err := initctl("shutdown"); err != nil {
		t.Fatalf("initctl shutdown: %v\n%s", err, out)
	}
	// The power-off goes on while the console advances.
	wctx, wcancel := wait.Limits{Progress: vm.ConsoleLines}.Context(ctx, "the power-off")
	defer wcancel()
	if ex, err := vm.Wait(wctx); err != nil || ex.Kind != enclavesim.ExitPowerOff {
		t.Errorf("VM ended with %v (%v), want a power-off", ex, err)
	}
}
