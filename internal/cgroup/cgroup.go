// Package cgroup contains services in cgroup v2 groups: it sets up the
// subtree init owns, creates one group per service with its limits, starts
// processes inside it (clone3 with CLONE_INTO_CGROUP), reads its memory and
// task figures and OOM kills, kills everything in it and waits until it is
// empty.
//
// Only the unified hierarchy (cgroup v2) is supported. On a host with cgroup
// v1 controllers, Open fails with an error that says v2 is needed; init then
// runs services without containment, as before (see docs/services.md).
package cgroup

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Mount is where cgroup v2 is mounted by init as PID 1 and by most
// distributions.
const Mount = "/sys/fs/cgroup"

// wanted are the controllers init enables for its services, when the
// kernel and the parent group offer them.
var wanted = []string{"memory", "pids", "cpu"}

// Tree is the subtree init owns: one child group per service, and init
// itself in the leaf "init.scope" (cgroup v2 lets only leaves hold
// processes once controllers are enabled for the children).
type Tree struct {
	dir         string          // absolute path of the subtree's root
	controllers map[string]bool // enabled for the service groups
}

// Open takes the cgroup v2 directory dir as init's subtree: it moves
// process self (init; none when 0) into dir/init.scope and enables the
// memory, pids and cpu controllers for dir's children where they are
// available. dir must be on a cgroup2 file system and writable.
func Open(dir string, self int) (*Tree, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return nil, fmt.Errorf("cgroup: %s: %w", dir, err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		return nil, fmt.Errorf("cgroup: %s is not a cgroup v2 file system (cgroup v1 is not supported: boot with systemd.unified_cgroup_hierarchy=1 or cgroup_no_v1=all, or delegate a v2 subtree)", dir)
	}
	if err := unix.Access(filepath.Join(dir, "cgroup.procs"), unix.W_OK); err != nil {
		return nil, fmt.Errorf("cgroup: %s is not writable by init (delegate it, or run init as root): %w", dir, err)
	}
	// Outside the hierarchy's root (which has no cgroup.type and is
	// exempt), no process but init may be in dir: controllers for the
	// children could not be enabled, and moving others would surprise
	// whoever started them.
	if _, err := os.Stat(filepath.Join(dir, "cgroup.type")); err == nil {
		pids, err := readPids(filepath.Join(dir, "cgroup.procs"))
		if err != nil {
			return nil, err
		}
		for _, pid := range pids {
			if pid != self {
				return nil, fmt.Errorf("cgroup: %s also holds process %d, not only init: %w (start init in a group of its own)", dir, pid, unix.EBUSY)
			}
		}
	}
	t := &Tree{dir: dir, controllers: map[string]bool{}}
	leaf := filepath.Join(dir, "init.scope")
	if err := os.Mkdir(leaf, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	// Move the calling process out of the subtree's root, so that
	// controllers may be enabled for its children ("no internal
	// processes"). Other processes in it make that fail with EBUSY, except
	// in the hierarchy's root, which is exempt.
	if self == 0 {
		// Nothing to move.
	} else if err := writeFile(filepath.Join(leaf, "cgroup.procs"), strconv.Itoa(self)); err != nil {
		return nil, fmt.Errorf("cgroup: moving init to %s: %w", leaf, err)
	}
	avail, err := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
	if err != nil {
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	have := strings.Fields(string(avail))
	for _, c := range wanted {
		if !contains(have, c) {
			continue
		}
		if err := writeFile(filepath.Join(dir, "cgroup.subtree_control"), "+"+c); err != nil {
			return nil, fmt.Errorf("cgroup: enabling the %s controller in %s: %w", c, dir, err)
		}
		t.controllers[c] = true
	}
	return t, nil
}

// Dir is the subtree's root directory.
func (t *Tree) Dir() string { return t.dir }

// Has reports whether controller c (memory, pids, cpu) is enabled for the
// service groups.
func (t *Tree) Has(c string) bool { return t.controllers[c] }

// FindMount returns where a cgroup2 file system is mounted, from
// /proc/self/mountinfo: Mount on a v2-only system, often
// /sys/fs/cgroup/unified on a hybrid one. It is "" when there is none.
func FindMount() string {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(data), "\n") {
		// id parent major:minor root mountpoint options... - fstype source super
		pre, post, ok := strings.Cut(line, " - ")
		f := strings.Fields(pre)
		if !ok || len(f) < 5 || !strings.HasPrefix(post, "cgroup2 ") {
			continue
		}
		if f[3] == "/" {
			return f[4]
		}
	}
	return ""
}

// Own finds the cgroup v2 group the calling process is in, from
// /proc/self/cgroup, as a directory under the cgroup2 mount. It is ""
// when the process is in no v2 group or none is mounted.
func Own() string { return OfProcess(os.Getpid()) }

// OfProcess returns the directory of the cgroup v2 group process pid is
// in, or "" when it cannot be told.
func OfProcess(pid int) string {
	mnt := FindMount()
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil || mnt == "" {
		return ""
	}
	for _, line := range strings.Split(string(data), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return filepath.Join(mnt, filepath.Clean("/"+p))
		}
	}
	return ""
}

