package boot

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// enclaveOps models a nitro-cli style initramfs: NSM driver at /nsm.ko, a
// vsock module, /rootfs, /cmd and /env, a cgroup2-capable kernel, and an NSM
// device that the driver creates.
func enclaveOps() *recOps {
	r := newRecOps()
	r.files["/nsm.ko"] = []byte("module")
	r.files["/lib/vsock.ko.xz"] = []byte("module")
	r.files["/cmd"] = []byte("/bin/app\n--flag\n")
	r.files["/env"] = []byte("A=1\nB=two\n")
	r.files["/proc/filesystems"] = []byte("nodev\tsysfs\nnodev\tcgroup\nnodev\tcgroup2\n\text4\n")
	r.modes["/rootfs"] = fs.ModeDir | 0o755
	r.modes[NSMDevice] = fs.ModeDevice | fs.ModeCharDevice | 0o600
	r.dial = echoDialer(HeartbeatByte)
	return r
}

func enclaveConfig() Config {
	c := DefaultConfig()
	c.Modules = []string{"/lib/vsock.ko.xz"}
	c.NSMWait = 30 * time.Millisecond
	c.HeartbeatTimeout = 2 * time.Second
	return c
}

// logRecorder collects log lines; safe for concurrent use.
type logRecorder struct {
	mu    sync.Mutex
	lines []string
}

func (l *logRecorder) logf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
}

func (l *logRecorder) has(substr string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.lines {
		if strings.Contains(s, substr) {
			return true
		}
	}
	return false
}

func TestRunOrder(t *testing.T) {
	ops := enclaveOps()
	var logs logRecorder
	res, err := Run(context.Background(), enclaveConfig(), ops, logs.logf)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	// Each call must come after the previous one; the second occurrence of
	// a mount is the pass inside the new root.
	order := []struct {
		call string
		nth  int
	}{
		{"mount devtmpfs /dev", 0},
		{"symlink /dev/fd", 0},
		{"attach /dev/console", 0},
		{"mount proc /proc", 0},
		{"mount sysfs /sys", 0},
		{"mount tmpfs /run", 0},
		{"mount tmpfs /tmp", 0},
		{"mount tmpfs /dev/shm", 0},
		{"mount devpts /dev/pts", 0},
		{"mount cgroup2 /sys/fs/cgroup", 0},
		{"finit /lib/vsock.ko.xz", 0},
		{"finit /nsm.ko", 0},
		{"unlink /nsm.ko", 0},
		{"dial 3:9000", 0},
		{"read /cmd", 0},
		{"unlink /cmd", 0},
		{"unlink /env", 0},
		{"mount bind /rootfs", 0},
		{"chdir /rootfs", 0},
		{"mount move /", 0},
		{"chroot .", 0},
		{"chdir /", 0},
		{"mount devtmpfs /dev", 1},
		{"mount proc /proc", 1},
		{"mount devpts /dev/pts", 1},
		{"mount cgroup2 /sys/fs/cgroup", 1},
	}
	prev := -1
	for _, o := range order {
		i := ops.index(o.call, o.nth)
		if i < 0 {
			t.Fatalf("call %q (occurrence %d) missing; calls: %q", o.call, o.nth, ops.calls)
		}
		if i <= prev {
			t.Fatalf("call %q at %d, want after %q at %d; calls: %q", o.call, i, ops.calls[prev], prev, ops.calls)
		}
		prev = i
	}
	if n := ops.count("attach /dev/console"); n != 1 {
		t.Errorf("console attached %d times, want once (before the switch)", n)
	}
	want := Result{
		NSM:       "present",
		Modules:   []string{"/lib/vsock.ko.xz: loaded"},
		AWSCmd:    []string{"/bin/app", "--flag"},
		AWSEnv:    []string{"A=1", "B=two"},
		Switched:  true,
		Heartbeat: res.Heartbeat,
	}
	if !strings.HasPrefix(res.Heartbeat, "ok in ") {
		t.Errorf("Heartbeat = %q, want ok in ...", res.Heartbeat)
	}
	if res.NSM != want.NSM || !slices.Equal(res.Modules, want.Modules) || !slices.Equal(res.AWSCmd, want.AWSCmd) ||
		!slices.Equal(res.AWSEnv, want.AWSEnv) || res.Switched != want.Switched {
		t.Errorf("Result = %+v, want %+v", res, want)
	}
	for _, s := range res.Steps {
		if s.Err != nil {
			t.Errorf("step %s", s)
		}
	}
	for _, line := range []string{
		"boot: mounted proc on /proc",
		"boot: loaded /lib/vsock.ko.xz (compressed)",
		"boot: heartbeat to 3:9000 ok in ",
		"boot: /dev/nsm present",
		"boot: switched root to /rootfs",
	} {
		if !logs.has(line) {
			t.Errorf("no log line containing %q; logs: %q", line, logs.lines)
		}
	}
}

