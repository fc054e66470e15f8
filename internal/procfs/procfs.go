// Package procfs reads process information from /proc: for the ps
// requests, for shutdown's search of init's children and for benchmarks.
// /proc/<pid>/stat is parsed here only.
package procfs

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Process describes one process.
type Process struct {
	PID        int
	PPID       int
	Name       string // comm
	Cmdline    string // arguments joined by spaces; [comm] for kernel threads
	State      string // one-letter /proc code
	CPUPercent float64
	MemoryKB   uint64 // resident set
	StartTime  uint64 // unix seconds
}

// ClockTicks is USER_HZ, the unit of the times in /proc/<pid>/stat. It is
// 100 on every Linux architecture we build for (x86_64, arm64), and the
// kernel exposes it only through the ELF auxiliary vector, which Go hides.
const ClockTicks = 100

// FS reads a proc filesystem mounted at Root ("/proc" when empty).
type FS struct {
	Root string
}

// ErrNoProcess means the process does not exist (or exited while being read).
var ErrNoProcess = errors.New("no such process")

func (fs FS) root() string {
	if fs.Root == "" {
		return "/proc"
	}
	return fs.Root
}

// system holds the machine-wide values that per-process numbers need.
type system struct {
	uptime   float64 // seconds since boot
	btime    uint64  // boot time, unix seconds
	pageSize uint64
}

func (fs FS) system() (system, error) {
	s := system{pageSize: uint64(os.Getpagesize())}
	up, err := os.ReadFile(filepath.Join(fs.root(), "uptime"))
	if err != nil {
		return s, fmt.Errorf("read uptime: %w (is /proc mounted?)", err)
	}
	f := strings.Fields(string(up))
	if len(f) < 1 {
		return s, fmt.Errorf("%s/uptime: empty", fs.root())
	}
	if s.uptime, err = strconv.ParseFloat(f[0], 64); err != nil {
		return s, fmt.Errorf("%s/uptime: %q: %w", fs.root(), f[0], err)
	}
	st, err := os.ReadFile(filepath.Join(fs.root(), "stat"))
	if err != nil {
		return s, fmt.Errorf("read %s/stat: %w", fs.root(), err)
	}
	for _, line := range strings.Split(string(st), "\n") {
		if v, ok := strings.CutPrefix(line, "btime "); ok {
			if s.btime, err = strconv.ParseUint(strings.TrimSpace(v), 10, 64); err != nil {
				return s, fmt.Errorf("%s/stat: btime %q: %w", fs.root(), v, err)
			}
			return s, nil
		}
	}
	return s, fmt.Errorf("%s/stat has no btime line", fs.root())
}

// List returns every process, sorted by PID. Processes that exit while the
// list is read are left out.
func (fs FS) List() ([]Process, error) {
	sys, err := fs.system()
	if err != nil {
		return nil, err
	}
	pids, err := fs.PIDs()
	if err != nil {
		return nil, err
	}
	out := make([]Process, 0, len(pids))
	for _, pid := range pids {
		p, err := fs.read(pid, sys)
		if err != nil {
			continue // exited meanwhile, or unreadable: skip as ps does
		}
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].PID < out[j].PID })
	return out, nil
}

// Count returns the number of processes, without reading each one.
func (fs FS) Count() (int, error) {
	pids, err := fs.PIDs()
	return len(pids), err
}

// Process reads one process. A missing process yields an error wrapping
// ErrNoProcess.
func (fs FS) Process(pid int) (Process, error) {
	sys, err := fs.system()
	if err != nil {
		return Process{}, err
	}
	return fs.read(pid, sys)
}

func (fs FS) read(pid int, sys system) (Process, error) {
	st, err := fs.Stat(pid)
	if err != nil {
		return Process{}, err
	}
	p := Process{
		PID:      pid,
		PPID:     st.PPID,
		Name:     Printable(st.Comm),
		State:    st.State,
		MemoryKB: st.RSSPages * sys.pageSize / 1024,
	}
	started := float64(st.StartTicks) / ClockTicks // seconds after boot
	p.StartTime = sys.btime + uint64(started)
	if age := sys.uptime - started; age > 0 {
		p.CPUPercent = 100 * float64(st.UTime+st.STime) / ClockTicks / age
	}
	cmd, _ := os.ReadFile(filepath.Join(fs.root(), strconv.Itoa(pid), "cmdline"))
	p.Cmdline = Cmdline(cmd, st.Comm)
	return p, nil
}

