// Package unit reads service files: TOML files named <name>.service (enabled)
// or <name>.service.disabled in the service directory.
//
// Keys follow the enclave-init reference (ExecStart, Environment, Restart,
// RestartSec, WorkingDirectory, ServiceEnable, Before, After, Requires,
// RequiredBy) plus systemd-named additions (Type, User, Group, KillSignal,
// TimeoutStopSec, TimeoutStartSec, StartLimitBurst, StartLimitIntervalSec,
// and the resource-control keys MemoryMax, MemoryHigh, TasksMax, CPUWeight,
// CPUQuota, LimitNOFILE, LimitNPROC, LimitCORE, LimitMEMLOCK and
// OOMScoreAdjust).
// docs/services.md describes every key.
package unit

import (
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"os/user"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/nitroinit/nitroinit/internal/cgroup"
	"golang.org/x/sys/unix"
)

// Restart is a restart policy.
type Restart string

// Restart policies. "Clean" means exit status 0 (or SIGHUP, SIGINT, SIGTERM,
// SIGPIPE, as in systemd); "abnormal" means killed by another signal.
const (
	RestartNo         Restart = "no"          // never restart
	RestartAlways     Restart = "always"      // restart whatever the exit
	RestartOnFailure  Restart = "on-failure"  // restart unless the exit was clean
	RestartOnSuccess  Restart = "on-success"  // restart only after a clean exit
	RestartOnAbnormal Restart = "on-abnormal" // restart only after an abnormal signal
)

var restarts = []Restart{RestartNo, RestartAlways, RestartOnFailure, RestartOnSuccess, RestartOnAbnormal}

// Type says when a started service counts as up.
type Type string

// Service types.
const (
	// TypeSimple is up as soon as the process has been started.
	TypeSimple Type = "simple"
	// TypeNotify is up when it sends READY=1 on $NOTIFY_SOCKET (sd_notify),
	// or fails after TimeoutStartSec.
	TypeNotify Type = "notify"
	// TypeOneshot runs to completion: its start is done when the process
	// exits with status 0 (and fails otherwise), so services ordered
	// after it wait for that exit. It has no start timeout unless
	// TimeoutStartSec is given.
	TypeOneshot Type = "oneshot"
)

// Defaults of optional keys.
const (
	DefaultRestartSec         = 5 * time.Second
	DefaultTimeoutStopSec     = 10 * time.Second
	DefaultTimeoutStartSec    = 30 * time.Second
	DefaultStartLimitBurst    = 5
	DefaultStartLimitInterval = 10 * time.Second
)

// Suffixes of service file names.
const (
	Suffix         = ".service"
	DisabledSuffix = ".service.disabled"
)

// Unit is one parsed service file.
type Unit struct {
	Name     string // file name without .service / .service.disabled
	Path     string // file path as given to Parse
	Disabled bool   // the file name ends in .service.disabled

	ExecStart        string        // the command line as written
	Argv             []string      // ExecStart split into words (see Split)
	Environment      []string      // KEY=VALUE entries, in file order
	Restart          Restart       // Restart, default "no"
	RestartSec       time.Duration // RestartSec, default 5s, measured from the exit
	WorkingDirectory string        // WorkingDirectory, "" = init's working directory
	ServiceEnable    bool          // ServiceEnable, default true

	Before, After, Requires, RequiredBy []string // service names without suffix

	TimeoutStopSec     time.Duration  // TimeoutStopSec, default 10s: KillSignal to SIGKILL
	KillSignal         syscall.Signal // KillSignal, default SIGTERM, sent to the process group
	StartLimitBurst    int            // StartLimitBurst, default 5 starts ...
	StartLimitInterval time.Duration  // StartLimitIntervalSec, default 10s; 0 = no limit
	User, Group        string         // User / Group, names or numbers, "" = root
	Type               Type           // Type, default simple
	TimeoutStartSec    time.Duration  // TimeoutStartSec, default 30s (Type=notify), none for oneshot
	RemainAfterExit    bool           // RemainAfterExit: a oneshot that succeeded stays active

	// Resource control (see limits.go): cgroup limits from MemoryMax,
	// MemoryHigh, TasksMax, CPUWeight and CPUQuota; rlimits from Limit*;
	// OOMScoreAdjust, nil when not set.
	Cgroup         cgroup.Limits
	Rlimits        []Rlimit
	OOMScoreAdjust *int

	Hash     [16]byte // FNV-1a of the file, to tell whether it changed on disk (see fileHash)
	Warnings []string // ignored problems, "file:line: message"
}