// Limits are a group's cgroup limits. A zero field is not set (the
// kernel's default, no limit); Max (-1) writes "max" explicitly.
type Limits struct {
	MemoryMax  int64  // memory.max in bytes
	MemoryHigh int64  // memory.high in bytes
	TasksMax   int64  // pids.max
	CPUWeight  uint64 // cpu.weight, 1 to 10000
	// CPUQuota is cpu.max's quota per 100 ms period, in microseconds
	// (CPUQuota=50% is 50000).
	CPUQuota int64
}

// Max is the value of a limit set to "infinity".
const Max = -1

// Period is the cpu.max period used with Limits.CPUQuota, in microseconds.
const Period = 100000

// Group is one service's cgroup.
type Group struct {
	Path string
	tree *Tree
}

// Create makes the group for name and writes lim to it. A group of that
// name left from before is made anew when it is empty, never reused: Linux
// 6.18 (seen here; it counts cgroup.kill writes per group) SIGKILLs every
// process cloned into a group that was ever killed, so a reused group could
// kill the service's next start. A group left with processes in it is
// returned as it is, for the caller to kill and empty before creating it
// again. The limits a controller that is not enabled would need are refused
// with an error naming the controller.
func (t *Tree) Create(name string, lim Limits) (*Group, error) {
	if name == "" || name == "init.scope" || strings.ContainsAny(name, "/\x00") || name == "." || name == ".." {
		return nil, fmt.Errorf("cgroup: %q is not a group name", name)
	}
	g := &Group{Path: filepath.Join(t.dir, name+".service"), tree: t}
	err := os.Mkdir(g.Path, 0o755)
	if errors.Is(err, os.ErrExist) && !g.Populated() {
		if err = g.Remove(); err == nil {
			err = os.Mkdir(g.Path, 0o755)
		}
	}
	if err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	if err := g.SetLimits(lim); err != nil {
		return nil, err
	}
	return g, nil
}

// SetLimits writes lim; unset limits are written as "max" so that a reused
// group does not keep an old one.
func (g *Group) SetLimits(lim Limits) error {
	type file struct {
		ctl, name, val string
		set            bool
	}
	quota := "max"
	if lim.CPUQuota > 0 {
		quota = strconv.FormatInt(lim.CPUQuota, 10)
	}
	weight := "100"
	if lim.CPUWeight > 0 {
		weight = strconv.FormatUint(lim.CPUWeight, 10)
	}
	files := []file{
		{"memory", "memory.max", bytesVal(lim.MemoryMax), lim.MemoryMax != 0},
		{"memory", "memory.high", bytesVal(lim.MemoryHigh), lim.MemoryHigh != 0},
		{"pids", "pids.max", bytesVal(lim.TasksMax), lim.TasksMax != 0},
		{"cpu", "cpu.weight", weight, lim.CPUWeight != 0},
		{"cpu", "cpu.max", quota + " " + strconv.Itoa(Period), lim.CPUQuota != 0},
	}
	for _, f := range files {
		if !g.tree.controllers[f.ctl] {
			if f.set {
				return fmt.Errorf("cgroup: %s needs the %s controller, which this kernel or the parent group %s does not offer", f.name, f.ctl, g.tree.dir)
			}
			continue
		}
		if err := writeFile(filepath.Join(g.Path, f.name), f.val); err != nil {
			return fmt.Errorf("cgroup: %s %s: %w", f.name, f.val, err)
		}
	}
	return nil
}

func bytesVal(n int64) string {
	if n <= 0 {
		return "max"
	}
	return strconv.FormatInt(n, 10)
}

// Open returns a directory descriptor of the group, for
// syscall.SysProcAttr.CgroupFD (clone3 with CLONE_INTO_CGROUP). The caller
// closes it once the process is started.
func (g *Group) Open() (*os.File, error) {
	f, err := os.OpenFile(g.Path, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	return f, nil
}

// Add moves process pid into the group. Use it where clone3 with
// CLONE_INTO_CGROUP is missing (Linux before 5.7), while the process is
// stopped before its first instruction (reap.Reaper.StartAtExec), so that
// nothing it starts is left outside.
func (g *Group) Add(pid int) error {
	if err := writeFile(filepath.Join(g.Path, "cgroup.procs"), strconv.Itoa(pid)); err != nil {
		return fmt.Errorf("cgroup: moving %d into %s: %w", pid, g.Path, err)
	}
	return nil
}

// CloneIntoUnsupported reports whether err from starting a process with
// syscall.SysProcAttr.UseCgroupFD means the kernel lacks clone3 (before
// 5.3) or its CLONE_INTO_CGROUP flag (before 5.7).
func CloneIntoUnsupported(err error) bool {
	return errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.E2BIG) || errors.Is(err, unix.EINVAL)
}