func TestRunFailurePolicies(t *testing.T) {
	refused := fmt.Errorf("dial: %w", unix.ECONNREFUSED)
	tests := []struct {
		name      string
		setup     func(*recOps, *Config)
		policy    string // expected FatalError.Policy; "" = no error
		switched  bool
		wantCalls []string // must have happened
		noCalls   []string // must not have happened
		check     func(*testing.T, Result)
	}{
		{
			name: "heartbeat fails, warn",
			setup: func(r *recOps, c *Config) {
				r.errs["dial 3:9000"] = refused
				c.HeartbeatTimeout = 150 * time.Millisecond
			},
			switched:  true,
			wantCalls: []string{"mount bind /rootfs"},
			check: func(t *testing.T, res Result) {
				if !strings.HasPrefix(res.Heartbeat, "failed: ") || !strings.Contains(res.Heartbeat, "connection refused") {
					t.Errorf("Heartbeat = %q, want failed with the dial error", res.Heartbeat)
				}
			},
		},
		{
			name: "heartbeat fails, fatal",
			setup: func(r *recOps, c *Config) {
				r.errs["dial 3:9000"] = refused
				c.HeartbeatTimeout = 150 * time.Millisecond
				c.Fatal = map[string]bool{PolicyHeartbeat: true}
			},
			policy:  PolicyHeartbeat,
			noCalls: []string{"read /cmd", "mount bind /rootfs"},
		},
		{
			name: "heartbeat wrong byte, fatal",
			setup: func(r *recOps, c *Config) {
				r.dial = echoDialer(0x00)
				c.Fatal = map[string]bool{PolicyHeartbeat: true}
			},
			policy:  PolicyHeartbeat,
			noCalls: []string{"mount bind /rootfs"},
		},
		{
			name:     "nsm load fails, warn",
			setup:    func(r *recOps, c *Config) { r.errs["finit /nsm.ko"] = unix.EINVAL },
			switched: true,
			noCalls:  []string{"unlink /nsm.ko"},
			check: func(t *testing.T, res Result) {
				if !strings.HasPrefix(res.NSM, "failed: ") {
					t.Errorf("NSM = %q, want failed: ...", res.NSM)
				}
			},
		},
		{
			name: "nsm load fails, fatal",
			setup: func(r *recOps, c *Config) {
				r.errs["finit /nsm.ko"] = unix.EINVAL
				c.Fatal = map[string]bool{PolicyNSM: true}
			},
			policy:  PolicyNSM,
			noCalls: []string{"dial 3:9000", "unlink /nsm.ko"},
		},
		{
			name: "nsm module missing and no device, fatal",
			setup: func(r *recOps, c *Config) {
				delete(r.files, "/nsm.ko")
				delete(r.modes, NSMDevice)
				c.Fatal = map[string]bool{PolicyNSM: true}
			},
			policy:  PolicyNSM,
			noCalls: []string{"finit /nsm.ko"},
		},
		{
			name: "nsm module missing but device present (built in), fatal policy",
			setup: func(r *recOps, c *Config) {
				delete(r.files, "/nsm.ko")
				c.Fatal = map[string]bool{PolicyNSM: true}
			},
			switched: true,
			noCalls:  []string{"finit /nsm.ko"},
			check: func(t *testing.T, res Result) {
				if res.NSM != "present" {
					t.Errorf("NSM = %q, want present", res.NSM)
				}
			},
		},
		{
			name: "nsm loaded but no device is not a failure",
			setup: func(r *recOps, c *Config) {
				delete(r.modes, NSMDevice)
				c.Fatal = map[string]bool{PolicyNSM: true}
			},
			switched:  true,
			wantCalls: []string{"unlink /nsm.ko"},
			check: func(t *testing.T, res Result) {
				if res.NSM != "absent" {
					t.Errorf("NSM = %q, want absent", res.NSM)
				}
			},
		},
		{
			name: "nsm disabled",
			setup: func(r *recOps, c *Config) {
				c.NSMPath = ""
				c.Fatal = map[string]bool{PolicyNSM: true}
			},
			switched: true,
			noCalls:  []string{"finit /nsm.ko", "stat /dev/nsm"},
			check: func(t *testing.T, res Result) {
				if res.NSM != "disabled" {
					t.Errorf("NSM = %q, want disabled", res.NSM)
				}
			},
		},
		{
			name:      "pivot bind fails, warn: no second mount pass",
			setup:     func(r *recOps, c *Config) { r.errs["mount bind /rootfs"] = unix.EPERM },
			noCalls:   []string{"chdir /rootfs", "chroot ."},
			wantCalls: []string{"read /cmd"},
			check: func(t *testing.T, res Result) {
				if res.AWSCmd == nil {
					t.Error("AWSCmd lost after a failed switch")
				}
			},
		},
		{
			name: "pivot move fails, fatal: back to /",
			setup: func(r *recOps, c *Config) {
				r.errs["mount move /"] = unix.EINVAL
				c.Fatal = map[string]bool{PolicyPivotRoot: true}
			},
			policy:    PolicyPivotRoot,
			wantCalls: []string{"chdir /rootfs", "chdir /"},
			noCalls:   []string{"chroot ."},
		},
		{
			name: "pivot dir missing is skipped even when fatal",
			setup: func(r *recOps, c *Config) {
				delete(r.modes, "/rootfs")
				c.Fatal = map[string]bool{PolicyPivotRoot: true}
			},
			noCalls: []string{"mount bind /rootfs"},
		},
		{
			name: "pivot dir is a file, fatal",
			setup: func(r *recOps, c *Config) {
				r.modes["/rootfs"] = 0o644
				c.Fatal = map[string]bool{PolicyPivotRoot: true}
			},
			policy:  PolicyPivotRoot,
			noCalls: []string{"mount bind /rootfs"},
		},
		{
			name:     "pivot disabled",
			setup:    func(r *recOps, c *Config) { c.PivotRoot = false },
			noCalls:  []string{"stat /rootfs", "mount bind /rootfs"},
			switched: false,
		},
		{
			name: "failed mount is logged and boot goes on",
			setup: func(r *recOps, c *Config) {
				r.errs["mount proc /proc"] = unix.EPERM
				c.Fatal = map[string]bool{PolicyHeartbeat: true, PolicyNSM: true, PolicyPivotRoot: true}
			},
			switched:  true,
			wantCalls: []string{"mount sysfs /sys", "dial 3:9000"},
		},
		{
			name: "panicking step is recovered",
			setup: func(r *recOps, c *Config) {
				r.panics["mount sysfs /sys"] = true
				r.panics["chroot ."] = true
				c.Fatal = map[string]bool{PolicyPivotRoot: true}
			},
			policy:    PolicyPivotRoot,
			wantCalls: []string{"mount tmpfs /run", "dial 3:9000"},
			check: func(t *testing.T, res Result) {
				for _, s := range res.Steps {
					if s.Name == "mount /sys" && s.Err != nil && strings.Contains(s.Err.Error(), "panic") {
						return
					}
				}
				t.Errorf("no step records the mount /sys panic: %v", res.Steps)
			},
		},
		{
			name:    "mounts disabled",
			setup:   func(r *recOps, c *Config) { c.Mounts = false },
			noCalls: []string{"mount devtmpfs /dev", "attach /dev/console", "mount proc /proc"},
			// The switch still happens: Mounts only governs the early filesystems.
			switched: true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ops := enclaveOps()
			cfg := enclaveConfig()
			tc.setup(ops, &cfg)
			res, err := Run(context.Background(), cfg, ops, t.Logf)
			if tc.policy == "" {
				if err != nil {
					t.Fatalf("Run: %v, want nil", err)
				}
			} else {
				var fe *FatalError
				if !errors.As(err, &fe) || fe.Policy != tc.policy || !errors.Is(err, ErrFatal) {
					t.Fatalf("Run error = %v, want *FatalError for %q matching ErrFatal", err, tc.policy)
				}
			}
			if res.Switched != tc.switched {
				t.Errorf("Switched = %v, want %v", res.Switched, tc.switched)
			}
			for _, c := range tc.wantCalls {
				if ops.index(c, 0) < 0 {
					t.Errorf("call %q missing; calls: %q", c, ops.calls)
				}
			}
			for _, c := range tc.noCalls {
				if ops.index(c, 0) >= 0 {
					t.Errorf("call %q made, want none; calls: %q", c, ops.calls)
				}
			}
			if !res.Switched && ops.count("mount devtmpfs /dev") > 1 {
				t.Errorf("second mount pass without a root switch; calls: %q", ops.calls)
			}
			if tc.check != nil {
				tc.check(t, res)
			}
		})
	}
}