// Enabled reports whether the service starts at boot: the file is not
// .disabled and does not say ServiceEnable = false.
func (u *Unit) Enabled() bool { return !u.Disabled && u.ServiceEnable }

// Error is a problem in a service file that makes it unusable.
type Error struct {
	File string // path of the service file
	Line int    // 1-based, 0 when unknown
	Key  string // the key concerned, "" for syntax errors
	Msg  string
}

// Error formats the problem as "file:line: Key: message".
func (e *Error) Error() string {
	s := e.File
	if e.Line > 0 {
		s += ":" + strconv.Itoa(e.Line)
	}
	s += ": "
	if e.Key != "" {
		s += e.Key + ": "
	}
	return s + e.Msg
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_.@-]+$`)

// Log names that init keeps for itself in the log directory, beside the
// services' <name>.log: no service may take them, or it could write into,
// read or clear init's own history.
const (
	InitLog  = "init"  // init's own messages
	AdhocLog = "adhoc" // the output of ps start/run processes
)

// ValidateName checks a service name. Names arrive from control clients, so
// anything that could leave the service directory is refused, and so are
// the reserved log names.
func ValidateName(name string) error {
	if !nameRE.MatchString(name) || name == "." || name == ".." || len(name) > 200 {
		return fmt.Errorf("invalid service name %q: use letters, digits and _ . @ - (at most 200 characters)", name)
	}
	if name == InitLog || name == AdhocLog {
		return fmt.Errorf("service name %q is reserved: init writes its own %s.log in the log directory; rename the service file", name, name)
	}
	return nil
}

// NameFromPath returns the service name of a service file path and whether
// the file is disabled; ok is false when the path has neither suffix.
func NameFromPath(path string) (name string, disabled, ok bool) {
	base := filepath.Base(path)
	switch {
	case strings.HasSuffix(base, DisabledSuffix):
		return strings.TrimSuffix(base, DisabledSuffix), true, true
	case strings.HasSuffix(base, Suffix):
		return strings.TrimSuffix(base, Suffix), false, true
	}
	return "", false, false
}

// parser collects the errors of one file so that the operator sees all of
// them at once.
type parser struct {
	file     string
	lines    map[string]int
	errs     []error
	warnings []string
}

func (p *parser) errorf(key, format string, args ...any) {
	p.errs = append(p.errs, &Error{File: p.file, Line: p.lines[key], Key: key, Msg: fmt.Sprintf(format, args...)})
}

// warnf records a tolerated problem as "file:line: Key: message".
func (p *parser) warnf(key, format string, args ...any) {
	p.warnings = append(p.warnings, (&Error{File: p.file, Line: p.lines[key], Key: key, Msg: fmt.Sprintf(format, args...)}).Error())
}

// envNameRE matches a bare environment variable name.
var envNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// keyLines finds the line of each top-level key: "Key = ..." before the first
// table header, and the header line of each [Table]. BurntSushi's decoder
// keeps key positions private, so a light scan is used; multi-line strings
// could fool it, which only costs a line number in a message.
func keyLines(data string) map[string]int {
	out := map[string]int{}
	record := func(k string, line int) {
		k = strings.TrimSpace(k)
		if !strings.HasPrefix(k, `"`) && !strings.HasPrefix(k, "'") {
			if dot := strings.IndexByte(k, '.'); dot >= 0 {
				k = strings.TrimSpace(k[:dot]) // dotted key a.b = 1 defines a
			}
		}
		k = strings.Trim(k, `"'`)
		if _, dup := out[k]; !dup && k != "" {
			out[k] = line
		}
	}
	inTable := false
	for i, line := range strings.Split(data, "\n") {
		t := strings.TrimSpace(line)
		if strings.HasPrefix(t, "[") {
			inTable = true
			if end := strings.IndexByte(t, ']'); end > 0 {
				record(strings.Trim(t[:end], "[]"), i+1)
			}
			continue
		}
		if inTable {
			continue
		}
		if eq := strings.IndexByte(t, '='); eq > 0 && !strings.HasPrefix(t, "#") {
			record(t[:eq], i+1)
		}
	}
	return out
}

