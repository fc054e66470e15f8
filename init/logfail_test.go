package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nitroinit/nitroinit/internal/wire"
)

// TestLogOutageShownUntilRecovery: when a service's log cannot be written
// (a full filesystem), list and status say so until it can again, and
// init reports each outage's start and end. Needs root for a small tmpfs.
func TestLogOutageShownUntilRecovery(t *testing.T) {
	requireRoot(t)
	logDir := filepath.Join(t.TempDir(), "log")
	os.MkdirAll(logDir, 0o755)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", logDir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", logDir).Run() })
	h := startInit(t, map[string]string{
		"chatty.service": "ExecStart = \"$SVC count 1000000 10ms\"\n",
	}, "log_dir: "+logDir+"\n")
	filler := filepath.Join(logDir, "filler")
	state := func() (string, string) {
		r := h.do(wire.Request{Kind: wire.KindListServices})
		for _, s := range r.Services {
			if s.Name == "chatty" {
				return s.State, s.Error
			}
		}
		return "", ""
	}
	for outage := 1; outage <= 2; outage++ {
		os.WriteFile(filler, make([]byte, 1<<20), 0o600) // fills what is left
		h.waitFor("list to show the failing log", func() (bool, string) {
			s, e := state()
			return strings.HasSuffix(s, "log failing"), s + ": " + e
		})
		if st := h.status("chatty"); !strings.Contains(st.Error, "no space left") {
			t.Errorf("outage %d: status error %q, want the log's error", outage, st.Error)
		}
		os.Remove(filler)
		h.do(wire.Request{Kind: wire.KindServiceLogsClear, Name: "chatty"})
		h.waitFor("list to show the log recovered", func() (bool, string) {
			s, e := state()
			return s == "running", s + ": " + e
		})
	}
	h.waitFor("two outages reported", func() (bool, string) {
		c := h.console.String()
		failed, again := strings.Count(c, "chatty.log: no space left"), strings.Count(c, "chatty.log is written again")
		return failed >= 2 && again >= 2, fmt.Sprintf("%d outages and %d recoveries on the console", failed, again)
	})
}