func TestModules(t *testing.T) {
	tests := []struct {
		name      string
		modules   []string
		errs      map[string]error
		wantFlags map[string]int
		want      []string // Result.Modules, "failed:" entries by prefix
	}{
		{
			name:    "compression selects flags",
			modules: []string{"/m/a.ko.xz", "/m/b.ko.zst", "/m/c.ko.gz", "/m/d.ko"},
			wantFlags: map[string]int{
				"/m/a.ko.xz": unix.MODULE_INIT_COMPRESSED_FILE, "/m/b.ko.zst": unix.MODULE_INIT_COMPRESSED_FILE,
				"/m/c.ko.gz": unix.MODULE_INIT_COMPRESSED_FILE, "/m/d.ko": 0,
			},
			want: []string{"/m/a.ko.xz: loaded", "/m/b.ko.zst: loaded", "/m/c.ko.gz: loaded", "/m/d.ko: loaded"},
		},
		{
			name:      "relative paths are relative to /",
			modules:   []string{"vsock.ko", "lib/x.ko.xz"},
			wantFlags: map[string]int{"/vsock.ko": 0, "/lib/x.ko.xz": unix.MODULE_INIT_COMPRESSED_FILE},
			want:      []string{"vsock.ko: loaded", "lib/x.ko.xz: loaded"},
		},
		{
			name:      "EEXIST is success",
			modules:   []string{"/m/a.ko"},
			errs:      map[string]error{"finit /m/a.ko": fmt.Errorf("finit_module: %w", unix.EEXIST)},
			wantFlags: map[string]int{"/m/a.ko": 0},
			want:      []string{"/m/a.ko: already loaded"},
		},
		{
			name:      "a failure does not stop the next module",
			modules:   []string{"/m/a.ko", "/m/b.ko"},
			errs:      map[string]error{"finit /m/a.ko": unix.ENOEXEC},
			wantFlags: map[string]int{"/m/a.ko": 0, "/m/b.ko": 0},
			want:      []string{"/m/a.ko: failed: ", "/m/b.ko: loaded"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ops := newRecOps()
			for k, v := range tc.errs {
				ops.errs[k] = v
			}
			res, err := Run(context.Background(), Config{Modules: tc.modules}, ops, t.Logf)
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if len(ops.finits) != len(tc.wantFlags) {
				t.Errorf("finit calls %v, want %v", ops.finits, tc.wantFlags)
			}
			for p, f := range tc.wantFlags {
				if got, ok := ops.finits[p]; !ok || got != f {
					t.Errorf("finit %s flags = %d (called %v), want %d", p, got, ok, f)
				}
			}
			if len(res.Modules) != len(tc.want) {
				t.Fatalf("Modules = %q, want %q", res.Modules, tc.want)
			}
			for i, w := range tc.want {
				if !strings.HasPrefix(res.Modules[i], w) {
					t.Errorf("Modules[%d] = %q, want prefix %q", i, res.Modules[i], w)
				}
			}
			// Order of loading is the configured order.
			var want []string
			for _, m := range tc.modules {
				want = append(want, "finit "+modulePath(m))
			}
			if got := ops.callsWithPrefix("finit "); !slices.Equal(got, want) {
				t.Errorf("finit order %q, want %q", got, want)
			}
		})
	}
}

