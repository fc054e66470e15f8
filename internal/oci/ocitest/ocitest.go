// Package ocitest builds the container image the image-import tests read,
// with tools we did not write (GNU tar, umoci, skopeo): see
// internal/oci/testdata/mkimage.sh for what the image holds.
package ocitest

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// NeedTools fails the test in CI, and skips it elsewhere, when umoci,
// skopeo, GNU tar or root (the image has device nodes and other owners) are
// missing.
func NeedTools(t testing.TB) {
	t.Helper()
	var missing []string
	for _, tool := range []string{"umoci", "skopeo", "tar"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if os.Geteuid() != 0 {
		missing = append(missing, "root (the image has device nodes and other owners)")
	}
	if len(missing) == 0 {
		return
	}
	msg := "needs " + strings.Join(missing, ", ") + " to build the test image (ci/install-deps.sh installs the tools)"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// Script is the path of mkimage.sh.
func Script() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "testdata", "mkimage.sh")
}

// Build checks the tools (NeedTools) and writes the image into dir:
// dir/oci (tag "app"), dir/app-docker.tar, dir/app-oci.tar and umoci's
// unpacked dir/bundle/rootfs. app, if not "", becomes /bin/app.
func Build(t testing.TB, dir, app string) {
	t.Helper()
	NeedTools(t)
	args := []string{dir}
	if app != "" {
		args = append(args, app)
	}
	if out, err := exec.Command(Script(), args...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", Script(), err, out)
	}
}
