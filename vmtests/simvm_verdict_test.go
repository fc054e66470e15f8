package vmtests

import (
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/hugelgupf/vmtest/qemu"

	"github.com/nitroinit/nitroinit/internal/enclavesim"
)

// TestVMVerdict checks how simVM tells a VM's end when QEMU runs under
// vmtest, which merges QEMU's stderr into the serial console: the console
// goes through enclavesim.Console as vmtest writes it (\r\n line ends, a
// last line without a newline), lastQEMULine picks QEMU's own complaint out
// of it, and enclavesim.Classify (whose full table is enclavesim's
// TestVerdict) gives the verdict. It boots nothing.
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
		stopping   enclavesim.ExitKind
		want       enclavesim.ExitKind
		wantDetail string
	}{
		{
			name:       "stopped_by_us",
			qemuCmd:    "qemu-system-x86_64",
			writes:     []string{"boot: ready\r\n", "qemu-system-x86_64: terminating on signal 15 from pid 7\n"},
			stopping:   enclavesim.ExitStopped,
			want:       enclavesim.ExitStopped,
			wantDetail: "qemu-system-x86_64: terminating on signal 15 from pid 7",
		},
		{
			name:       "qemu_fails_last_line_unterminated",
			qemuCmd:    "/usr/bin/qemu-system-x86_64 -L .",
			writes:     []string{"qemu-system-x86_64: warning: host doesn't support requested feature\n", "qemu-system-x86_64: -device vhost-vsock-pci: vhost-vsock: failed to open vhost device: No such file or directory"},
			waitErr:    exit1,
			want:       enclavesim.ExitFailed,
			wantDetail: "qemu-system-x86_64: -device vhost-vsock-pci: vhost-vsock: failed to open vhost device: No such file or directory",
		},
		{
			name:       "guest_line_naming_qemu_is_not_qemus",
			qemuCmd:    "qemu-system-x86_64",
			writes:     []string{"[    0.0] DMI: QEMU Standard PC (Q35), qemu-system-x86_64: x\r\n"},
			waitErr:    exit1,
			want:       enclavesim.ExitFailed,
			wantDetail: "exit status 1",
		},
		{
			name:     "power_off_despite_qemu_lines",
			qemuCmd:  "qemu-system-x86_64",
			writes:   []string{"qemu-system-x86_64: warning: TCG doesn't support requested feature\n", "[    2.1] reboot: Power down\r\n"},
			stopping: enclavesim.ExitTimeout,
			want:     enclavesim.ExitPowerOff,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := enclavesim.NewConsole(io.Discard, nil)
			for _, w := range tt.writes {
				c.Write([]byte(w))
			}
			c.Close()
			e := enclavesim.Classify(tt.waitErr, c.Markers(), tt.stopping, lastQEMULine(c.String(), tt.qemuCmd))
			if e.Kind != tt.want || e.Detail != tt.wantDetail {
				t.Errorf("verdict %s, %q; want %s, %q\nconsole:\n%s", e.Kind, e.Detail, tt.want, tt.wantDetail, c.String())
			}
		})
	}
}

// TestVMCommandLine checks the QEMU command line simVM hands to vmtest's
// qemu package: enclavesim.MachineArgs's memory, accelerator, console and
// vsock arguments once each next to vmtest's own -nographic, -kernel,
// -append and -initrd, and nothing that clashes with those.
func TestVMCommandLine(t *testing.T) {
	tests := []struct {
		route, accel string
		want         []string // consecutive argument pairs that must appear
	}{
		{enclavesim.RouteVhostUser, enclavesim.AccelTCG, []string{
			"-accel tcg",
			"-object memory-backend-memfd,id=mem,size=1024M,share=on",
			"-chardev socket,id=vsock0,path=/tmp/vm/vhost-user.sock",
			"-device vhost-user-vsock-pci,chardev=vsock0",
		}},
		{enclavesim.RouteVhostVsock, enclavesim.AccelKVM, []string{
			"-accel kvm", "-cpu host",
			"-object memory-backend-memfd,id=mem,size=1024M,share=on",
			"-device vhost-vsock-pci,guest-cid=16",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.route+"_"+tt.accel, func(t *testing.T) {
			o := enclavesim.Options{
				QEMU: "qemu-system-x86_64", Kernel: "/k/vmlinux", Initrd: "/tmp/vm/initrd.cpio", Append: "xyzzy",
				MemoryMB: 1024, CPUs: 1, GuestCID: 16, Dir: "/tmp/vm", Route: tt.route, Accel: tt.accel,
			}
			opts, err := qemu.OptionsFor(qemu.ArchAMD64,
				qemu.WithQEMUCommand(o.QEMU), qemu.WithKernel(o.Kernel), qemu.WithInitramfs(o.Initrd),
				qemu.WithAppendKernel(enclavesim.KernelCmdline(o.Append)), qemu.ArbitraryArgs(enclavesim.MachineArgs(o)...))
			if err != nil {
				t.Fatal(err)
			}
			args, err := opts.Cmdline()
			if err != nil {
				t.Fatal(err)
			}
			line := " " + strings.Join(args, " ") + " "
			want := append([]string{
				"-M q35,memory-backend=mem", "-m 1024M", "-no-reboot", "-nographic",
				"-chardev stdio,id=con,signal=off", "-serial chardev:con",
				"-kernel /k/vmlinux", "-initrd /tmp/vm/initrd.cpio",
			}, tt.want...)
			for _, w := range want {
				if strings.Count(line, " "+w+" ") != 1 {
					t.Errorf("command line has %q %d times, want once:\n%s", w, strings.Count(line, " "+w+" "), line)
				}
			}
			if i := slices.Index(args, "-append"); i < 0 || !strings.HasPrefix(args[i+1], "console=ttyS0 panic=-1") || !strings.HasSuffix(args[i+1], " xyzzy") {
				t.Errorf("kernel command line: %q", args)
			}
			for _, never := range []string{"-display", "-serial stdio", "mon:stdio", "-enable-kvm"} {
				if strings.Contains(line, " "+never+" ") {
					t.Errorf("command line has %q:\n%s", never, line)
				}
			}
		})
	}
}
