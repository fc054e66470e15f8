package unit

import (
	"math"
	"os"
	"strconv"
	"strings"

	"github.com/nitroinit/nitroinit/internal/cgroup"
	"golang.org/x/sys/unix"
)

// Rlimit is one resource limit from a Limit* key, applied to the service's
// main process (and inherited by its children).
type Rlimit struct {
	Key      string // LimitNOFILE, ...
	Resource int    // unix.RLIMIT_*
	Cur, Max uint64 // soft and hard; unix.RLIM_INFINITY for infinity
}

// rlimitKeys are the Limit* keys supported, with their resource and
// whether values are sizes in bytes (with K, M, G suffixes).
var rlimitKeys = map[string]struct {
	res   int
	bytes bool
}{
	"LimitNOFILE":  {unix.RLIMIT_NOFILE, false},
	"LimitNPROC":   {unix.RLIMIT_NPROC, false},
	"LimitCORE":    {unix.RLIMIT_CORE, true},
	"LimitMEMLOCK": {unix.RLIMIT_MEMLOCK, true},
}

// Memory and task totals that percentages refer to; variables so that
// tests can pin them.
var (
	physicalMemory = func() uint64 {
		var si unix.Sysinfo_t
		if unix.Sysinfo(&si) != nil {
			return 0
		}
		return uint64(si.Totalram) * uint64(si.Unit)
	}
	systemTasks = func() uint64 {
		// As systemd: the smaller of kernel.pid_max and threads-max.
		n := uint64(math.MaxUint64)
		for _, f := range []string{"/proc/sys/kernel/pid_max", "/proc/sys/kernel/threads-max"} {
			if b, err := os.ReadFile(f); err == nil {
				if v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil && v < n {
					n = v
				}
			}
		}
		if n == math.MaxUint64 {
			return 4194304
		}
		return n
	}
)

// parseLimit handles the resource-control keys; it reports false for a key
// that is not one.
func (p *parser) parseLimit(u *Unit, k string, v any) bool {
	switch k {
	case "MemoryMax":
		u.Cgroup.MemoryMax = p.size(k, v, physicalMemory)
	case "MemoryHigh":
		u.Cgroup.MemoryHigh = p.size(k, v, physicalMemory)
	case "TasksMax":
		u.Cgroup.TasksMax = p.count(k, v, systemTasks)
	case "CPUWeight":
		switch s := strings.TrimSpace(p.text(v)); {
		case s == "idle":
			// systemd writes cpu.idle; the lowest weight is the
			// nearest thing in cpu.weight alone.
			u.Cgroup.CPUWeight = 1
		default:
			n, err := strconv.ParseUint(s, 10, 64)
			if err != nil || n < 1 || n > 10000 {
				p.errorf(k, "%s is not a weight from 1 to 10000 (or \"idle\"); the default is 100", describe(v))
				return true
			}
			u.Cgroup.CPUWeight = n
		}
	case "CPUQuota":
		s, _ := v.(string)
		pct, ok := strings.CutSuffix(strings.TrimSpace(s), "%")
		f, err := strconv.ParseFloat(pct, 64)
		if !ok || err != nil || f <= 0 || f > 1e6 || math.IsNaN(f) {
			p.errorf(k, "%s is not a percentage of one CPU such as \"50%%\" or \"200%%\"", describe(v))
			return true
		}
		// systemd rounds the quota per period to at least 1 ms.
		u.Cgroup.CPUQuota = max(int64(f*cgroup.Period/100), 1000)
	case "OOMScoreAdjust":
		n, ok := v.(int64)
		if !ok {
			if x, err := strconv.ParseInt(strings.TrimSpace(p.text(v)), 10, 64); err == nil {
				n, ok = x, true
			}
		}
		if !ok || n < -1000 || n > 1000 {
			p.errorf(k, "%s is not a whole number from -1000 to 1000", describe(v))
			return true
		}
		adj := int(n)
		u.OOMScoreAdjust = &adj
	default:
		rk, ok := rlimitKeys[k]
		if !ok {
			return false
		}
		p.rlimit(u, k, v, rk.res, rk.bytes)
	}
	return true
}

// text is a scalar TOML value as systemd would see it in a unit file.
func (p *parser) text(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case int64:
		return strconv.FormatInt(x, 10)
	}
	return "\x00" // parses as nothing
}

