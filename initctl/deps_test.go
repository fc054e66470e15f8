package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestLinksOnlyTheClient: initctl runs on the parent instance, where the
// server (permission checks, /proc reading, dispatch) has no business;
// it depends on the client side of the control protocol only.
func TestLinksOnlyTheClient(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Skipf("go list: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		switch pkg {
		case "github.com/nitroinit/nitroinit/internal/control", "github.com/nitroinit/nitroinit/internal/procfs",
			"github.com/nitroinit/nitroinit/internal/logs", "github.com/nitroinit/nitroinit/internal/supervise":
			t.Errorf("initctl depends on %s", pkg)
		}
	}
}
