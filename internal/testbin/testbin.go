// Package testbin builds the project's programs for tests that run them as
// real processes (on the host or in a guest): static binaries, all of one
// test's programs in one go build so the toolchain shares the work.
package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Build builds the packages, given relative to the module root ("./init",
// "./internal/testprog/svc"), into dir, and returns each binary's path in
// the order given. The binaries are static (CGO_ENABLED=0) and built with
// -trimpath; ldflags, when not empty, are passed as -ldflags (such as
// "-X main.version=vmtest").
//
// It runs the go command from PATH: go test puts its own toolchain's bin
// directory first there.
func Build(dir, ldflags string, pkgs ...string) ([]string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return nil, err
	}
	args := []string{"build", "-trimpath"}
	if ldflags != "" {
		args = append(args, "-ldflags", ldflags)
	}
	args = append(args, "-o", dir+string(filepath.Separator))
	args = append(args, pkgs...)
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("building %s (go %s in %s): %w\n%s", strings.Join(pkgs, " "), strings.Join(args, " "), root, err, out)
	}
	paths := make([]string, len(pkgs))
	for i, p := range pkgs {
		paths[i] = filepath.Join(dir, filepath.Base(p))
	}
	return paths, nil
}

// ModuleRoot is the directory of the main module's go.mod, as the go
// command sees it from the current directory.
func ModuleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("go env GOMOD: not inside a module")
	}
	return filepath.Dir(mod), nil
}
