package enclavesim

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"github.com/nitroinit/nitroinit/initramfs/image"
)

// goBuild builds a static binary of pkg (a path relative to this package)
// into dir, once per test binary run.
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
	out := filepath.Join(buildDir, filepath.Base(pkg))
	cmd := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-trimpath", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", errors.New(string(b))
	}
	buildCache[pkg] = out
	return out, nil
}

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

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
	bin, err := goBuild(t, "./simguest")
	if err != nil {
		t.Fatalf("building the test guest: %v", err)
	}
	out := filepath.Join(t.TempDir(), "guest.cpio")
	if err := (image.Spec{Init: bin, Modules: k.Modules}).WriteFile(out); err != nil {
		t.Fatal(err)
	}
	return out
}