// Parse decodes the service file at path from data. The returned error, if
// any, is an *Error or an errors.Join of several; the Unit is nil then.
// Unknown keys are not errors: they are listed in Warnings.
func Parse(path string, data []byte) (*Unit, error) {
	name, disabled, ok := NameFromPath(path)
	if !ok {
		return nil, &Error{File: path, Msg: "not a service file: the name must end in .service or .service.disabled"}
	}
	if err := ValidateName(name); err != nil {
		return nil, &Error{File: path, Msg: err.Error()}
	}
	u := &Unit{
		Name: name, Path: path, Disabled: disabled,
		Restart:            RestartNo,
		RestartSec:         DefaultRestartSec,
		ServiceEnable:      true,
		TimeoutStopSec:     DefaultTimeoutStopSec,
		KillSignal:         syscall.SIGTERM,
		StartLimitBurst:    DefaultStartLimitBurst,
		StartLimitInterval: DefaultStartLimitInterval,
		Type:               TypeSimple,
		TimeoutStartSec:    DefaultTimeoutStartSec,
		Hash:               fileHash(data),
	}
	var raw map[string]any
	if _, err := toml.Decode(string(data), &raw); err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, &Error{File: path, Line: pe.Position.Line, Msg: "invalid TOML: " + pe.Message}
		}
		return nil, &Error{File: path, Msg: "invalid TOML: " + err.Error()}
	}
	p := &parser{file: path, lines: keyLines(string(data))}
	execOK := false

	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if p.lines[keys[i]] != p.lines[keys[j]] {
			return p.lines[keys[i]] < p.lines[keys[j]]
		}
		return keys[i] < keys[j]
	})
	for _, k := range keys {
		v := raw[k]
		switch k {
		case "ExecStart":
			u.ExecStart, execOK = p.str(k, v)
		case "Environment":
			u.Environment = p.environment(k, v)
		case "Restart":
			if s, ok := p.str(k, v); ok {
				u.Restart = Restart(s)
				if !containsRestart(u.Restart) {
					p.errorf(k, "%q is not a restart policy (use no, always, on-failure, on-success or on-abnormal)", s)
				}
			}
		case "RestartSec":
			p.seconds(k, v, &u.RestartSec, true)
		case "WorkingDirectory":
			if s, ok := p.str(k, v); ok {
				if s != "" && !filepath.IsAbs(s) {
					p.errorf(k, "%q is not an absolute path", s)
				}
				u.WorkingDirectory = s
			}
		case "ServiceEnable":
			if b, ok := v.(bool); ok {
				u.ServiceEnable = b
			} else {
				p.errorf(k, "%s is not true or false", describe(v))
			}
		case "Before":
			u.Before = p.names(k, v)
		case "After":
			u.After = p.names(k, v)
		case "Requires":
			u.Requires = p.names(k, v)
		case "RequiredBy":
			u.RequiredBy = p.names(k, v)
		case "TimeoutStopSec":
			p.seconds(k, v, &u.TimeoutStopSec, false)
		case "TimeoutStartSec":
			p.seconds(k, v, &u.TimeoutStartSec, false)
		case "StartLimitIntervalSec":
			p.seconds(k, v, &u.StartLimitInterval, true)
		case "StartLimitBurst":
			if n, ok := v.(int64); ok && n >= 1 && n <= 1000000 {
				u.StartLimitBurst = int(n)
			} else {
				p.errorf(k, "%s is not a whole number from 1 to 1000000", describe(v))
			}
		case "KillSignal":
			if sig, err := ParseSignal(v); err != nil {
				p.errorf(k, "%v", err)
			} else {
				u.KillSignal = sig
			}
		case "User":
			u.User = p.ident(k, v)
		case "Group":
			u.Group = p.ident(k, v)
		case "Type":
			if s, ok := p.str(k, v); ok {
				u.Type = Type(s)
				if u.Type != TypeSimple && u.Type != TypeNotify && u.Type != TypeOneshot {
					p.errorf(k, "%q is not a service type (use simple, notify or oneshot)", s)
				}
			}
		case "RemainAfterExit":
			if b, ok := v.(bool); ok {
				u.RemainAfterExit = b
			} else {
				p.errorf(k, "%s is not true or false", describe(v))
			}
		default:
			if p.parseLimit(u, k, v) {
				continue
			}
			line := p.lines[k]
			loc := path
			if line > 0 {
				loc += ":" + strconv.Itoa(line)
			}
			u.Warnings = append(u.Warnings, fmt.Sprintf("%s: unknown key %q, ignored", loc, k))
		}
	}
	if u.Type == TypeOneshot {
		if _, set := raw["TimeoutStartSec"]; !set {
			u.TimeoutStartSec = 0 // setup steps may take long: no limit unless asked
		}
		if u.Restart == RestartAlways || u.Restart == RestartOnSuccess {
			p.errorf("Restart", "%q with Type = \"oneshot\" would run it again after every success; use no or on-failure", u.Restart)
		}
	}
	if _, ok := raw["ExecStart"]; !ok {
		p.errs = append(p.errs, &Error{File: path, Key: "ExecStart", Msg: "missing: every service needs the command to run"})
	} else if execOK {
		argv, err := Split(u.ExecStart)
		switch {
		case err != nil:
			p.errorf("ExecStart", "%v", err)
		case len(argv) == 0:
			p.errorf("ExecStart", "empty: give the command to run")
		default:
			u.Argv = argv
		}
	}
	u.Warnings = append(u.Warnings, p.warnings...)
	switch len(p.errs) {
	case 0:
		return u, nil
	case 1:
		return nil, p.errs[0]
	}
	return nil, errors.Join(p.errs...)
}

