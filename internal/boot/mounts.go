package boot

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Mount flags as AWS's bootstrap init uses them: nothing executable or
// set-uid lives on these filesystems, and only /dev and /dev/pts hold devices.
const (
	flagsNoDev  = unix.MS_NODEV | unix.MS_NOSUID | unix.MS_NOEXEC
	flagsDevice = unix.MS_NOSUID | unix.MS_NOEXEC
)

// mountSpec is one early filesystem.
type mountSpec struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
	// busyOK tolerates EBUSY: the kernel may have mounted devtmpfs on /dev
	// already (CONFIG_DEVTMPFS_MOUNT, or a second pass on the same tree).
	busyOK bool
}

// devMount comes first so that the console and /dev links exist before
// anything else is logged to the console.
var devMount = mountSpec{source: "dev", target: "/dev", fstype: "devtmpfs", flags: flagsDevice, busyOK: true}

// laterMounts follow the console; /dev/shm and /dev/pts need /dev.
var laterMounts = []mountSpec{
	{source: "proc", target: "/proc", fstype: "proc", flags: flagsNoDev},
	{source: "sysfs", target: "/sys", fstype: "sysfs", flags: flagsNoDev},
	{source: "tmpfs", target: "/run", fstype: "tmpfs", flags: flagsNoDev, data: "mode=0755"},
	{source: "tmpfs", target: "/tmp", fstype: "tmpfs", flags: flagsNoDev, data: "mode=1777"},
	{source: "shm", target: "/dev/shm", fstype: "tmpfs", flags: flagsNoDev, data: "mode=1777"},
	{source: "devpts", target: "/dev/pts", fstype: "devpts", flags: flagsDevice, data: "mode=0620,ptmxmode=0666"},
}

// devLinks are the /dev symlinks programs expect and devtmpfs lacks.
var devLinks = []struct{ link, target string }{
	{"/dev/fd", "/proc/self/fd"},
	{"/dev/stdin", "/proc/self/fd/0"},
	{"/dev/stdout", "/proc/self/fd/1"},
	{"/dev/stderr", "/proc/self/fd/2"},
}

const cgroupRoot = "/sys/fs/cgroup"

// mountEarly mounts the early filesystems. first is true before the root
// switch: only then is stdio attached to the console (the descriptors stay
// valid across the switch). Every failure is logged and boot goes on.
func (b *booter) mountEarly(first bool) {
	where := "initramfs"
	if !first {
		where = "new root"
	}
	b.logf("boot: mounting early filesystems (%s)", where)
	b.step("mount "+devMount.target, func() error { return b.mountOne(devMount) })
	b.step("dev links", b.makeDevLinks)
	if first {
		b.step("console", func() error {
			if err := b.ops.AttachStdio("/dev/console"); err != nil {
				err = fmt.Errorf("attach stdin/stdout/stderr to /dev/console: %w (output goes wherever the kernel pointed it)", err)
				b.logf("boot: %v", err)
				return err
			}
			b.logf("boot: stdin, stdout and stderr attached to /dev/console")
			return nil
		})
	}
	for _, m := range laterMounts {
		b.step("mount "+m.target, func() error { return b.mountOne(m) })
	}
	b.step("cgroups", b.mountCgroups)
}

func (b *booter) mountOne(m mountSpec) error {
	mkErr := b.ops.Mkdir(m.target, 0o755)
	if mkErr != nil && errors.Is(mkErr, fs.ErrExist) {
		mkErr = nil
	}
	err := b.ops.Mount(m.source, m.target, m.fstype, m.flags, m.data)
	switch {
	case err == nil:
		b.logf("boot: mounted %s on %s", m.fstype, m.target)
		return nil
	case m.busyOK && errors.Is(err, unix.EBUSY):
		b.logf("boot: %s already mounted on %s", m.fstype, m.target)
		return nil
	}
	if mkErr != nil {
		err = fmt.Errorf("mount %s on %s: %w (creating the mount point failed too: %v)", m.fstype, m.target, err, mkErr)
	} else {
		err = fmt.Errorf("mount %s on %s (flags %#x, options %q): %w", m.fstype, m.target, m.flags, m.data, err)
	}
	b.logf("boot: %v; continuing without it", err)
	return err
}