// Stat reads and parses /proc/<pid>/stat. A missing process yields an
// error wrapping ErrNoProcess.
func (fs FS) Stat(pid int) (Stat, error) {
	path := filepath.Join(fs.root(), strconv.Itoa(pid), "stat")
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, errESRCH) {
			return Stat{}, fmt.Errorf("process %d: %w", pid, ErrNoProcess)
		}
		return Stat{}, fmt.Errorf("read %s: %w", path, err)
	}
	st, err := ParseStat(b)
	if err != nil {
		return Stat{}, fmt.Errorf("%s: %w", path, err)
	}
	return st, nil
}

// PIDs lists the PIDs in /proc, unsorted.
func (fs FS) PIDs() ([]int, error) {
	ents, err := os.ReadDir(fs.root())
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", fs.root(), err)
	}
	out := make([]int, 0, len(ents))
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil && pid > 0 {
			out = append(out, pid)
		}
	}
	return out, nil
}

// Zombie reports whether a state code is that of a process that has
// exited and not yet been reaped.
func Zombie(state string) bool { return state == "Z" || state == "X" || state == "x" }

// Stat is the part of /proc/<pid>/stat that ps needs.
type Stat struct {
	Comm       string
	State      string
	PPID       int
	UTime      uint64 // clock ticks
	STime      uint64 // clock ticks
	StartTicks uint64 // clock ticks after boot
	RSSPages   uint64
}

// ParseStat parses the contents of /proc/<pid>/stat. The command name sits
// in parentheses and may itself contain spaces and parentheses, so the
// fields are counted from the last ')'.
func ParseStat(b []byte) (Stat, error) {
	open := bytes.IndexByte(b, '(')
	closing := bytes.LastIndexByte(b, ')')
	if open < 0 || closing < open {
		return Stat{}, fmt.Errorf("malformed stat %q: no (comm)", truncate(b))
	}
	s := Stat{Comm: string(b[open+1 : closing])}
	f := strings.Fields(string(b[closing+1:]))
	// f[0] is field 3 (state); field n is f[n-3].
	if len(f) < 22 {
		return Stat{}, fmt.Errorf("malformed stat %q: %d fields after comm, want at least 22", truncate(b), len(f))
	}
	s.State = f[0]
	var err error
	num := func(n int) uint64 {
		if err != nil {
			return 0
		}
		var v uint64
		v, err = strconv.ParseUint(f[n-3], 10, 64)
		if err != nil {
			err = fmt.Errorf("field %d %q: %w", n, f[n-3], err)
		}
		return v
	}
	s.PPID = int(num(4))
	s.UTime = num(14)
	s.STime = num(15)
	s.StartTicks = num(22)
	if rss, e := strconv.ParseInt(f[24-3], 10, 64); e == nil && rss > 0 {
		s.RSSPages = uint64(rss)
	}
	return s, err
}

// Cmdline turns the NUL-separated /proc/<pid>/cmdline into one line. Kernel
// threads have none and are shown as [comm], as ps does.
func Cmdline(raw []byte, comm string) string {
	raw = bytes.TrimRight(raw, "\x00")
	if len(raw) == 0 {
		return "[" + Printable(comm) + "]"
	}
	return Printable(string(bytes.ReplaceAll(raw, []byte{0}, []byte{' '})))
}

// Printable escapes what a process may put in its name or command line
// to forge or garble a ps listing: control characters (a newline would
// start a fake row, an escape sequence would drive the terminal) become
// Go-style escapes such as \n and \x1b, and bytes that are not UTF-8
// become \xNN.
func Printable(s string) string {
	clean := true
	for _, r := range s {
		if r == utf8.RuneError || unicode.IsControl(r) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, "\\x%02x", s[i])
		case unicode.IsControl(r):
			q := strconv.QuoteRune(r) // '\n', '\x1b', '\u0085'
			b.WriteString(q[1 : len(q)-1])
		default:
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}

func truncate(b []byte) string {
	if len(b) > 80 {
		return string(b[:80]) + "..."
	}
	return string(b)
}