func containsRestart(r Restart) bool {
	for _, x := range restarts {
		if r == x {
			return true
		}
	}
	return false
}

// describe renders a decoded TOML value for messages.
func describe(v any) string {
	switch x := v.(type) {
	case string:
		return strconv.Quote(x)
	case []any:
		return "a list"
	case map[string]any:
		return "a table"
	case time.Time:
		return "a date"
	}
	return fmt.Sprint(v)
}

func (p *parser) str(key string, v any) (string, bool) {
	s, ok := v.(string)
	if !ok {
		p.errorf(key, "%s is not a string", describe(v))
		return "", false
	}
	if strings.IndexByte(s, 0) >= 0 {
		p.errorf(key, "contains a NUL byte")
		return "", false
	}
	return s, true
}

func (p *parser) strings(key string, v any) ([]string, bool) {
	list, ok := v.([]any)
	if !ok {
		p.errorf(key, "%s is not a list of strings (write [\"a\", \"b\"])", describe(v))
		return nil, false
	}
	out := make([]string, 0, len(list))
	for i, item := range list {
		s, ok := item.(string)
		if !ok {
			p.errorf(key, "item %d: %s is not a string", i+1, describe(item))
			return nil, false
		}
		out = append(out, s)
	}
	return out, true
}

func (p *parser) environment(key string, v any) []string {
	list, ok := p.strings(key, v)
	if !ok {
		return nil
	}
	for i, s := range list {
		eq := strings.IndexByte(s, '=')
		if eq < 0 && envNameRE.MatchString(s) {
			// The reference accepts a bare name; as with docker run -e
			// NAME, it passes on init's own value, if init has one.
			p.warnf(key, "item %d: %q has no value: init's own %s is passed on if it has one, else it stays unset (write %s=value to set it)", i+1, s, s, s)
			continue
		}
		if eq <= 0 || strings.IndexByte(s, 0) >= 0 {
			p.errorf(key, "item %d: %q is not NAME=value", i+1, s)
			return nil
		}
	}
	return list
}

// names reads a dependency list. A ".service" suffix is accepted and removed,
// since systemd habits write After = ["db.service"].
func (p *parser) names(key string, v any) []string {
	list, ok := p.strings(key, v)
	if !ok {
		return nil
	}
	out := list[:0]
	for i, s := range list {
		s = strings.TrimSuffix(s, Suffix)
		if err := ValidateName(s); err != nil {
			p.errorf(key, "item %d: %v", i+1, err)
			return nil
		}
		out = append(out, s)
	}
	return out
}

// seconds reads a duration given as whole or fractional seconds, or as a Go
// duration string ("1m30s"). zeroOK allows 0.
func (p *parser) seconds(key string, v any, dst *time.Duration, zeroOK bool) {
	var d time.Duration
	switch x := v.(type) {
	case int64:
		if x < 0 || x > math.MaxInt64/int64(time.Second) {
			p.errorf(key, "%d is out of range (0 to %d seconds)", x, math.MaxInt64/int64(time.Second))
			return
		}
		d = time.Duration(x) * time.Second
	case float64:
		if math.IsNaN(x) || x < 0 || x > float64(math.MaxInt64/int64(time.Second)) {
			p.errorf(key, "%v is not a number of seconds", x)
			return
		}
		d = time.Duration(x * float64(time.Second))
	case string:
		var err error
		if d, err = time.ParseDuration(x); err != nil || d < 0 {
			p.errorf(key, "%q is not a number of seconds or a duration such as \"1m30s\"", x)
			return
		}
	default:
		p.errorf(key, "%s is not a number of seconds", describe(v))
		return
	}
	if d == 0 && !zeroOK {
		p.errorf(key, "must be more than 0")
		return
	}
	*dst = d
}

