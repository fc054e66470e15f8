package enclavesim

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestFindKernel(t *testing.T) {
	// A fake cache laid out like ci/fetch-kernel.sh does it.
	cache := t.TempDir()
	rel := filepath.Join(cache, "kernel", "6.99.0-test")
	os.MkdirAll(filepath.Join(rel, "modules"), 0o755)
	for _, f := range []string{"vmlinuz", "modules/vsock.ko.xz", "modules/vmw_vsock_virtio_transport.ko.xz"} {
		os.WriteFile(filepath.Join(rel, f), []byte("x"), 0o644)
	}
	// vmw_vsock_virtio_transport_common is "built in": in ORDER, no file.
	os.WriteFile(filepath.Join(rel, "modules", "ORDER"), []byte("vsock\nvmw_vsock_virtio_transport_common\nvmw_vsock_virtio_transport\n"), 0o644)
	os.WriteFile(filepath.Join(rel, "VERSION"), []byte("6.99.0-test\n"), 0o644)
	os.Symlink("6.99.0-test", filepath.Join(cache, "kernel", "current"))

	envKernel := filepath.Join(t.TempDir(), "bzImage")
	os.WriteFile(envKernel, []byte("not elf"), 0o644)
	envMods := t.TempDir()
	os.MkdirAll(filepath.Join(envMods, "kernel", "net"), 0o755)
	os.WriteFile(filepath.Join(envMods, "kernel", "net", "vsock.ko.zst"), nil, 0o644)
	os.WriteFile(filepath.Join(envMods, "nsm.ko"), nil, 0o644)

	tests := []struct {
		name        string
		cache       string
		kernel      string
		modules     string
		wantErr     error
		wantErrText string
		wantImage   string
		wantVersion string
		wantModules []string
	}{
		{name: "cache", cache: cache, wantImage: filepath.Join(rel, "vmlinuz"), wantVersion: "6.99.0-test",
			wantModules: []string{filepath.Join(rel, "modules/vsock.ko.xz"), filepath.Join(rel, "modules/vmw_vsock_virtio_transport.ko.xz")}},
		{name: "empty cache", cache: t.TempDir(), wantErr: ErrNoKernel, wantErrText: "ci/fetch-kernel.sh"},
		{name: "env kernel", cache: cache, kernel: envKernel, modules: envMods, wantImage: envKernel,
			wantModules: []string{filepath.Join(envMods, "kernel/net/vsock.ko.zst"), filepath.Join(envMods, "nsm.ko")}},
		{name: "env kernel missing", cache: cache, kernel: envKernel + ".nope", wantErr: ErrNoKernel, wantErrText: "NITROINIT_KERNEL="},
		{name: "env modules missing", cache: cache, kernel: envKernel, modules: envMods + "/nope", wantErrText: "NITROINIT_MODULES_DIR="},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("NITROINIT_CACHE", tc.cache)
			t.Setenv("NITROINIT_KERNEL", tc.kernel)
			t.Setenv("NITROINIT_MODULES_DIR", tc.modules)
			k, err := FindKernel()
			if tc.wantErrText != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErrText) {
					t.Fatalf("error %v, want one mentioning %q", err, tc.wantErrText)
				}
				if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
					t.Fatalf("error %v is not %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if k.BootImage() != tc.wantImage || k.Version != tc.wantVersion {
				t.Errorf("image %q version %q, want %q %q", k.BootImage(), k.Version, tc.wantImage, tc.wantVersion)
			}
			if !slices.Equal(k.Modules, tc.wantModules) {
				t.Errorf("modules %q, want %q", k.Modules, tc.wantModules)
			}
		})
	}
}

// TestHasPVHNote runs on the real cached kernel: the extracted vmlinux has
// the note, the bzImage and an ordinary ELF (this test binary) do not.
func TestHasPVHNote(t *testing.T) {
	k, err := FindKernel()
	if err != nil {
		t.Skipf("%v", err)
	}
	self, _ := os.Executable()
	tests := []struct {
		path string
		want bool
	}{
		{k.Vmlinuz, false},
		{self, false},
	}
	if k.Vmlinux != "" {
		tests = append(tests, struct {
			path string
			want bool
		}{k.Vmlinux, true})
	}
	for _, tc := range tests {
		got, err := hasPVHNote(tc.path)
		if err != nil || got != tc.want {
			t.Errorf("hasPVHNote(%s) = %v, %v; want %v", tc.path, got, err, tc.want)
		}
	}
}

