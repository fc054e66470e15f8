package config

import (
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Error is one problem found in a configuration file. It names the file, the
// line and the dotted key so that an operator can find it without guessing.
// Warnings (unknown keys, duplicate keys) do not change the result; other
// errors mean the key kept its default value.
type Error struct {
	File    string // path of the configuration file
	Line    int    // 1-based line, 0 when unknown
	Key     string // dotted key such as "control.vsock_port"; empty for whole-file problems
	Msg     string // what is wrong and what is allowed
	Warning bool   // true when the problem was ignored without changing the result
	Err     error  // underlying cause, if any (for errors.Is / errors.As)
}

// Error formats the problem as "file:line: key: message".
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteString(":")
		b.WriteString(strconv.Itoa(e.Line))
	}
	b.WriteString(": ")
	if e.Key != "" {
		b.WriteString(e.Key)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Unwrap returns the underlying cause.
func (e *Error) Unwrap() error { return e.Err }

// IsWarning reports whether err is a configuration warning: something that
// was ignored without changing any value (an unknown or duplicate key).
func IsWarning(err error) bool {
	e, ok := err.(*Error)
	return ok && e.Warning
}

// decoder walks a yaml.Node tree and records every problem it meets instead of
// stopping at the first one: PID 1 must come up with as much of the operator's
// intent as it can read.
type decoder struct {
	file string
	errs []error
}

// field decodes the value node of one mapping key; key is the dotted path.
type field func(key string, n *yaml.Node)

func (d *decoder) errorf(n *yaml.Node, key, format string, args ...any) {
	line := 0
	if n != nil {
		line = n.Line
	}
	d.errs = append(d.errs, &Error{File: d.file, Line: line, Key: key, Msg: fmt.Sprintf(format, args...)})
}

func (d *decoder) warnf(n *yaml.Node, key, format string, args ...any) {
	d.errs = append(d.errs, &Error{File: d.file, Line: n.Line, Key: key, Msg: fmt.Sprintf(format, args...), Warning: true})
}

// resolve follows aliases so that anchors (&x / *x) work everywhere.
func resolve(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return fmt.Sprintf("%q", n.Value)
	}
	return "an unsupported YAML node"
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.Tag == "!!null"
}

// mapping decodes the keys of a mapping node with the given fields. Unknown
// keys are warnings; a key given twice is a warning and the later one wins,
// which is what most YAML readers do.
func (d *decoder) mapping(prefix string, n *yaml.Node, fields map[string]field) {
	n = resolve(n)
	if isNull(n) {
		return // "control:" with nothing under it keeps every default
	}
	if n.Kind != yaml.MappingNode {
		name := prefix
		if name == "" {
			name = "top level"
		}
		d.errorf(n, prefix, "expected a mapping of keys, got %s; keeping defaults for %s", kindName(n), name)
		return
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolve(n.Content[i]), resolve(n.Content[i+1])
		full := k.Value
		if prefix != "" {
			full = prefix + "." + k.Value
		}
		if k.Kind != yaml.ScalarNode {
			d.errorf(k, prefix, "a key must be a plain word, got %s; ignored", kindName(k))
			continue
		}
		if first, dup := seen[k.Value]; dup {
			d.warnf(k, full, "duplicate key (first at line %d); the later value is used", first)
		}
		seen[k.Value] = k.Line
		f, ok := fields[k.Value]
		if !ok {
			d.warnf(k, full, "unknown key, ignored")
			continue
		}
		f(full, v)
	}
}

// scalar checks that n is a non-null scalar and reports what it expected.
func (d *decoder) scalar(key string, n *yaml.Node, want string) bool {
	if isNull(n) {
		d.errorf(n, key, "no value given; expected %s, keeping the default", want)
		return false
	}
	if n.Kind != yaml.ScalarNode {
		d.errorf(n, key, "%s is not %s", kindName(n), want)
		return false
	}
	return true
}

func (d *decoder) str(dst *string) field {
	return func(key string, n *yaml.Node) {
		if d.scalar(key, n, "a string") {
			*dst = n.Value
		}
	}
}

// path is a string that must not be empty.
func (d *decoder) path(dst *string) field {
	return func(key string, n *yaml.Node) {
		if !d.scalar(key, n, "a path") {
			return
		}
		if n.Value == "" {
			d.errorf(n, key, "empty path; keeping the default %q", *dst)
			return
		}
		*dst = n.Value
	}
}

func (d *decoder) boolean(dst *bool) field {
	return func(key string, n *yaml.Node) {
		if !d.scalar(key, n, "true or false") {
			return
		}
		switch strings.ToLower(n.Value) {
		case "true", "yes", "on":
			*dst = true
		case "false", "no", "off":
			*dst = false
		default:
			d.errorf(n, key, "%q is not true or false", n.Value)
		}
	}
}