func TestNSM(t *testing.T) {
	tests := []struct {
		name       string
		path       string
		finitErr   error
		device     bool
		wantNSM    string // prefix
		wantFinit  string
		wantUnlink bool
	}{
		{name: "default relative path, device present", path: "nsm.ko", device: true, wantNSM: "present", wantFinit: "/nsm.ko", wantUnlink: true},
		{name: "compressed module, absent device", path: "/lib/nsm.ko.xz", wantNSM: "absent", wantFinit: "/lib/nsm.ko.xz", wantUnlink: true},
		{name: "already loaded still unlinks", path: "nsm.ko", finitErr: unix.EEXIST, device: true, wantNSM: "present", wantFinit: "/nsm.ko", wantUnlink: true},
		{name: "load failure keeps the file", path: "nsm.ko", finitErr: unix.EPERM, wantNSM: "failed: ", wantFinit: "/nsm.ko"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ops := newRecOps()
			abs := modulePath(tc.path)
			ops.files[abs] = []byte("module")
			if tc.device {
				ops.modes[NSMDevice] = fs.ModeDevice | fs.ModeCharDevice
			} else {
				// A regular file at /dev/nsm is not the device.
				ops.modes[NSMDevice] = 0o644
			}
			if tc.finitErr != nil {
				ops.errs["finit "+abs] = tc.finitErr
			}
			var logs logRecorder
			res, err := Run(context.Background(), Config{NSMPath: tc.path, NSMWait: 40 * time.Millisecond}, ops, logs.logf)
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if !strings.HasPrefix(res.NSM, tc.wantNSM) {
				t.Errorf("NSM = %q, want prefix %q", res.NSM, tc.wantNSM)
			}
			if ops.index("finit "+tc.wantFinit, 0) < 0 {
				t.Errorf("no finit of %s; calls %q", tc.wantFinit, ops.calls)
			}
			unlinked := ops.index("unlink "+abs, 0) >= 0
			if unlinked != tc.wantUnlink {
				t.Errorf("unlinked %s = %v, want %v", abs, unlinked, tc.wantUnlink)
			}
			if tc.wantUnlink && ops.index("unlink "+abs, 0) < ops.index("finit "+abs, 0) {
				t.Errorf("unlink before finit; calls %q", ops.calls)
			}
			if tc.wantNSM == "present" || tc.wantNSM == "absent" {
				if !logs.has("boot: /dev/nsm " + tc.wantNSM) {
					t.Errorf("no log line for /dev/nsm %s; logs %q", tc.wantNSM, logs.lines)
				}
			}
		})
	}
}

