package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/nitroinit/nitroinit/internal/enclavesim"
)

// TestDemoEIF runs demo-eif end to end: image, EIF, boot, initctl, PCRs,
// shutdown.
func TestDemoEIF(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM; skipped with -short")
	}
	if _, err := enclavesim.FindKernel(); err != nil {
		t.Skipf("%v", err)
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil && os.Getenv("VMTEST_QEMU") == "" {
		t.Skip("qemu-system-x86_64 not installed: run ci/install-deps.sh")
	}
	bin := t.TempDir()
	for _, p := range []string{"init", "initctl", "internal/testprog/svc"} {
		cmd := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", filepath.Join(bin, filepath.Base(p)), "../"+p)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("building %s: %v\n%s", p, err, out)
		}
	}
	out, stderr, err := run(t, "demo-eif", "--timeout", "5m",
		"--init", filepath.Join(bin, "init"), "--initctl", filepath.Join(bin, "initctl"), "--svc", filepath.Join(bin, "svc"))
	t.Logf("demo-eif output:\n%s%s", out, stderr)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"PCR0": "`, "initramfs:   PCR2 ", "heartbeat received", `argv: ["/bin/app" "argv" "hello from the image"]`, "cwd: /srv", "VM ended: power-off", "Demo done"} {
		if !strings.Contains(out+stderr, want) {
			t.Errorf("demo-eif output lacks %q", want)
		}
	}
}
