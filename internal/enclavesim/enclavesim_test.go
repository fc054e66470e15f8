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
		got, err := HasPVHNote(tc.path)
		if err != nil || got != tc.want {
			t.Errorf("HasPVHNote(%s) = %v, %v; want %v", tc.path, got, err, tc.want)
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
				"-append console=ttyS0 panic=-1 no_timer_check quiet x=1", "-kernel /k", "-initrd /i.cpio"},
			[]string{"vhost-vsock-pci", "-cpu"}},
		{"vhost-vsock kvm", func(o *Options) { o.Route, o.Accel = RouteVhostVsock, AccelKVM },
			[]string{"-accel kvm", "-cpu host", "-device vhost-vsock-pci,guest-cid=16"},
			[]string{"vhost-user-vsock-pci", "-accel tcg"}},
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

func TestClassify(t *testing.T) {
	fail := &exec.ExitError{}
	tests := []struct {
		name     string
		err      error
		m        markers
		stopping ExitKind
		stderr   string
		want     ExitKind
	}{
		{"power off", nil, markers{powerOff: true}, 0, "", ExitPowerOff},
		{"reboot", nil, markers{reboot: true}, 0, "", ExitReboot},
		{"panic wins", nil, markers{reboot: true, panic: "Kernel panic - not syncing: x"}, 0, "", ExitPanic},
		{"power off beats a late stop", nil, markers{powerOff: true}, ExitStopped, "", ExitPowerOff},
		{"stopped", nil, markers{}, ExitStopped, "terminating on signal 15", ExitStopped},
		{"timeout", fail, markers{}, ExitTimeout, "", ExitTimeout},
		{"qemu error", fail, markers{}, 0, "could not open kernel", ExitFailed},
		{"silent exit", nil, markers{}, 0, "", ExitFailed},
	}
	for _, tc := range tests {
		if got, _ := classify(tc.err, tc.m, tc.stopping, tc.stderr); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
	}
}

func TestConsole(t *testing.T) {
	var file, user strings.Builder
	c := newConsole(&file, &user)
	c.pump(strings.NewReader("one\r\ntwo\r\n[ 1.0] reboot: Power down\r\nthree"))
	if got := c.tail(2); got != "[ 1.0] reboot: Power down\nthree" {
		t.Errorf("tail(2) = %q", got)
	}
	if !c.markers().powerOff || c.markers().reboot {
		t.Errorf("markers %+v, want power-off only", c.markers())
	}
	if file.String() != user.String() || strings.Contains(file.String(), "\r") {
		t.Errorf("file %q user %q: want the same text without \\r", file.String(), user.String())
	}
	var lines []string
	w := LineWriter(func(f string, a ...any) { lines = append(lines, fmt.Sprintf(f, a...)) })
	w.Write([]byte("a\nb"))
	w.Write([]byte("c\n"))
	if want := []string{"console: a", "console: bc"}; !slices.Equal(lines, want) {
		t.Errorf("LineWriter logged %q, want %q", lines, want)
	}
}

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
	if a, why := DetectAccel(context.Background(), []string{qemu}, kernel); a != AccelKVM || !strings.Contains(why, "VMTEST_ACCEL") {
		t.Errorf("VMTEST_ACCEL=kvm: got %s (%s)", a, why)
	}
	t.Setenv("VMTEST_ACCEL", "")

	if err := kvmOpens(); err != nil {
		// Without a usable /dev/kvm the answer is TCG, and says why.
		if a, why := DetectAccel(context.Background(), []string{qemu}, kernel); a != AccelTCG || !strings.Contains(why, "/dev/kvm") {
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
		if a, why := DetectAccel(context.Background(), []string{qemu}, kernel); a != want || !strings.Contains(why, "planted answer (cached in") {
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
