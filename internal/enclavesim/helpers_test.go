package enclavesim

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nitroinit/nitroinit/initramfs/image"
	"github.com/nitroinit/nitroinit/internal/testbin"
	"github.com/nitroinit/nitroinit/internal/wait"
)

// goBuild builds a static binary of pkg (a path relative to the module
// root) into a directory shared by the test binary's run, once.
var (
	buildMu    sync.Mutex
	buildCache = map[string]string{}
	buildDir   string
)

func goBuild(t testing.TB, pkg string) (string, error) {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if p, ok := buildCache[pkg]; ok {
		return p, nil
	}
	if buildDir == "" {
		d, err := os.MkdirTemp("", "esimbin")
		if err != nil {
			t.Fatal(err)
		}
		buildDir = d
	}
	out, err := testbin.Build(buildDir, "", pkg)
	if err != nil {
		return "", err
	}
	buildCache[pkg] = out[0]
	return out[0], nil
}

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// guestCtx is a context for waiting on vm (its heartbeat, a dial, an
// initctl run) that ends when the guest's console has not moved for
// wait.BootStall (the kernel boots without a word).
func guestCtx(t testing.TB, vm *VM, what string) context.Context {
	ctx, cancel := wait.Limits{Stall: wait.BootStall, Progress: vm.ConsoleLines}.Context(context.Background(), what)
	t.Cleanup(cancel)
	return ctx
}

// vmLifetime is Options.Timeout for test VMs: long enough for a machine ten
// times slower than ours, a bound for a guest that hangs.
const vmLifetime = 30 * time.Minute

// needSim skips when the simulator's outside parts are missing, and
// returns the kernel.
func needSim(t testing.TB) Kernel {
	t.Helper()
	if testing.Short() {
		t.Skip("boots a VM; skipped with -short")
	}
	k, err := FindKernel()
	if err != nil {
		t.Skipf("%v", err)
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil && os.Getenv("VMTEST_QEMU") == "" {
		t.Skip("qemu-system-x86_64 not installed: run ci/install-deps.sh")
	}
	return k
}

// guestImage builds an initramfs with the test guest as /init and the
// kernel's modules.
func guestImage(t testing.TB, k Kernel) string {
	t.Helper()
	bin, err := goBuild(t, "./internal/enclavesim/simguest")
	if err != nil {
		t.Fatalf("building the test guest: %v", err)
	}
	out := filepath.Join(t.TempDir(), "guest.cpio")
	if err := (image.Spec{Init: bin, Modules: k.Modules}).WriteFile(out); err != nil {
		t.Fatal(err)
	}
	return out
}