// size reads a byte size as systemd does: a number with an optional K, M,
// G, T, P or E suffix (powers of 1024), a percentage of total, or
// "infinity" (returned as cgroup.Max).
func (p *parser) size(key string, v any, total func() uint64) int64 {
	s, n, done := p.special(key, v, total)
	if done {
		return n
	}
	b, ok := parseBytes(s)
	if !ok || b == 0 {
		p.errorf(key, "%s is not a size such as \"512M\", \"1G\", a number of bytes, a percentage such as \"50%%\", or \"infinity\"", describe(v))
		return 0
	}
	return int64(b)
}

// special reads what sizes and counts share: "infinity" (cgroup.Max) and
// "N%" of total; done is false for anything else, which is returned
// trimmed in s.
func (p *parser) special(key string, v any, total func() uint64) (s string, n int64, done bool) {
	s = strings.TrimSpace(p.text(v))
	if s == "infinity" {
		return s, cgroup.Max, true
	}
	n, done = p.percent(key, v, s, total)
	return s, n, done
}

// percent reads "N%" of total; ok is false when s is no percentage. A bad
// percentage is an error, and 0 is returned for it.
func (p *parser) percent(key string, v any, s string, total func() uint64) (n int64, ok bool) {
	pct, ok := strings.CutSuffix(s, "%")
	if !ok {
		return 0, false
	}
	f, err := strconv.ParseFloat(pct, 64)
	if err != nil || f <= 0 || f > 100 || math.IsNaN(f) {
		p.errorf(key, "%s is not a percentage from 0 to 100", describe(v))
		return 0, true
	}
	return max(int64(float64(total())*f/100), 1), true
}

// count reads a number, a percentage of total, or "infinity".
func (p *parser) count(key string, v any, total func() uint64) int64 {
	s, n, done := p.special(key, v, total)
	if done {
		return n
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 1 {
		p.errorf(key, "%s is not a number of tasks from 1 up, a percentage such as \"10%%\", or \"infinity\"", describe(v))
		return 0
	}
	return n
}

// parseBytes reads "512", "512K", "1.5G" (powers of 1024, as systemd).
func parseBytes(s string) (uint64, bool) {
	mult := uint64(1)
	if s != "" {
		if i := strings.IndexByte("KMGTPE", s[len(s)-1]); i >= 0 {
			mult = 1 << (10 * (i + 1))
			s = s[:len(s)-1]
		} else if s[len(s)-1] == 'B' {
			s = s[:len(s)-1]
		}
	}
	if s == "" || strings.ContainsAny(s, "+-eE") {
		return 0, false
	}
	if n, err := strconv.ParseUint(s, 10, 64); err == nil {
		if n > math.MaxInt64/mult {
			return 0, false
		}
		return n * mult, true
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f < 0 || mult == 1 || f*float64(mult) >= math.MaxInt64 {
		return 0, false
	}
	return uint64(f * float64(mult)), true
}

// rlimit reads a Limit* value: "soft:hard" or one value for both, each a
// number (a size for byte limits) or "infinity".
func (p *parser) rlimit(u *Unit, key string, v any, res int, bytes bool) {
	s := strings.TrimSpace(p.text(v))
	one := func(x string) (uint64, bool) {
		x = strings.TrimSpace(x)
		if x == "infinity" {
			return unix.RLIM_INFINITY, true
		}
		if bytes {
			return parseBytes(x)
		}
		n, err := strconv.ParseUint(x, 10, 64)
		return n, err == nil
	}
	softS, hardS, pair := strings.Cut(s, ":")
	soft, ok1 := one(softS)
	hard, ok2 := soft, true
	if pair {
		hard, ok2 = one(hardS)
	}
	what := "a number"
	if bytes {
		what = "a size such as \"64M\""
	}
	switch {
	case !ok1 || !ok2:
		p.errorf(key, "%s is not %s or \"infinity\", or soft:hard of those", describe(v), what)
		return
	case soft > hard:
		p.errorf(key, "%s: the soft limit is above the hard limit", describe(v))
		return
	}
	u.Rlimits = append(u.Rlimits, Rlimit{Key: key, Resource: res, Cur: soft, Max: hard})
}