func TestMountFlagsAndTolerance(t *testing.T) {
	ops := enclaveOps()
	ops.errs["mount devtmpfs /dev"] = fmt.Errorf("mount: %w", unix.EBUSY)
	ops.errs["symlink /dev/fd"] = &fs.PathError{Op: "symlink", Path: "/dev/fd", Err: fs.ErrExist}
	ops.errs["mount proc /proc"] = fmt.Errorf("mount: %w", unix.EBUSY)
	ops.errs["mkdir /run"] = &fs.PathError{Op: "mkdir", Path: "/run", Err: fs.ErrExist}
	cfg := Config{Mounts: true, Cgroups: CgroupsOff}
	res, err := Run(context.Background(), cfg, ops, t.Logf)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	stepErr := map[string]error{}
	for _, s := range res.Steps {
		stepErr[s.Name] = s.Err
	}
	tests := []struct {
		step    string
		wantErr bool
	}{
		{"mount /dev", false}, // EBUSY on devtmpfs: already mounted
		{"dev links", false},  // existing link
		{"mount /proc", true}, // EBUSY elsewhere is a real failure
		{"mount /run", false}, // existing mount point
		{"cgroups", false},    // off
		{"mount /dev/pts", false},
	}
	for _, tc := range tests {
		err, ok := stepErr[tc.step]
		if !ok {
			t.Errorf("no step %q in %v", tc.step, res.Steps)
			continue
		}
		if (err != nil) != tc.wantErr {
			t.Errorf("step %q error = %v, want error %v", tc.step, err, tc.wantErr)
		}
	}
	nodev := uintptr(unix.MS_NODEV | unix.MS_NOSUID | unix.MS_NOEXEC)
	dev := uintptr(unix.MS_NOSUID | unix.MS_NOEXEC)
	wantFlags := map[string]uintptr{
		"/dev": dev, "/proc": nodev, "/sys": nodev, "/run": nodev, "/tmp": nodev, "/dev/shm": nodev, "/dev/pts": dev,
	}
	for _, m := range ops.mounts {
		if w, ok := wantFlags[m.target]; !ok || m.flags != w {
			t.Errorf("mount %s on %s flags %#x, want %#x", m.fstype, m.target, m.flags, w)
		}
		if m.target == "/run" && m.data != "mode=0755" {
			t.Errorf("/run options %q, want mode=0755", m.data)
		}
	}
	if len(ops.mounts) != len(wantFlags) {
		t.Errorf("%d mounts, want %d: %+v", len(ops.mounts), len(wantFlags), ops.mounts)
	}
	if ops.count("cgroups") != 0 || len(ops.callsWithPrefix("read /proc")) != 0 {
		t.Errorf("cgroups off still probed the kernel: %q", ops.calls)
	}
}