// parseInt accepts YAML integer spellings (decimal, 0x, 0o, underscores), quoted
// or not, because people quote numbers in YAML all the time.
func parseInt(s string) (int64, bool) {
	s = strings.ReplaceAll(strings.TrimSpace(s), "_", "")
	if strings.HasPrefix(s, "0o") || strings.HasPrefix(s, "0O") {
		v, err := strconv.ParseInt(s[2:], 8, 64)
		return v, err == nil
	}
	v, err := strconv.ParseInt(s, 0, 64)
	return v, err == nil
}

// uint32Field decodes a number in [0, 2^32-1]; what names the kind of number in
// the message (e.g. "a port number"). When anyMinusOne is true, -1 means
// 4294967295 (the "-1U" spelling of VMADDR_CID_ANY).
func (d *decoder) uint32Field(dst *uint32, what string, anyMinusOne bool) field {
	return func(key string, n *yaml.Node) {
		if !d.scalar(key, n, what) {
			return
		}
		v, ok := parseInt(n.Value)
		if ok && v == -1 && anyMinusOne {
			v = math.MaxUint32
		}
		if !ok || v < 0 || v > math.MaxUint32 {
			d.errorf(n, key, "%q is not %s (0-4294967295)", n.Value, what)
			return
		}
		*dst = uint32(v)
	}
}

// intField decodes an integer in [min, max].
func (d *decoder) intField(dst *int64, min, max int64) field {
	return func(key string, n *yaml.Node) {
		want := fmt.Sprintf("a whole number from %d to %d", min, max)
		if !d.scalar(key, n, want) {
			return
		}
		v, ok := parseInt(n.Value)
		if !ok || v < min || v > max {
			d.errorf(n, key, "%q is not %s", n.Value, want)
			return
		}
		*dst = v
	}
}

func (d *decoder) intFieldInt(dst *int, min, max int64) field {
	return func(key string, n *yaml.Node) {
		v := int64(*dst)
		before := len(d.errs)
		d.intField(&v, min, max)(key, n)
		if len(d.errs) == before {
			*dst = int(v)
		}
	}
}

// logSize decodes max_log_size. Any positive size the reference accepts is
// accepted: a size below a line's length only means one line per file.
// Zero is refused because it would rotate on every line (and in the
// reference it does).
func (d *decoder) logSize(dst *int64) field {
	return func(key string, n *yaml.Node) {
		const want = "a number of bytes from 1 to 1125899906842624"
		if !d.scalar(key, n, want) {
			return
		}
		v, ok := parseInt(n.Value)
		switch {
		case ok && v == 0:
			d.errorf(n, key, "0 would rotate the log at every line; use a size in bytes such as 1048576 (1 MiB)")
		case !ok || v < 1 || v > 1<<50:
			d.errorf(n, key, "%q is not %s", n.Value, want)
		default:
			*dst = v
		}
	}
}

// logFiles decodes max_log_files. The reference counts rotated files, so
// its 0 means "keep none": the live file is truncated when full, which is
// what 1 (the live file alone) means here.
func (d *decoder) logFiles(dst *int) field {
	return func(key string, n *yaml.Node) {
		v := int64(*dst)
		before := len(d.errs)
		d.intField(&v, 0, 1000)(key, n)
		if len(d.errs) == before {
			*dst = max(int(v), 1)
		}
	}
}

// duration accepts a Go duration string ("10s", "1m30s") or a number of
// seconds (integer or fraction), and must be positive.
func (d *decoder) duration(dst *time.Duration) field {
	return func(key string, n *yaml.Node) {
		const want = `a duration such as "10s", "1m30s" or a number of seconds`
		if !d.scalar(key, n, want) {
			return
		}
		v, err := ParseDuration(n.Value)
		if err != nil {
			d.errorf(n, key, "%q is not %s", n.Value, want)
			return
		}
		if v <= 0 {
			d.errorf(n, key, "%q must be longer than zero", n.Value)
			return
		}
		*dst = v
	}
}

// ParseDuration reads a Go duration string ("1m30s") or a plain number of
// seconds ("10", "0.5").
func ParseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		if math.IsNaN(f) || math.IsInf(f, 0) || math.Abs(f) > float64(math.MaxInt64/int64(time.Second)) {
			return 0, fmt.Errorf("%q is out of range", s)
		}
		return time.Duration(f * float64(time.Second)), nil
	}
	return time.ParseDuration(s)
}

// sequence calls each for every item of a list node.
func (d *decoder) sequence(key string, n *yaml.Node, want string, each func(i int, item *yaml.Node)) bool {
	if isNull(n) {
		return true // "uids:" with nothing: an empty list
	}
	if n.Kind != yaml.SequenceNode {
		d.errorf(n, key, "%s is not a list of %s", kindName(n), want)
		return false
	}
	for i, item := range n.Content {
		each(i, resolve(item))
	}
	return true
}