// Stats are a group's figures. A figure whose controller is off is zero.
type Stats struct {
	MemoryCurrent uint64 // memory.current, bytes
	MemoryPeak    uint64 // memory.peak, bytes (kernel 5.19 and later)
	Tasks         uint64 // pids.current, or the threads in cgroup.threads
	OOMKills      uint64 // memory.events oom_kill
	MemoryMax     int64  // memory.max in bytes, Max when unlimited
	Memory        bool   // the memory figures were read (the controller is on)
}

// Stats reads the group's figures.
func (g *Group) Stats() Stats {
	return ReadStats(g.Path)
}

// ReadStats reads the figures of the group at path; missing files read as
// zero, so it may be called for a group that is gone.
func ReadStats(path string) Stats {
	var s Stats
	cur, err := readUint(filepath.Join(path, "memory.current"))
	s.MemoryCurrent, s.Memory = cur, err == nil
	s.MemoryPeak, _ = readUint(filepath.Join(path, "memory.peak"))
	if n, err := readUint(filepath.Join(path, "pids.current")); err == nil {
		s.Tasks = n
	} else if pids, err := readPids(filepath.Join(path, "cgroup.threads")); err == nil {
		s.Tasks = uint64(len(pids))
	}
	s.OOMKills = OOMKills(path)
	s.MemoryMax = Max
	if b, err := os.ReadFile(filepath.Join(path, "memory.max")); err == nil {
		if n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil {
			s.MemoryMax = n
		}
	}
	return s
}

// OOMKills reads the oom_kill count of memory.events of the group at
// path: how many of its processes the OOM killer killed (0 without the
// memory controller).
func OOMKills(path string) uint64 {
	return keyed(filepath.Join(path, "memory.events"), "oom_kill")
}

// Populated reports whether any process is in the group or below it.
func (g *Group) Populated() bool {
	return keyed(filepath.Join(g.Path, "cgroup.events"), "populated") != 0
}

// Signal sends sig to every process in the group: systemd's KillMode=
// control-group for the stop signal. A process forked meanwhile may be
// missed; Kill does not miss any.
func (g *Group) Signal(sig syscall.Signal) error {
	pids, err := readPids(filepath.Join(g.Path, "cgroup.procs"))
	if err != nil {
		return err
	}
	for _, pid := range pids {
		syscall.Kill(pid, sig)
	}
	return nil
}

// Kill sends SIGKILL to every process in the group, atomically with
// respect to forks, through cgroup.kill (Linux 5.14). On older kernels it
// freezes the group, kills every process it lists, and thaws it.
func (g *Group) Kill() error {
	err := writeFile(filepath.Join(g.Path, "cgroup.kill"), "1")
	if err == nil || errors.Is(err, os.ErrNotExist) && !exists(g.Path) {
		return nil
	}
	freeze := filepath.Join(g.Path, "cgroup.freeze")
	if ferr := writeFile(freeze, "1"); ferr != nil {
		// No freezer either (before 5.2): kill what is listed, twice.
		for range 2 {
			g.Signal(syscall.SIGKILL)
		}
		return nil
	}
	g.Signal(syscall.SIGKILL)
	// Frozen processes die once thawed; SIGKILL is delivered on thaw.
	return writeFile(freeze, "0")
}

// WaitEmpty waits until the group holds no process, for at most timeout.
// It watches cgroup.events with inotify (the kernel signals a change of
// "populated" as a modification), falling back to polling.
func (g *Group) WaitEmpty(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	events := filepath.Join(g.Path, "cgroup.events")
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err == nil {
		defer unix.Close(fd)
		if _, err := unix.InotifyAddWatch(fd, events, unix.IN_MODIFY); err != nil {
			unix.Close(fd)
			fd = -1
		}
	} else {
		fd = -1
	}
	buf := make([]byte, 4096)
	for {
		if !g.Populated() {
			return nil
		}
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("cgroup %s still holds processes after %s", g.Path, timeout)
		}
		wait := min(left, 100*time.Millisecond)
		if fd < 0 {
			time.Sleep(wait)
			continue
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		unix.Poll(fds, int(wait/time.Millisecond)+1)
		for {
			if n, err := unix.Read(fd, buf); n <= 0 || err != nil {
				break
			}
		}
	}
}

// Remove deletes the group; it must be empty.
func (g *Group) Remove() error {
	if err := unix.Rmdir(g.Path); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("cgroup: remove %s: %w", g.Path, err)
	}
	return nil
}

func writeFile(path, val string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(val)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func readUint(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
}

// keyed reads "key value" from a flat-keyed file such as memory.events.
func keyed(path, key string) uint64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), " ")
		if k == key {
			n, _ := strconv.ParseUint(v, 10, 64)
			return n
		}
	}
	return 0
}

func readPids(path string) ([]int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if n, err := strconv.Atoi(f); err == nil {
			pids = append(pids, n)
		}
	}
	return pids, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
