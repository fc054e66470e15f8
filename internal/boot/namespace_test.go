package boot

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// The tests here re-run the test binary as a child in its own mount
// namespace (Go makes its mounts private), so that the real mounts and the
// real root switch happen without touching the machine's mount table.

const (
	envSwitchHelper = "BOOT_TEST_SWITCH_ROOT"
	envAttachHelper = "BOOT_TEST_ATTACH"
)

func runHelper(t *testing.T, test, env string, unshare bool) (string, error) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+test+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), env)
	if unshare {
		cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// consoleStub keeps the child's output out of the machine console; every
// other operation is the real one.
type consoleStub struct{ Ops }

func (consoleStub) AttachStdio(string) error { return nil }

// TestSwitchRootInNamespace builds a fake initramfs (with /cmd, /env and
// /rootfs), chroots a child into it and runs the real boot sequence there:
// early mounts, /cmd, the AWS root switch, and the mounts again in the new
// root. No module is loaded and no heartbeat is sent.
func TestSwitchRootInNamespace(t *testing.T) {
	if dir := os.Getenv(envSwitchHelper); dir != "" {
		switchRootChild(t, dir)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root for mount namespaces")
	}
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "cmd"), "/bin/app\narg\n")
	writeFile(t, filepath.Join(dir, "env"), "K=V\n")
	if err := os.MkdirAll(filepath.Join(dir, "rootfs"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "rootfs", "marker"), "new root")
	out, err := runHelper(t, "TestSwitchRootInNamespace", envSwitchHelper+"="+dir, true)
	if err != nil {
		t.Fatalf("child failed: %v\n%s", err, out)
	}
	if !strings.Contains(out, "boot: switched root to /rootfs") {
		t.Errorf("child did not log the switch:\n%s", out)
	}
	for _, name := range []string{"cmd", "env"} {
		if _, err := os.Lstat(filepath.Join(dir, name)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("initramfs /%s not removed (stat: %v)", name, err)
		}
	}
	// The child's mounts died with its namespace: the rootfs is plain again.
	if mounted(t, filepath.Join(dir, "rootfs", "proc")) {
		t.Errorf("a mount leaked out of the child's namespace")
	}
}

func switchRootChild(t *testing.T, dir string) {
	// Make the fake initramfs a mount and enter it, as the kernel would.
	must(t, unix.Mount(dir, dir, "", unix.MS_BIND, ""), "bind initramfs")
	must(t, unix.Chroot(dir), "chroot initramfs")
	must(t, os.Chdir("/"), "chdir /")
	cfg := Config{Mounts: true, Cgroups: CgroupsAuto, PivotRoot: true, PivotRootDir: "/rootfs"}
	res, err := Run(context.Background(), cfg, consoleStub{SystemOps()}, t.Logf)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	for _, s := range res.Steps {
		if s.Err != nil {
			t.Errorf("step %s", s)
		}
	}
	if !res.Switched || !slices.Equal(res.AWSCmd, []string{"/bin/app", "arg"}) || !slices.Equal(res.AWSEnv, []string{"K=V"}) {
		t.Errorf("Result %+v", res)
	}
	if data, err := os.ReadFile("/marker"); err != nil || string(data) != "new root" {
		t.Fatalf("/marker in the new root: %q, %v", data, err)
	}
	nodev := int64(unix.ST_NODEV | unix.ST_NOSUID | unix.ST_NOEXEC)
	dev := int64(unix.ST_NOSUID | unix.ST_NOEXEC)
	tests := []struct {
		path  string
		magic int64
		flags int64
	}{
		{"/dev", unix.TMPFS_MAGIC, dev},
		{"/proc", unix.PROC_SUPER_MAGIC, nodev},
		{"/sys", unix.SYSFS_MAGIC, nodev},
		{"/run", unix.TMPFS_MAGIC, nodev},
		{"/tmp", unix.TMPFS_MAGIC, nodev},
		{"/dev/shm", unix.TMPFS_MAGIC, nodev},
		{"/dev/pts", unix.DEVPTS_SUPER_MAGIC, dev},
		{"/sys/fs/cgroup", unix.CGROUP2_SUPER_MAGIC, nodev},
	}
	for _, tc := range tests {
		var st unix.Statfs_t
		if err := unix.Statfs(tc.path, &st); err != nil {
			t.Errorf("statfs %s: %v", tc.path, err)
			continue
		}
		if int64(st.Type) != tc.magic {
			t.Errorf("%s has filesystem magic %#x, want %#x", tc.path, st.Type, tc.magic)
		}
		if int64(st.Flags)&tc.flags != tc.flags {
			t.Errorf("%s mount flags %#x lack %#x", tc.path, st.Flags, tc.flags)
		}
	}
	if fi, err := os.Stat("/run"); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("/run mode %v, %v; want 0755", fi.Mode(), err)
	}
	if target, err := os.Readlink("/dev/fd"); err != nil || target != "/proc/self/fd" {
		t.Errorf("/dev/fd -> %q, %v", target, err)
	}
	if _, err := os.Stat("/proc/self/fd/0"); err != nil {
		t.Errorf("/proc not usable in the new root: %v", err)
	}
}

// TestAttachStdio runs the real AttachStdio on a plain file in a child and
// checks that stdout and stderr land in it and survive exec.
func TestAttachStdio(t *testing.T) {
	if path := os.Getenv(envAttachHelper); path != "" {
		if err := SystemOps().AttachStdio(path); err != nil {
			os.Exit(3)
		}
		for fd := 0; fd <= 2; fd++ {
			if flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil || flags&unix.FD_CLOEXEC != 0 {
				os.Exit(4)
			}
		}
		os.Stdout.WriteString("to stdout\n")
		os.Stderr.WriteString("to stderr\n")
		// A child of ours inherits the console too.
		sh := exec.Command("/bin/sh", "-c", "echo from child")
		sh.Stdout, sh.Stderr = os.Stdout, os.Stderr
		if err := sh.Run(); err != nil {
			os.Exit(5)
		}
		os.Exit(0)
	}
	console := filepath.Join(t.TempDir(), "console")
	writeFile(t, console, "")
	out, err := runHelper(t, "TestAttachStdio", envAttachHelper+"="+console, false)
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	data, err := os.ReadFile(console)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"to stdout\n", "to stderr\n", "from child\n"} {
		if !strings.Contains(string(data), want) {
			t.Errorf("console file %q lacks %q", data, want)
		}
	}
	if strings.Contains(out, "to stdout") {
		t.Errorf("output still reached the original stdout: %q", out)
	}
}

func mounted(t *testing.T, path string) bool {
	t.Helper()
	var st, parent unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return false
	}
	if err := unix.Stat(filepath.Dir(path), &parent); err != nil {
		return false
	}
	return st.Dev != parent.Dev
}

func must(t *testing.T, err error, what string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}
