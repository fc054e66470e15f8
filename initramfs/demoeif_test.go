package main

import (
	"strings"
	"testing"
)

// TestDemoEIF runs demo-eif end to end: image, EIF, boot, initctl, PCRs,
// shutdown.
func TestDemoEIF(t *testing.T) {
	out, stderr := runDemoCommand(t, "demo-eif")
	for _, want := range []string{`"PCR0": "`, "initramfs:   PCR2 ", "heartbeat received", `argv: ["/bin/app" "argv" "hello from the image"]`, "cwd: /srv", "VM ended: power-off", "Demo done"} {
		if !strings.Contains(out+stderr, want) {
			t.Errorf("demo-eif output lacks %q", want)
		}
	}
}
