package vmtests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nitroinit/nitroinit/internal/enclavesim"
	"github.com/nitroinit/nitroinit/internal/testbin"
)

// bin holds the static guest binaries built once per test run. The guests
// have no shell and no libc: every program they run is one of these.
var bin struct {
	dir     string
	init    string
	initctl string
	svc     string
	zombies string
}

// kernel is the test kernel and its modules (ci/fetch-kernel.sh).
var kernel enclavesim.Kernel

// missing says what is absent when the vmtests cannot run at all, and how to
// get it; every test skips with it. ci/report turns any skip into a failure,
// so CI cannot pass with missing parts.
var missing string

func TestMain(m *testing.M) {
	missing = prerequisites()
	if missing == "" {
		if err := buildBinaries(); err != nil {
			fmt.Fprintf(os.Stderr, "vmtests: %v\n", err)
			os.Exit(1)
		}
	}
	code := m.Run()
	stopShared()
	if bin.dir != "" {
		os.RemoveAll(bin.dir)
	}
	os.Exit(code)
}

// prerequisites returns "" when QEMU and the kernel are there, else what is
// missing and the command that provides it.
func prerequisites() string {
	var why []string
	k, err := enclavesim.FindKernel()
	if err != nil {
		why = append(why, fmt.Sprintf("no test kernel (%v): run ci/fetch-kernel.sh", err))
	} else {
		kernel = k
	}
	qemu := "qemu-system-x86_64"
	if q := strings.Fields(os.Getenv("VMTEST_QEMU")); len(q) > 0 {
		qemu = q[0]
	}
	if _, err := exec.LookPath(qemu); err != nil {
		why = append(why, fmt.Sprintf("QEMU %s not found (%v): run ci/install-deps.sh or set VMTEST_QEMU", qemu, err))
	}
	return strings.Join(why, "; ")
}

// needVM skips the test when the simulator's outside parts are missing.
func needVM(t testing.TB) {
	t.Helper()
	if missing != "" {
		t.Skip("vmtests need QEMU and the test kernel: " + missing)
	}
}

// buildBinaries builds the guest programs as static binaries, all in one go
// build so the toolchain shares the work.
func buildBinaries() error {
	dir, err := os.MkdirTemp("", "vmtest-bin-")
	if err != nil {
		return err
	}
	bin.dir = dir
	if _, err := testbin.Build(dir, "-X main.version=vmtest", "./init", "./initctl", "./internal/testprog/svc", "./internal/testprog/zombies"); err != nil {
		return fmt.Errorf("building the guest binaries: %w", err)
	}
	bin.init = filepath.Join(dir, "init")
	bin.initctl = filepath.Join(dir, "initctl")
	bin.svc = filepath.Join(dir, "svc")
	bin.zombies = filepath.Join(dir, "zombies")
	return nil
}
