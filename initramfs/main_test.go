package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/u-root/mkuimage/cpio"

	"github.com/nitroinit/nitroinit/internal/enclavesim"
	"github.com/nitroinit/nitroinit/internal/testbin"
)

// run executes the command line in-process and returns its output.
func run(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	root := newRoot()
	var o, e bytes.Buffer
	root.SetOut(&o)
	root.SetErr(&e)
	root.SetArgs(args)
	err = root.Execute()
	return o.String(), e.String(), err
}

func TestBuild(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	initBin := write("init", "INIT")
	cfg := write("init.yaml", "service_dir: /service\n")
	svc := write("a.service", "ExecStart = \"/bin/a\"\n")
	extra := write("extra", "E")
	base := []string{"build", "--init", initBin, "--config", cfg, "--service", svc, "--file", extra + ":/usr/bin/extra"}

	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"ok", nil, ""},
		{"no output", []string{}, "no output given"},
		{"missing service", []string{"--service", filepath.Join(dir, "gone.service")}, "--service " + filepath.Join(dir, "gone.service")},
		{"bad file arg", []string{"--file", "nocolon"}, "want SRC:/DST"},
		{"missing init", []string{"--init", filepath.Join(dir, "noinit")}, "--init " + filepath.Join(dir, "noinit")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out.cpio")
			args := append([]string{}, base...)
			if tc.name != "no output" {
				args = append(args, "-o", out)
			}
			args = append(args, tc.args...)
			_, _, err := run(t, args...)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				if _, serr := os.Stat(out); serr == nil {
					t.Errorf("a failed build left %s behind", out)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			// A second build must give the same bytes.
			out2 := filepath.Join(t.TempDir(), "out2.cpio")
			if _, _, err := run(t, append(append([]string{}, base...), "-o", out2)...); err != nil {
				t.Fatal(err)
			}
			a, _ := os.ReadFile(out)
			b, _ := os.ReadFile(out2)
			if len(a) == 0 || !bytes.Equal(a, b) {
				t.Errorf("two builds differ or are empty (%d, %d bytes)", len(a), len(b))
			}
		})
	}
}

// TestPrintCmdline checks that `boot --print-cmdline` prints the QEMU
// command line the simulator would run, without running anything.
func TestPrintCmdline(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "x.cpio")
	kernel := filepath.Join(dir, "bzImage")
	os.WriteFile(img, nil, 0o644)
	os.WriteFile(kernel, nil, 0o644)
	tests := []struct {
		route string
		want  []string
	}{
		{enclavesim.RouteVhostUser, []string{"-device vhost-user-vsock-pci,chardev=vsock0", "path=" + dir + "/sim/vhost-user.sock", "-accel tcg", "-m 256M", "share=on", "'console=ttyS0 panic=-1 no_timer_check quiet a=b'"}},
	}
	for _, tc := range tests {
		out, _, err := run(t, "boot", "--print-cmdline", "--kernel", kernel, "--accel", "tcg", "--route", tc.route,
			"--memory", "256", "--dir", filepath.Join(dir, "sim"), "--append", "a=b", img)
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("%s: command line lacks %q:\n%s", tc.route, w, out)
			}
		}
	}
}

func TestShellJoin(t *testing.T) {
	tests := []struct {
		in   []string
		want string
	}{
		{[]string{"a", "b=c", "/x/y.sock"}, "a b=c /x/y.sock"},
		{[]string{"has space", "it's", ""}, `'has space' 'it'\''s' ''`},
	}
	for _, tc := range tests {
		if got := shellJoin(tc.in); got != tc.want {
			t.Errorf("shellJoin(%q) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

// TestDemo runs the README's first command end to end: build, boot, initctl
// from the host, shutdown, power-off.
func TestDemo(t *testing.T) {
	out, _ := runDemoCommand(t, "demo")
	for _, want := range []string{"heartbeat received", "greeter", "running", "/usr/bin/svc sleep", "VM ended: power-off", "Demo done"} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
}

// runDemoCommand runs one of the demos (demo, demo-eif) with freshly built
// init, initctl and svc, and returns its output; it skips where no VM can
// boot and fails if the demo does.
func runDemoCommand(t *testing.T, name string) (stdout, stderr string) {
	t.Helper()
	if testing.Short() {
		t.Skip("boots a VM; skipped with -short")
	}
	if _, err := enclavesim.FindKernel(); err != nil {
		t.Skipf("%v", err)
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil && os.Getenv("VMTEST_QEMU") == "" {
		t.Skip("qemu-system-x86_64 not installed: run ci/install-deps.sh")
	}
	bin := t.TempDir()
	if _, err := testbin.Build(bin, "", "./init", "./initctl", "./internal/testprog/svc"); err != nil {
		t.Fatal(err)
	}
	out, stderr, err := run(t, name, "--timeout", "5m",
		"--init", filepath.Join(bin, "init"), "--initctl", filepath.Join(bin, "initctl"), "--svc", filepath.Join(bin, "svc"))
	t.Logf("%s output:\n%s%s", name, out, stderr)
	if err != nil {
		t.Fatal(err)
	}
	return out, stderr
}

// TestBuildServicesWithRootfs: with --rootfs, --service files go where init
// reads services after the switch, or the build says why it cannot.
func TestBuildServicesWithRootfs(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	initBin := write("init", "INIT")
	svc := write("a.service", "ExecStart = \"/bin/a\"\n")
	bare := filepath.Join(dir, "bare")
	os.MkdirAll(filepath.Join(bare, "bin"), 0o755)
	own := filepath.Join(dir, "own")
	write("own/etc/init.yaml", "service_dir: /srv/services\n")
	tests := []struct {
		name    string
		args    []string
		want    string // the service's path in the image
		wantErr string
	}{
		{name: "default config", args: []string{"--rootfs", bare}, want: "rootfs/service/a.service"},
		{name: "sim config", args: []string{"--rootfs", bare, "--sim-config"}, want: "rootfs/service/a.service"},
		{name: "initramfs service_dir", args: []string{"--rootfs", bare, "--config", write("c1.yaml", "service_dir: /etc/svc\n")}, want: "rootfs/etc/svc/a.service"},
		{name: "new root's service_dir wins", args: []string{"--rootfs", own, "--config", write("c2.yaml", "service_dir: /etc/svc\n")}, want: "rootfs/srv/services/a.service"},
		{name: "no root switch", args: []string{"--rootfs", bare, "--config", write("c3.yaml", "pivot_root: false\n")}, want: "service/a.service"},
		{name: "no rootfs", want: "service/a.service"},
		{name: "switch elsewhere", args: []string{"--rootfs", bare, "--config", write("c4.yaml", "pivot_root_dir: /app\n")},
			wantErr: "switches to pivot_root_dir /app, but --rootfs is copied to /rootfs, so init would never read the services; set pivot_root_dir: /rootfs"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out.cpio")
			_, stderr, err := run(t, append([]string{"build", "-o", out, "--init", initBin, "--service", svc}, tc.args...)...)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(b)))
			if err != nil {
				t.Fatal(err)
			}
			var services []string
			for _, r := range recs {
				if strings.HasSuffix(r.Name, ".service") {
					services = append(services, r.Name)
				}
			}
			if len(services) != 1 || services[0] != tc.want {
				t.Errorf("service files in the image: %q, want [%q]; build said:\n%s", services, tc.want, stderr)
			}
		})
	}
}