func (b *booter) makeDevLinks() error {
	var errs []error
	for _, l := range devLinks {
		err := b.ops.Symlink(l.target, l.link)
		switch {
		case err == nil:
			b.logf("boot: linked %s -> %s", l.link, l.target)
		case errors.Is(err, fs.ErrExist):
			// devtmpfs is one instance per kernel: the second pass finds
			// the links of the first.
		default:
			err = fmt.Errorf("symlink %s -> %s: %w", l.link, l.target, err)
			b.logf("boot: %v", err)
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// mountCgroups mounts cgroup2, or v1 hierarchies one per enabled controller
// under a tmpfs as AWS's init does, according to Config.Cgroups.
func (b *booter) mountCgroups() error {
	mode := b.cfg.Cgroups
	switch mode {
	case CgroupsOff:
		b.logf("boot: cgroups off by configuration")
		return nil
	case CgroupsAuto:
		mode = b.detectCgroups()
		if mode == "" {
			b.logf("boot: kernel offers neither cgroup2 nor cgroup v1 (no /proc/filesystems entry, no /proc/cgroups); no cgroups mounted")
			return nil
		}
		b.logf("boot: cgroups auto: using %s", mode)
	case CgroupsV1, CgroupsV2:
	default:
		err := fmt.Errorf("cgroups mode %q is not one of auto, v2, v1, off; no cgroups mounted (fix the cgroups key in /etc/init.yaml)", b.cfg.Cgroups)
		b.logf("boot: %v", err)
		return err
	}
	if mode == CgroupsV2 {
		return b.mountOne(mountSpec{source: "cgroup2", target: cgroupRoot, fstype: "cgroup2", flags: flagsNoDev})
	}
	return b.mountCgroupsV1()
}

// detectCgroups prefers cgroup2 and falls back to v1; "" means neither.
func (b *booter) detectCgroups() string {
	if data, err := b.ops.ReadFile("/proc/filesystems"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			f := strings.Fields(line)
			if len(f) > 0 && f[len(f)-1] == "cgroup2" {
				return CgroupsV2
			}
		}
	}
	if _, err := b.ops.Stat("/proc/cgroups"); err == nil {
		return CgroupsV1
	}
	return ""
}

func (b *booter) mountCgroupsV1() error {
	data, err := b.ops.ReadFile("/proc/cgroups")
	if err != nil {
		err = fmt.Errorf("cgroup v1: read the controller list: %w (is /proc mounted and CONFIG_CGROUPS set?)", err)
		b.logf("boot: %v", err)
		return err
	}
	controllers, err := parseProcCgroups(data)
	if err != nil {
		b.logf("boot: %v", err)
		return err
	}
	if err := b.mountOne(mountSpec{source: "cgroup_root", target: cgroupRoot, fstype: "tmpfs", flags: flagsNoDev, data: "mode=0755"}); err != nil {
		return err
	}
	var errs []error
	for _, c := range controllers {
		target := path.Join(cgroupRoot, c)
		if err := b.mountOne(mountSpec{source: c, target: target, fstype: "cgroup", flags: flagsNoDev, data: c}); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// parseProcCgroups returns the enabled controllers of /proc/cgroups, whose
// lines are "name hierarchy num_cgroups enabled" after a "#" header.
func parseProcCgroups(data []byte) ([]string, error) {
	var names []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 4 {
			return nil, fmt.Errorf("/proc/cgroups:%d: %q has %d fields, want 4 (name hierarchy num_cgroups enabled)", n, line, len(f))
		}
		enabled, err := strconv.Atoi(f[3])
		if err != nil {
			return nil, fmt.Errorf("/proc/cgroups:%d: enabled column %q is not a number", n, f[3])
		}
		if enabled != 0 {
			names = append(names, f[0])
		}
	}
	return names, sc.Err()
}
