package vmtests

import (
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/hugelgupf/vmtest/qemu"

	"github.com/nitroinit/nitroinit/internal/enclavesim"
)

// nopWriteCloser stands in for console.log.
type nopWriteCloser struct{ strings.Builder }

func (*nopWriteCloser) Close() error { return nil }

// TestVMVerdict checks how simVM tells a VM's end from its console and
// QEMU's exit, with console output arriving as QEMU writes it: \r\n line
// ends, lines split across writes, QEMU's stderr mixed in, a last line
// without a newline. It boots nothing.
func TestVMVerdict(t *testing.T) {
	exit1 := exec.Command("false").Run() // a real *exec.ExitError, status 1
	if exit1 == nil {
		t.Fatal("false exited 0")
	}
	tests := []struct {
		name       string
		writes     []string
		waitErr    error
		stopping   enclavesim.ExitKind
		want       enclavesim.ExitKind
		wantDetail string
	}{
		{
			name:   "power_off",
			writes: []string{"init: all services stopped; power-off\r\n[    2.1] reboot: Pow", "er down\r\n"},
			want:   enclavesim.ExitPowerOff,
		},
		{
			name:   "reboot",
			writes: []string{"[    2.1] reboot: Restarting system\r\n"},
			want:   enclavesim.ExitReboot,
		},
		{
			name:       "panic_beats_everything",
			writes:     []string{"[    0.9] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\r\n[    0.9] reboot: Restarting system\r\n"},
			stopping:   enclavesim.ExitTimeout,
			want:       enclavesim.ExitPanic,
			wantDetail: "Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100",
		},
		{
			name:       "stopped_by_us",
			writes:     []string{"boot: ready\r\n", "qemu-system-x86_64: terminating on signal 15 from pid 7\n"},
			stopping:   enclavesim.ExitStopped,
			want:       enclavesim.ExitStopped,
			wantDetail: "qemu-system-x86_64: terminating on signal 15 from pid 7",
		},
		{
			name:     "power_off_after_a_timeout_fired",
			writes:   []string{"[    2.1] reboot: Power down\r\n"},
			stopping: enclavesim.ExitTimeout,
			want:     enclavesim.ExitPowerOff,
		},
		{
			name:       "qemu_fails_last_line_unterminated",
			writes:     []string{"qemu-system-x86_64: -device vhost-vsock-pci: vhost-vsock: failed to open vhost device: No such file or directory"},
			waitErr:    exit1,
			want:       enclavesim.ExitFailed,
			wantDetail: "qemu-system-x86_64: -device vhost-vsock-pci: vhost-vsock: failed to open vhost device: No such file or directory",
		},
		{
			name:       "power_off_line_but_qemu_failed",
			writes:     []string{"[    2.1] reboot: Power down\r\n"},
			waitErr:    exit1,
			want:       enclavesim.ExitFailed,
			wantDetail: "exit status 1",
		},
		{
			name:       "silent_exit",
			writes:     []string{"boot: ready\r\n"},
			want:       enclavesim.ExitFailed,
			wantDetail: "QEMU exited without the kernel printing a power-off, reboot or panic line",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := &nopWriteCloser{}
			c := newConsoleLog(file, nil)
			for _, w := range tt.writes {
				c.Write([]byte(w))
			}
			c.Close()
			if strings.Contains(file.String(), "\r") || strings.Contains(c.all(), "\r") {
				t.Errorf("console kept \\r: %q", c.all())
			}
			if file.String() != c.all() {
				t.Errorf("console.log %q differs from the kept console %q", file.String(), c.all())
			}
			kind, detail := classify(tt.waitErr, c.marks(), tt.stopping, c.lastQEMULine("qemu-system-x86_64 -L ."))
			if kind != tt.want || detail != tt.wantDetail {
				t.Errorf("classify = %s, %q; want %s, %q\nconsole:\n%s", kind, detail, tt.want, tt.wantDetail, c.all())
			}
		})
	}
}

// TestVMCommandLine checks the QEMU command line simVM hands to vmtest's
// qemu package: the simulator's memory, accelerator, console and vsock
// arguments once each, and vmtest's own -kernel, -append and -initrd.
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
				qemu.WithAppendKernel(enclavesim.KernelCmdline(o.Append)), qemu.ArbitraryArgs(qemuArgs(o)...))
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