func TestCommandLine(t *testing.T) {
	base := Options{QEMU: "qemu-system-x86_64", Kernel: "/k", Initrd: "/i.cpio", MemoryMB: 256, CPUs: 2, GuestCID: 16, Dir: "/d", Append: "x=1"}
	tests := []struct {
		name   string
		modify func(*Options)
		want   []string // consecutive arguments that must appear
		absent []string
	}{
		{"vhost-user tcg", func(o *Options) { o.Route, o.Accel = RouteVhostUser, AccelTCG },
			[]string{"-accel tcg", "-chardev socket,id=vsock0,path=/d/vhost-user.sock", "-device vhost-user-vsock-pci,chardev=vsock0",
				"-object memory-backend-memfd,id=mem,size=256M,share=on", "-m 256M", "-smp 2", "-no-reboot",
				"-append console=ttyS0 panic=-1 no_timer_check quiet x=1", "-kernel /k", "-initrd /i.cpio",
				"-M q35,memory-backend=mem", "-nographic", "-chardev stdio,id=con,signal=off", "-serial chardev:con"},
			[]string{"vhost-vsock-pci", "-cpu", "-display", "mon:stdio", "-serial\x00stdio", "-enable-kvm"}},
		{"vhost-vsock kvm", func(o *Options) { o.Route, o.Accel = RouteVhostVsock, AccelKVM },
			[]string{"-accel kvm", "-cpu host", "-device vhost-vsock-pci,guest-cid=16"},
			[]string{"vhost-user-vsock-pci", "-accel tcg"}},
		{"guest reboots inside the VM", func(o *Options) { o.Route, o.Accel, o.Reboot = RouteVhostUser, AccelTCG, true },
			[]string{"-accel tcg", "-device vhost-user-vsock-pci,chardev=vsock0"},
			[]string{"-no-reboot"}},
		{"qemu chooses accel", func(o *Options) { o.Route, o.QEMU = RouteVhostUser, "qemu-system-x86_64 -enable-kvm" },
			[]string{"qemu-system-x86_64 -enable-kvm"},
			[]string{"-accel"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := base
			tc.modify(&o)
			args, err := CommandLine(o)
			if err != nil {
				t.Fatal(err)
			}
			joined := "\x00" + strings.Join(args, "\x00") + "\x00"
			for _, w := range tc.want {
				if !strings.Contains(joined, "\x00"+strings.ReplaceAll(w, " ", "\x00")+"\x00") {
					// The -append value contains spaces itself.
					if !strings.Contains(joined, "\x00"+strings.Replace(w, " ", "\x00", 1)+"\x00") {
						t.Errorf("argv lacks %q: %q", w, args)
					}
				}
			}
			for _, a := range tc.absent {
				if strings.Contains(joined, a) {
					t.Errorf("argv has %q: %q", a, args)
				}
			}
		})
	}
	if _, err := CommandLine(Options{Initrd: "/i"}); err == nil || !strings.Contains(err.Error(), "Resolve") {
		t.Errorf("unresolved options: error %v, want one pointing at Resolve", err)
	}
}