func (d *decoder) strList(dst *[]string, what string) field {
	return func(key string, n *yaml.Node) {
		var out []string
		bad := false
		ok := d.sequence(key, n, what, func(i int, item *yaml.Node) {
			ik := fmt.Sprintf("%s[%d]", key, i)
			if !d.scalar(ik, item, what) || item.Value == "" {
				if item.Kind == yaml.ScalarNode && item.Value == "" && !isNull(item) {
					d.errorf(item, ik, "empty %s", what)
				}
				bad = true
				return
			}
			out = append(out, item.Value)
		})
		if ok && !bad {
			*dst = out
		}
	}
}

func (d *decoder) uint32List(dst *[]uint32, what string) field {
	return func(key string, n *yaml.Node) {
		var out []uint32
		bad := false
		ok := d.sequence(key, n, what, func(i int, item *yaml.Node) {
			var v uint32
			before := len(d.errs)
			d.uint32Field(&v, what, false)(fmt.Sprintf("%s[%d]", key, i), item)
			if len(d.errs) != before {
				bad = true
				return
			}
			out = append(out, v)
		})
		if ok && !bad {
			*dst = out
		}
	}
}

func (d *decoder) classes(dst *[]Class) field {
	return func(key string, n *yaml.Node) {
		var out []Class
		bad := false
		ok := d.sequence(key, n, "permission classes", func(i int, item *yaml.Node) {
			ik := fmt.Sprintf("%s[%d]", key, i)
			if !d.scalar(ik, item, "a permission class") {
				bad = true
				return
			}
			c := Class(strings.ToLower(item.Value))
			if !c.Valid() {
				d.errorf(item, ik, "%q is not a permission class (use read, manage or exec)", item.Value)
				bad = true
				return
			}
			out = append(out, c)
		})
		if ok && !bad {
			*dst = out
		}
	}
}

// enum decodes one of a fixed set of words.
func (d *decoder) enum(dst *string, allowed ...string) field {
	return func(key string, n *yaml.Node) {
		want := "one of " + strings.Join(allowed, ", ")
		if !d.scalar(key, n, want) {
			return
		}
		v := strings.ToLower(n.Value)
		for _, a := range allowed {
			if v == a {
				*dst = a
				return
			}
		}
		d.errorf(n, key, "%q is not allowed (use %s)", n.Value, strings.Join(allowed, ", "))
	}
}

// envNameProblem says why name cannot be an environment variable's name, or
// returns "". Like the reference, any name an environment can carry is
// accepted (MY-VAR, 1X), though a shell cannot expand such names.
func envNameProblem(name string) string {
	switch {
	case name == "":
		return "an empty name cannot be set; give the variable a name"
	case strings.Contains(name, "="):
		return fmt.Sprintf("%q contains '=', which ends a variable's name in the environment; use a name without '='", name)
	case strings.IndexByte(name, 0) >= 0:
		return "the name contains a NUL byte, which cannot be passed to a program; remove it"
	}
	return ""
}

// environment decodes a mapping of variable names to scalar values. Numbers and
// booleans are kept as written ("8080", "true"), since YAML would otherwise
// turn "LANG: en" into a string but "PORT: 8080" into an integer.
func (d *decoder) environment(dst *map[string]string) field {
	return func(key string, n *yaml.Node) {
		if isNull(n) {
			*dst = map[string]string{}
			return
		}
		if n.Kind != yaml.MappingNode {
			d.errorf(n, key, "%s is not a mapping of NAME: value", kindName(n))
			return
		}
		out := map[string]string{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := resolve(n.Content[i]), resolve(n.Content[i+1])
			ik := key + "." + k.Value
			if k.Kind != yaml.ScalarNode {
				d.errorf(k, ik, "%s is not a variable name; ignored", kindName(k))
				continue
			}
			if why := envNameProblem(k.Value); why != "" {
				d.errorf(k, ik, "%s; ignored", why)
				continue
			}
			if isNull(v) {
				out[k.Value] = ""
				continue
			}
			if v.Kind != yaml.ScalarNode {
				d.errorf(v, ik, "%s is not a plain value; ignored", kindName(v))
				continue
			}
			if strings.IndexByte(v.Value, 0) >= 0 {
				d.errorf(v, ik, "value contains a NUL byte; ignored")
				continue
			}
			out[k.Value] = v.Value
		}
		*dst = out
	}
}

// yamlErrorLine extracts "line N" from a yaml.v3 parser error.
var yamlLineRE = regexp.MustCompile(`line (\d+)`)

func yamlErrorLine(err error) int {
	m := yamlLineRE.FindStringSubmatch(err.Error())
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}
