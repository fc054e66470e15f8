package enclavesim

import (
	"io"
	"os/exec"
	"testing"
)

// TestVMVerdict checks how a VM's end is told when QEMU runs under vmtest,
// which merges QEMU's stderr into the serial console: the console goes
// through Console as vmtest writes it (\r\n line ends, a last line without
// a newline), lastQEMULine picks QEMU's own complaint out of it, and
// classify (whose full table is TestVerdict) gives the verdict. It boots
// nothing.
func TestVMVerdict(t *testing.T) {
	exit1 := exec.Command("false").Run() // a real *exec.ExitError, status 1
	if exit1 == nil {
		t.Fatal("false exited 0")
	}
	tests := []struct {
		name       string
		qemuCmd    string // Options.QEMU
		writes     []string
		waitErr    error
		stopping   ExitKind
		want       ExitKind
		wantDetail string
	}{
		{
			name:       "stopped_by_us",
			qemuCmd:    "qemu-system-x86_64",
			writes:     []string{"boot: ready\r\n", "qemu-system-x86_64: terminating on signal 15 from pid 7\n"},
			stopping:   ExitStopped,
			want:       ExitStopped,
			wantDetail: "qemu-system-x86_64: terminating on signal 15 from pid 7",
		},
		{
			name:       "qemu_fails_last_line_unterminated",
			qemuCmd:    "/usr/bin/qemu-system-x86_64 -L .",
			writes:     []string{"qemu-system-x86_64: warning: host doesn't support requested feature\n", "qemu-system-x86_64: -device vhost-vsock-pci: vhost-vsock: failed to open vhost device: No such file or directory"},
			waitErr:    exit1,
			want:       ExitFailed,
			wantDetail: "qemu-system-x86_64: -device vhost-vsock-pci: vhost-vsock: failed to open vhost device: No such file or directory",
		},
		{
			name:       "guest_line_naming_qemu_is_not_qemus",
			qemuCmd:    "qemu-system-x86_64",
			writes:     []string{"[    0.0] DMI: QEMU Standard PC (Q35), qemu-system-x86_64: x\r\n"},
			waitErr:    exit1,
			want:       ExitFailed,
			wantDetail: "exit status 1",
		},
		{
			name:     "power_off_despite_qemu_lines",
			qemuCmd:  "qemu-system-x86_64",
			writes:   []string{"qemu-system-x86_64: warning: TCG doesn't support requested feature\n", "[    2.1] reboot: Power down\r\n"},
			stopping: ExitTimeout,
			want:     ExitPowerOff,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newConsole(io.Discard, nil)
			for _, w := range tt.writes {
				c.Write([]byte(w))
			}
			c.Close()
			e := classify(tt.waitErr, c.Markers(), tt.stopping, lastQEMULine(c.String(), tt.qemuCmd))
			if e.Kind != tt.want || e.Detail != tt.wantDetail {
				t.Errorf("verdict %s, %q; want %s, %q\nconsole:\n%s", e.Kind, e.Detail, tt.want, tt.wantDetail, c.String())
			}
		})
	}
}