func TestCgroups(t *testing.T) {
	procCgroups := "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpuset\t0\t1\t1\ncpu\t0\t1\t1\nmemory\t0\t1\t0\npids\t0\t1\t1\n"
	v1Mounts := []string{"mount tmpfs /sys/fs/cgroup", "mount cgroup /sys/fs/cgroup/cpuset", "mount cgroup /sys/fs/cgroup/cpu", "mount cgroup /sys/fs/cgroup/pids"}
	tests := []struct {
		name        string
		mode        string
		filesystems string // "" = /proc/filesystems unreadable
		cgroups     string // "" = no /proc/cgroups
		errs        map[string]error
		want        []string // cgroup-related mounts, in order
		wantErr     bool
	}{
		{name: "auto picks v2", mode: CgroupsAuto, filesystems: "nodev\tcgroup\nnodev\tcgroup2\n", cgroups: procCgroups, want: []string{"mount cgroup2 /sys/fs/cgroup"}},
		{name: "empty means auto", mode: "", filesystems: "nodev\tcgroup2\n", want: []string{"mount cgroup2 /sys/fs/cgroup"}},
		{name: "auto falls back to v1", mode: CgroupsAuto, filesystems: "nodev\tcgroup\n", cgroups: procCgroups, want: v1Mounts},
		{name: "auto with neither", mode: CgroupsAuto, filesystems: "nodev\tproc\n"},
		{name: "v1 forced", mode: CgroupsV1, filesystems: "nodev\tcgroup2\n", cgroups: procCgroups, want: v1Mounts},
		{name: "v2 forced", mode: CgroupsV2, cgroups: procCgroups, want: []string{"mount cgroup2 /sys/fs/cgroup"}},
		{name: "off", mode: CgroupsOff, filesystems: "nodev\tcgroup2\n", cgroups: procCgroups},
		{name: "unknown mode", mode: "hybrid", filesystems: "nodev\tcgroup2\n", wantErr: true},
		{name: "v1 without /proc/cgroups", mode: CgroupsV1, wantErr: true},
		{name: "v1 malformed /proc/cgroups", mode: CgroupsV1, cgroups: "#h\ncpu 0 1\n", wantErr: true},
		{
			name: "v1 one controller fails, others mounted", mode: CgroupsV1, cgroups: procCgroups,
			errs: map[string]error{"mount cgroup /sys/fs/cgroup/cpu": unix.EBUSY}, want: v1Mounts, wantErr: true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ops := newRecOps()
			if tc.filesystems != "" {
				ops.files["/proc/filesystems"] = []byte(tc.filesystems)
			}
			if tc.cgroups != "" {
				ops.files["/proc/cgroups"] = []byte(tc.cgroups)
			}
			for k, v := range tc.errs {
				ops.errs[k] = v
			}
			res, err := Run(context.Background(), Config{Mounts: true, Cgroups: tc.mode}, ops, t.Logf)
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			var got []string
			for _, c := range ops.callsWithPrefix("mount ") {
				if strings.Contains(c, "/sys/fs/cgroup") {
					got = append(got, c)
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("cgroup mounts %q, want %q", got, tc.want)
			}
			var stepErr error
			for _, s := range res.Steps {
				if s.Name == "cgroups" {
					stepErr = s.Err
				}
			}
			if (stepErr != nil) != tc.wantErr {
				t.Errorf("cgroups step error %v, want error %v", stepErr, tc.wantErr)
			}
			for _, m := range ops.mounts {
				if m.fstype == "cgroup" && m.data != strings.TrimPrefix(m.target, "/sys/fs/cgroup/") {
					t.Errorf("v1 mount on %s has options %q, want the controller name", m.target, m.data)
				}
				if strings.HasPrefix(m.target, "/sys/fs/cgroup") && m.flags != unix.MS_NODEV|unix.MS_NOSUID|unix.MS_NOEXEC {
					t.Errorf("cgroup mount on %s flags %#x", m.target, m.flags)
				}
			}
		})
	}
}

func TestFatalErrorMessage(t *testing.T) {
	err := error(&FatalError{Policy: PolicyHeartbeat, Err: unix.ECONNREFUSED})
	if !errors.Is(err, ErrFatal) || !errors.Is(err, unix.ECONNREFUSED) {
		t.Errorf("%v does not match ErrFatal and its cause", err)
	}
	if !strings.Contains(err.Error(), "on_failure.heartbeat") {
		t.Errorf("message %q does not name the config key", err)
	}
}

func TestRunCancelledContext(t *testing.T) {
	ops := enclaveOps()
	ops.errs["dial 3:9000"] = unix.ECONNREFUSED
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	cfg := enclaveConfig()
	cfg.Fatal = map[string]bool{PolicyHeartbeat: true}
	_, err := Run(ctx, cfg, ops, t.Logf)
	if !errors.Is(err, ErrFatal) || !errors.Is(err, context.Canceled) {
		t.Errorf("Run error = %v, want fatal heartbeat wrapping context.Canceled", err)
	}
}