func TestResolveErrors(t *testing.T) {
	initrd := filepath.Join(t.TempDir(), "i.cpio")
	os.WriteFile(initrd, nil, 0o644)
	kernel := initrd // any existing file will do for these checks
	tests := []struct {
		name string
		o    Options
		want string
	}{
		{"no initrd", Options{}, "no initramfs"},
		{"missing initrd", Options{Initrd: initrd + "x"}, "initramfs: "},
		{"missing kernel", Options{Initrd: initrd, Kernel: "/nope/k"}, "kernel: "},
		{"reserved cid", Options{Initrd: initrd, Kernel: kernel, GuestCID: 2, Accel: AccelTCG}, "reserved"},
		{"parent cid", Options{Initrd: initrd, Kernel: kernel, GuestCID: 3, Route: RouteVhostUser, Accel: AccelTCG}, "parent's CID"},
		{"bad route", Options{Initrd: initrd, Kernel: kernel, Route: "9p", Accel: AccelTCG}, "unknown vsock route"},
		{"bad accel", Options{Initrd: initrd, Kernel: kernel, Route: RouteVhostUser, Accel: "hvf"}, "unknown accelerator"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.o.Resolve(context.Background())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// TestVerdict checks how a VM's end is told from its console and QEMU's
// exit: console output arriving as QEMU writes it (\r\n line ends, lines
// split across writes, a last line without a newline) goes through a
// Console, whose markers, with QEMU's wait error, whether we were stopping
// it and QEMU's last complaint, go to classify. It boots nothing.
func TestVerdict(t *testing.T) {
	exit1 := exec.Command("false").Run() // a real *exec.ExitError, status 1
	if exit1 == nil {
		t.Fatal("false exited 0")
	}
	killed := exec.Command("sh", "-c", "kill -KILL $$").Run() // ended by a signal
	if killed == nil {
		t.Fatal("sh survived SIGKILL")
	}
	tests := []struct {
		name       string
		writes     []string
		waitErr    error
		stopping   ExitKind
		qemuSaid   string
		want       ExitKind
		wantCode   int
		wantDetail string
	}{
		{
			name:   "power_off",
			writes: []string{"init: all services stopped; power-off\r\n[    2.1] reboot: Pow", "er down\r\n"},
			want:   ExitPowerOff,
		},
		{
			name:   "reboot",
			writes: []string{"[    2.1] reboot: Restarting system\r\n"},
			want:   ExitReboot,
		},
		{
			name:       "panic_beats_everything",
			writes:     []string{"[    0.9] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\r\n[    0.9] reboot: Restarting system\r\n"},
			stopping:   ExitTimeout,
			want:       ExitPanic,
			wantDetail: "Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100",
		},
		{
			name:       "stopped_by_us",
			writes:     []string{"boot: ready\r\n"},
			stopping:   ExitStopped,
			qemuSaid:   "qemu-system-x86_64: terminating on signal 15 from pid 7",
			want:       ExitStopped,
			wantDetail: "qemu-system-x86_64: terminating on signal 15 from pid 7",
		},
		{
			name:     "timeout_killed",
			writes:   []string{"boot: ready\r\n"},
			waitErr:  killed,
			stopping: ExitTimeout,
			want:     ExitTimeout,
			wantCode: -1,
		},
		{
			name:     "power_off_after_a_timeout_fired",
			writes:   []string{"[    2.1] reboot: Power down\r\n"},
			stopping: ExitTimeout,
			want:     ExitPowerOff,
		},
		{
			name:       "qemu_fails",
			writes:     []string{"[    0.0] Linux version 6.1"},
			waitErr:    exit1,
			qemuSaid:   "qemu-system-x86_64: -device vhost-vsock-pci: vhost-vsock: failed to open vhost device: No such file or directory",
			want:       ExitFailed,
			wantCode:   1,
			wantDetail: "qemu-system-x86_64: -device vhost-vsock-pci: vhost-vsock: failed to open vhost device: No such file or directory",
		},
		{
			name:       "power_off_line_but_qemu_failed",
			writes:     []string{"[    2.1] reboot: Power down\r\n"},
			waitErr:    exit1,
			want:       ExitFailed,
			wantCode:   1,
			wantDetail: "exit status 1",
		},
		{
			name:       "wait_failed_otherwise",
			writes:     []string{"boot: ready\r\n"},
			waitErr:    errors.New("copying stderr: broken pipe"),
			want:       ExitFailed,
			wantCode:   -1,
			wantDetail: "copying stderr: broken pipe",
		},
		{
			name:       "silent_exit",
			writes:     []string{"boot: ready\r\n", "no newline"},
			want:       ExitFailed,
			wantDetail: "QEMU exited without the kernel printing a power-off, reboot or panic line",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var file, echo strings.Builder
			c := newConsole(&file, &echo)
			for _, w := range tt.writes {
				c.Write([]byte(w))
			}
			c.Close()
			if strings.Contains(file.String(), "\r") || strings.Contains(c.String(), "\r") {
				t.Errorf("console kept \\r: %q", c.String())
			}
			if file.String() != c.String() || echo.String() != c.String() {
				t.Errorf("console.log %q and echo %q differ from the kept console %q", file.String(), echo.String(), c.String())
			}
			// Close ends an unterminated last line.
			want := strings.ReplaceAll(strings.Join(tt.writes, ""), "\r", "")
			if !strings.HasSuffix(want, "\n") {
				want += "\n"
			}
			if c.String() != want {
				t.Errorf("kept console %q, want %q", c.String(), want)
			}
			e := classify(tt.waitErr, c.Markers(), tt.stopping, tt.qemuSaid)
			if e.Kind != tt.want || e.Code != tt.wantCode || e.Detail != tt.wantDetail {
				t.Errorf("classify = %s, status %d, %q; want %s, status %d, %q\nconsole:\n%s", e.Kind, e.Code, e.Detail, tt.want, tt.wantCode, tt.wantDetail, c.String())
			}
		})
	}
}

// TestConsole checks the Console's bookkeeping: lines split across writes,
// the tail, the markers, Changed, and the file closed by Close.
func TestConsole(t *testing.T) {
	file := &closeRecorder{}
	var echo strings.Builder
	c := newConsole(file, &echo)
	changed := c.Changed()
	c.Write([]byte("one\r\ntw"))
	select {
	case <-changed:
	default:
		t.Error("Changed not closed after a line")
	}
	changed = c.Changed()
	c.Write([]byte("o\r\n[ 1.0] reboot: Power down\r\nthr"))
	c.Write([]byte("ee"))
	if got := c.Tail(2); got != "two\n[ 1.0] reboot: Power down" {
		t.Errorf("Tail(2) before Close = %q: the unterminated line must wait", got)
	}
	select {
	case <-changed:
	default:
		t.Error("Changed not closed after more lines")
	}
	if err := c.Close(); err != nil || !file.closed {
		t.Errorf("Close = %v, file closed %v; want nil, true", err, file.closed)
	}
	if got := c.Tail(2); got != "[ 1.0] reboot: Power down\nthree" {
		t.Errorf("Tail(2) = %q", got)
	}
	if got := c.Tail(10); got != "one\ntwo\n[ 1.0] reboot: Power down\nthree" {
		t.Errorf("Tail(10) = %q", got)
	}
	if m := c.Markers(); m != (markers{PowerOff: true}) {
		t.Errorf("markers %+v, want power-off only", m)
	}
	if file.String() != echo.String() || file.String() != "one\ntwo\n[ 1.0] reboot: Power down\nthree\n" {
		t.Errorf("file %q echo %q: want the lines without \\r", file.String(), echo.String())
	}
	var lines []string
	w := LineWriter(func(f string, a ...any) { lines = append(lines, fmt.Sprintf(f, a...)) })
	w.Write([]byte("a\nb"))
	w.Write([]byte("c\n"))
	if want := []string{"console: a", "console: bc"}; !slices.Equal(lines, want) {
		t.Errorf("LineWriter logged %q, want %q", lines, want)
	}
}

// closeRecorder stands in for console.log and notes Close.
type closeRecorder struct {
	strings.Builder
	closed bool
}

func (f *closeRecorder) Close() error { f.closed = true; return nil }

// TestDetectAccelOverrides checks the ways around the KVM probe: the
// environment, and the per-machine cache (a planted answer must be used as
// is, without probing).
func TestDetectAccelOverrides(t *testing.T) {
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
	kernel := filepath.Join(t.TempDir(), "k")
	os.WriteFile(kernel, []byte("k"), 0o644)
	cache := t.TempDir()
	t.Setenv("NITROINIT_CACHE", cache)

	t.Setenv("VMTEST_ACCEL", "kvm")
	if a, why := detectAccel(context.Background(), []string{qemu}, kernel); a != AccelKVM || !strings.Contains(why, "VMTEST_ACCEL") {
		t.Errorf("VMTEST_ACCEL=kvm: got %s (%s)", a, why)
	}
	t.Setenv("VMTEST_ACCEL", "")

	if err := kvmOpens(); err != nil {
		// Without a usable /dev/kvm the answer is TCG, and says why.
		if a, why := detectAccel(context.Background(), []string{qemu}, kernel); a != AccelTCG || !strings.Contains(why, "/dev/kvm") {
			t.Errorf("no /dev/kvm: got %s (%s)", a, why)
		}
		return
	}
	key, err := probeKey([]string{qemu}, kernel)
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(cache, "accel"), 0o755)
	for _, want := range []string{AccelKVM, AccelTCG} {
		os.WriteFile(filepath.Join(cache, "accel", key), []byte(want+" planted answer\n"), 0o644)
		if a, why := detectAccel(context.Background(), []string{qemu}, kernel); a != want || !strings.Contains(why, "planted answer (cached in") {
			t.Errorf("cached %s: got %s (%s)", want, a, why)
		}
	}
	// A different kernel is a different key: the planted answer must not
	// apply to it.
	other := filepath.Join(t.TempDir(), "k2")
	os.WriteFile(other, []byte("k2"), 0o644)
	if k2, _ := probeKey([]string{qemu}, other); k2 == key {
		t.Error("two kernels share a probe cache key")
	}
}
