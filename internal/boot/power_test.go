package boot

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestPowerOff replaces the reboot system call: a broken guard must not be
// able to take the test machine down.
func TestPowerOff(t *testing.T) {
	tests := []struct {
		name      string
		pid       int
		reboot    bool
		rebootErr error
		wantCmd   int // 0: reboot(2) must not be called
		wantErr   string
	}{
		{name: "power off as PID 1", pid: 1, wantCmd: unix.LINUX_REBOOT_CMD_POWER_OFF},
		{name: "restart as PID 1", pid: 1, reboot: true, wantCmd: unix.LINUX_REBOOT_CMD_RESTART},
		{name: "refused when not PID 1", pid: 4242, wantErr: "PID 4242, not 1"},
		{name: "reboot error reported", pid: 1, rebootErr: unix.EPERM, wantCmd: unix.LINUX_REBOOT_CMD_POWER_OFF, wantErr: "operation not permitted"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			oldPid, oldSync, oldReboot := getpid, syncFS, rebootCall
			t.Cleanup(func() { getpid, syncFS, rebootCall = oldPid, oldSync, oldReboot })
			var calls []string
			gotCmd := 0
			getpid = func() int { return tc.pid }
			syncFS = func() { calls = append(calls, "sync") }
			rebootCall = func(cmd int) error {
				calls = append(calls, "reboot")
				gotCmd = cmd
				return tc.rebootErr
			}
			err := PowerOff(tc.reboot)
			if (tc.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("PowerOff error = %v, want %q", err, tc.wantErr)
			}
			if gotCmd != tc.wantCmd {
				t.Errorf("reboot cmd %#x, want %#x", gotCmd, tc.wantCmd)
			}
			if tc.wantCmd != 0 && strings.Join(calls, ",") != "sync,reboot" {
				t.Errorf("calls %v, want sync before reboot", calls)
			}
		})
	}
}

// TestSystemOpsFinitModule exercises the real finit_module path with files
// the kernel must reject; nothing is loaded.
func TestSystemOpsFinitModule(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.ko")
	if err := os.WriteFile(garbage, []byte("not an ELF module"), 0o644); err != nil {
		t.Fatal(err)
	}
	ops := SystemOps()
	if err := ops.FinitModule(filepath.Join(dir, "missing.ko"), 0); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing module: %v, want not-exist", err)
	}
	err := ops.FinitModule(garbage, 0)
	if err == nil || errors.Is(err, unix.EEXIST) {
		t.Fatalf("garbage module: %v, want a rejection", err)
	}
	if !strings.Contains(err.Error(), garbage) {
		t.Errorf("error %q does not name the file", err)
	}
}

// TestSystemOpsFiles covers the plain filesystem operations on a temp dir.
func TestSystemOpsFiles(t *testing.T) {
	dir := t.TempDir()
	ops := SystemOps()
	d := filepath.Join(dir, "run")
	if err := ops.Mkdir(d, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := ops.Mkdir(d, 0o755); !errors.Is(err, fs.ErrExist) {
		t.Errorf("second mkdir: %v, want exist", err)
	}
	link := filepath.Join(dir, "fd")
	if err := ops.Symlink("/proc/self/fd", link); err != nil {
		t.Fatal(err)
	}
	if err := ops.Symlink("/proc/self/fd", link); !errors.Is(err, fs.ErrExist) {
		t.Errorf("second symlink: %v, want exist", err)
	}
	if got, _ := os.Readlink(link); got != "/proc/self/fd" {
		t.Errorf("link points to %q", got)
	}
	fi, err := ops.Stat("/dev/null")
	if err != nil || fi.Mode()&fs.ModeCharDevice == 0 {
		t.Errorf("/dev/null stat %v, %v: want a character device", fi, err)
	}
	if err := ops.Unlink(link); err != nil {
		t.Fatal(err)
	}
	if err := ops.Unlink(link); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("second unlink: %v, want not-exist", err)
	}
	if err := ops.Mount("none", filepath.Join(dir, "nowhere"), "tmpfs", 0, ""); !errors.Is(err, unix.ENOENT) {
		t.Errorf("mount on a missing dir: %v, want ENOENT", err)
	}
}