// ident reads a user or group: a name or a number, kept as a string.
func (p *parser) ident(key string, v any) string {
	switch x := v.(type) {
	case int64:
		if x < 0 || x > math.MaxUint32-1 {
			p.errorf(key, "%d is not a valid id", x)
			return ""
		}
		return strconv.FormatInt(x, 10)
	case string:
		if x == "" || strings.ContainsAny(x, ":/\x00\n") {
			p.errorf(key, "%q is not a user or group name", x)
			return ""
		}
		return x
	}
	p.errorf(key, "%s is not a name or a number", describe(v))
	return ""
}

// ParseSignal reads a signal given as "SIGTERM", "TERM" (any case) or a
// number (integer or numeric string).
func ParseSignal(v any) (syscall.Signal, error) {
	var n int64
	switch x := v.(type) {
	case int64:
		n = x
	case int:
		n = int64(x)
	case string:
		s := strings.ToUpper(strings.TrimSpace(x))
		if num, err := strconv.ParseInt(s, 10, 64); err == nil {
			n = num
			break
		}
		if !strings.HasPrefix(s, "SIG") {
			s = "SIG" + s
		}
		if sig := unix.SignalNum(s); sig != 0 {
			return sig, nil
		}
		return 0, fmt.Errorf("%q is not a signal name (use e.g. SIGTERM, TERM, SIGINT or a number)", x)
	default:
		return 0, fmt.Errorf("%s is not a signal name or number", describe(v))
	}
	if n < 1 || n > 64 {
		return 0, fmt.Errorf("%d is not a signal number (1-64)", n)
	}
	return syscall.Signal(n), nil
}

// Credential resolves User and Group to the ids to run the service with. It
// returns nil, nil when neither is set (run as init's own user, root).
//
// A user name is looked up in /etc/passwd; a number is used as is and, when
// it has a passwd entry, takes its primary group and supplementary groups
// from there. A number with no passwd entry and no Group runs with the gid
// equal to the uid, since minimal enclave images often have no /etc/passwd
// and root's group would be a silent privilege. Group overrides the primary
// group.
func (u *Unit) Credential() (*syscall.Credential, error) {
	if u.User == "" && u.Group == "" {
		return nil, nil
	}
	cred := &syscall.Credential{}
	if u.User != "" {
		var (
			pw  *user.User
			err error
		)
		if id, perr := strconv.ParseUint(u.User, 10, 32); perr == nil {
			cred.Uid, cred.Gid = uint32(id), uint32(id)
			pw, err = user.LookupId(u.User)
			if err != nil {
				pw = nil // a bare number is allowed without a passwd entry
			}
		} else if pw, err = user.Lookup(u.User); err != nil {
			return nil, fmt.Errorf("%s: User %q: %w (add it to /etc/passwd or use a number)", u.Path, u.User, err)
		}
		if pw != nil {
			uid, _ := strconv.ParseUint(pw.Uid, 10, 32)
			gid, _ := strconv.ParseUint(pw.Gid, 10, 32)
			cred.Uid, cred.Gid = uint32(uid), uint32(gid)
			if gids, err := pw.GroupIds(); err == nil {
				for _, g := range gids {
					if n, err := strconv.ParseUint(g, 10, 32); err == nil && uint32(n) != cred.Gid {
						cred.Groups = append(cred.Groups, uint32(n))
					}
				}
			}
		}
	}
	if u.Group != "" {
		if id, err := strconv.ParseUint(u.Group, 10, 32); err == nil {
			cred.Gid = uint32(id)
		} else {
			g, err := user.LookupGroup(u.Group)
			if err != nil {
				return nil, fmt.Errorf("%s: Group %q: %w (add it to /etc/group or use a number)", u.Path, u.Group, err)
			}
			id, _ := strconv.ParseUint(g.Gid, 10, 32)
			cred.Gid = uint32(id)
		}
	}
	// Groups stays empty when the user has no supplementary groups: Go's
	// ForkExec then calls setgroups(0), so the service does not keep
	// root's supplementary groups.
	return cred, nil
}

// fileHash tells whether a unit file changed between two loads. It need
// not resist forgery (whoever can write the file decides what runs
// anyway), and FNV-1a keeps crypto/sha256, with the FIPS module and its
// DRBG and AES it brings along, out of init: their code is mapped into
// PID 1's memory for as long as it runs.
func fileHash(data []byte) (sum [16]byte) {
	h := fnv.New128a()
	h.Write(data)
	h.Sum(sum[:0])
	return sum
}
