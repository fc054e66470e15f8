package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// build --nsm adds the kernel's cuse module and init's marker, and refuses
// a kernel without CUSE, naming the config option.
func TestBuildNSM(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	initBin := write("init", "INIT")
	kernel := write("vmlinuz", "KERNEL")
	write("with/cuse.ko", "CUSE")
	os.MkdirAll(filepath.Join(dir, "without"), 0o755)
	t.Setenv("NITROINIT_KERNEL", kernel)

	t.Setenv("NITROINIT_MODULES_DIR", filepath.Join(dir, "with"))
	out := filepath.Join(dir, "out.cpio")
	_, stderr, err := run(t, "build", "--init", initBin, "--nsm", "--sim-config", "-o", out)
	if err != nil {
		t.Fatalf("build --nsm: %v\n%s", err, stderr)
	}
	if !strings.Contains(stderr, "module /lib/modules/cuse.ko") {
		t.Errorf("build --nsm did not add cuse.ko:\n%s", stderr)
	}
	img, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"etc/nitroinit/nsm-sim", "/lib/modules/cuse.ko"} {
		if !bytes.Contains(img, []byte(want)) {
			t.Errorf("image lacks %s", want)
		}
	}

	t.Setenv("NITROINIT_MODULES_DIR", filepath.Join(dir, "without"))
	_, _, err = run(t, "build", "--init", initBin, "--nsm", "-o", out)
	if err == nil || !strings.Contains(err.Error(), "CONFIG_CUSE") {
		t.Errorf("build --nsm on a kernel without cuse: %v, want an error naming CONFIG_CUSE", err)
	}
}
