package unit

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestSplit(t *testing.T) {
	tests := []struct {
		in   string
		want []string
		err  string
	}{
		{in: "", want: nil},
		{in: "   \t\n ", want: nil},
		{in: "/bin/app --port 8080", want: []string{"/bin/app", "--port", "8080"}},
		{in: `sh -c 'echo "hi there"; exit 3'`, want: []string{"sh", "-c", `echo "hi there"; exit 3`}},
		{in: `echo "a \"b\" \\ \$HOME \x"`, want: []string{"echo", `a "b" \ $HOME \x`}},
		{in: `a\ b c\\d \'e`, want: []string{"a b", `c\d`, "'e"}},
		{in: `x '' "" y`, want: []string{"x", "", "", "y"}},
		{in: `pre'mid'"dle"post`, want: []string{"premiddlepost"}},
		{in: "one \\\ntwo", want: []string{"one", "two"}},
		{in: "\"a\\\nb\"", want: []string{"ab"}},
		{in: `$HOME *.go ~ a;b | c && d # e > f`, want: []string{"$HOME", "*.go", "~", "a;b", "|", "c", "&&", "d", "#", "e", ">", "f"}},
		{in: `'it'\''s'`, want: []string{"it's"}},
		{in: "héllo\\é wörld", want: []string{"hélloé", "wörld"}},
		{in: "a\u00a0b\u2003c", want: []string{"a", "b", "c"}}, // the same spaces strings.Fields uses
		{in: `echo 'open`, err: "unterminated single quote at position 5"},
		{in: `echo "open \"`, err: "unterminated double quote at position 5"},
		{in: `echo end\`, err: "trailing backslash at position 8"},
	}
	for _, tt := range tests {
		got, err := Split(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("Split(%q) error = %v, want %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("Split(%q) unexpected error %v", tt.in, err)
			continue
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("Split(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestQuoteRoundTrip(t *testing.T) {
	for _, w := range []string{"", "plain", "two words", "it's", `back\slash`, `"dq"`, "tab\there", "new\nline"} {
		got, err := Split(Quote(w))
		if err != nil || len(got) != 1 || got[0] != w {
			t.Errorf("Split(Quote(%q)) = %q, %v", w, got, err)
		}
	}
}

func FuzzSplit(f *testing.F) {
	for _, s := range []string{"a b", `'x y' "z\"w"`, `a\ b`, "\"\\\n\"", "\xff \u00a0x", `'`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := Split(s)
		if strings.ContainsAny(s, `'"\`) {
			if err == nil {
				// Quoting each word must give the same words back.
				q := make([]string, len(got))
				for i, w := range got {
					q[i] = Quote(w)
				}
				again, err := Split(strings.Join(q, " "))
				if err != nil || !reflect.DeepEqual(again, got) && !(len(again) == 0 && len(got) == 0) {
					t.Fatalf("round trip of %q: %q -> %q (%v)", s, got, again, err)
				}
			}
			return
		}
		if err != nil {
			t.Fatalf("Split(%q) error %v without quotes or backslashes", s, err)
		}
		want := strings.Fields(s)
		if len(want) == 0 && len(got) == 0 {
			return
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("Split(%q) = %q, strings.Fields = %q", s, got, want)
		}
	})
}

func TestParse(t *testing.T) {
	tests := []struct {
		name  string
		file  string // file name, default web.service
		toml  string
		check func(u *Unit) string
		err   []string // substrings of the error, all required
		warn  []string
	}{
		{
			name: "reference example",
			toml: `# Command to execute (required)
ExecStart = "/usr/bin/myapp --config /etc/myapp.conf --port 8080"
Environment = ["LOG_LEVEL=debug", "DATABASE_URL=postgresql://localhost/mydb"]
Restart = "always"
RestartSec = 10
WorkingDirectory = "/var/lib/myapp"
ServiceEnable = true
After = ["database", "cache"]
Before = ["monitor"]
Requires = ["database"]
RequiredBy = ["monitor"]
`,
			check: func(u *Unit) string {
				want := &Unit{
					Name: "web", Path: "/service/web.service",
					ExecStart:        "/usr/bin/myapp --config /etc/myapp.conf --port 8080",
					Argv:             []string{"/usr/bin/myapp", "--config", "/etc/myapp.conf", "--port", "8080"},
					Environment:      []string{"LOG_LEVEL=debug", "DATABASE_URL=postgresql://localhost/mydb"},
					Restart:          RestartAlways,
					RestartSec:       10 * time.Second,
					WorkingDirectory: "/var/lib/myapp",
					ServiceEnable:    true,
					After:            []string{"database", "cache"}, Before: []string{"monitor"},
					Requires: []string{"database"}, RequiredBy: []string{"monitor"},
					TimeoutStopSec: 10 * time.Second, KillSignal: syscall.SIGTERM,
					StartLimitBurst: 5, StartLimitInterval: 10 * time.Second,
					Type: TypeSimple, TimeoutStartSec: 30 * time.Second,
					Hash: u.Hash,
				}
				if !reflect.DeepEqual(u, want) {
					return fmt.Sprintf("mismatch:\n got %+v\nwant %+v", u, want)
				}
				if !u.Enabled() {
					return "should be enabled"
				}
				return ""
			},
		},
		{
			name: "minimal with defaults",
			toml: `ExecStart = "/bin/true"`,
			check: func(u *Unit) string {
				if u.Restart != RestartNo || u.RestartSec != 5*time.Second || !u.ServiceEnable || u.Type != TypeSimple {
					return "defaults wrong"
				}
				return ""
			},
		},
		{
			name: "our keys",
			toml: `ExecStart = "/bin/app"
Type = "notify"
User = 1000
Group = "wheel"
KillSignal = "INT"
TimeoutStopSec = 2.5
TimeoutStartSec = "1m"
StartLimitBurst = 3
StartLimitIntervalSec = 0
Restart = "on-abnormal"
After = ["db.service"]
`,
			check: func(u *Unit) string {
				switch {
				case u.Type != TypeNotify || u.User != "1000" || u.Group != "wheel" || u.KillSignal != syscall.SIGINT:
					return "type/user/group/signal"
				case u.TimeoutStopSec != 2500*time.Millisecond || u.TimeoutStartSec != time.Minute:
					return "timeouts"
				case u.StartLimitBurst != 3 || u.StartLimitInterval != 0 || u.Restart != RestartOnAbnormal:
					return "limits"
				case !reflect.DeepEqual(u.After, []string{"db"}):
					return ".service suffix should be dropped"
				}
				return ""
			},
		},
		{
			name: "disabled file",
			file: "web.service.disabled",
			toml: "ExecStart = \"/bin/app\"\n",
			check: func(u *Unit) string {
				if !u.Disabled || u.Enabled() || u.Name != "web" {
					return "should be disabled"
				}
				return ""
			},
		},
		{
			name: "ServiceEnable false",
			toml: "ExecStart = \"/bin/app\"\nServiceEnable = false\n",
			check: func(u *Unit) string {
				if u.Enabled() {
					return "should not be enabled"
				}
				return ""
			},
		},
		{
			name: "unknown key warns",
			toml: "ExecStart = \"/bin/app\"\nFoo = 1\n[Install]\nWantedBy = \"x\"\n",
			warn: []string{`/service/web.service:2: unknown key "Foo", ignored`, `/service/web.service:3: unknown key "Install", ignored`},
		},
		{
			name: "bad restart",
			toml: "ExecStart = \"/bin/app\"\n\nRestart = \"sometimes\"\n",
			err:  []string{`/service/web.service:3: Restart: "sometimes" is not a restart policy (use no, always, on-failure, on-success or on-abnormal)`},
		},
		{
			name: "missing ExecStart",
			toml: "Restart = \"always\"\n",
			err:  []string{`/service/web.service: ExecStart: missing`},
		},
		{
			name: "empty ExecStart",
			toml: "ExecStart = \"  \"\n",
			err:  []string{`/service/web.service:1: ExecStart: empty`},
		},
		{
			name: "unterminated quote in ExecStart",
			toml: "\nExecStart = \"sh -c 'oops\"\n",
			err:  []string{`/service/web.service:2: ExecStart: unterminated single quote at position 6`},
		},
		{
			name: "bad TOML",
			toml: "ExecStart = \"/bin/app\"\nRestart = always\n",
			err:  []string{`/service/web.service:2: invalid TOML`},
		},
		{
			name: "wrong types, all reported",
			toml: "ExecStart = [\"/bin/app\"]\nRestartSec = \"soon\"\nEnvironment = \"A=1\"\nServiceEnable = \"yes\"\nAfter = [1]\nKillSignal = \"SIGNOPE\"\nType = \"forking\"\nStartLimitBurst = 0\nTimeoutStopSec = 0\nWorkingDirectory = \"rel\"\nUser = -1\n",
			err: []string{
				`web.service:1: ExecStart: a list is not a string`,
				`web.service:2: RestartSec: "soon" is not a number of seconds`,
				`web.service:3: Environment: "A=1" is not a list of strings`,
				`web.service:4: ServiceEnable: "yes" is not true or false`,
				`web.service:5: After: item 1: 1 is not a string`,
				`web.service:6: KillSignal: "SIGNOPE" is not a signal name`,
				`web.service:7: Type: "forking" is not a service type`,
				`web.service:8: StartLimitBurst: 0 is not a whole number`,
				`web.service:9: TimeoutStopSec: must be more than 0`,
				`web.service:10: WorkingDirectory: "rel" is not an absolute path`,
				`web.service:11: User: -1 is not a valid id`,
			},
		},
		{
			name: "bad environment entry and dependency name",
			toml: "ExecStart = \"/bin/app\"\nEnvironment = [\"=x\"]\nRequires = [\"../etc\"]\n",
			err:  []string{`web.service:2: Environment: item 1: "=x" is not NAME=value`, `web.service:3: Requires: item 1: invalid service name "../etc"`},
		},
		{
			name: "bad file name",
			file: "web.conf",
			toml: "ExecStart = \"/bin/app\"\n",
			err:  []string{"not a service file"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := tt.file
			if file == "" {
				file = "web.service"
			}
			u, err := Parse("/service/"+file, []byte(tt.toml))
			if len(tt.err) > 0 {
				if err == nil {
					t.Fatalf("no error, want %q", tt.err)
				}
				if u != nil {
					t.Error("unit should be nil on error")
				}
				var ue *Error
				if !errors.As(err, &ue) {
					t.Errorf("error %T is not a *unit.Error", err)
				}
				for _, want := range tt.err {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error\n%v\ndoes not contain %q", err, want)
					}
				}
				if n := strings.Count(err.Error(), "\n") + 1; n != len(tt.err) {
					t.Errorf("error has %d lines, want %d:\n%v", n, len(tt.err), err)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if !reflect.DeepEqual(u.Warnings, tt.warn) {
				t.Errorf("warnings = %q, want %q", u.Warnings, tt.warn)
			}
			if tt.check != nil {
				if msg := tt.check(u); msg != "" {
					t.Errorf("%s: %+v", msg, u)
				}
			}
		})
	}
}

func TestParseHashChanges(t *testing.T) {
	a, _ := Parse("a.service", []byte(`ExecStart = "/bin/a"`))
	b, _ := Parse("a.service", []byte(`ExecStart = "/bin/b"`))
	c, _ := Parse("a.service", []byte(`ExecStart = "/bin/a"`))
	if a.Hash == b.Hash || a.Hash != c.Hash {
		t.Error("Hash must follow the file content")
	}
}

func TestParseSignal(t *testing.T) {
	tests := []struct {
		in   any
		want syscall.Signal
		err  bool
	}{
		{"SIGTERM", syscall.SIGTERM, false},
		{"term", syscall.SIGTERM, false},
		{"SIGKILL", syscall.SIGKILL, false},
		{"9", syscall.SIGKILL, false},
		{int64(2), syscall.SIGINT, false},
		{"SIGRTMIN", 0, true},
		{int64(0), 0, true},
		{int64(65), 0, true},
		{"", 0, true},
		{true, 0, true},
	}
	for _, tt := range tests {
		got, err := ParseSignal(tt.in)
		if (err != nil) != tt.err || got != tt.want {
			t.Errorf("ParseSignal(%v) = %v, %v; want %v, err=%v", tt.in, got, err, tt.want, tt.err)
		}
	}
}

func TestCredential(t *testing.T) {
	tests := []struct {
		user, group string
		nilCred     bool
		uid, gid    uint32
		err         string
	}{
		{nilCred: true},
		{user: "root", uid: 0, gid: 0},
		{user: "0", uid: 0, gid: 0},
		{user: "54321", uid: 54321, gid: 54321}, // no passwd entry: gid follows uid
		{user: "54321", group: "777", uid: 54321, gid: 777},
		{group: "root", uid: 0, gid: 0},
		{user: "no-such-user-xyz", err: `User "no-such-user-xyz"`},
		{user: "root", group: "no-such-group-xyz", err: `Group "no-such-group-xyz"`},
	}
	for _, tt := range tests {
		u := &Unit{Path: "/service/x.service", User: tt.user, Group: tt.group}
		c, err := u.Credential()
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%q/%q: error %v, want %q", tt.user, tt.group, err, tt.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q/%q: %v", tt.user, tt.group, err)
			continue
		}
		if tt.nilCred {
			if c != nil {
				t.Errorf("no User/Group should give nil credential, got %+v", c)
			}
			continue
		}
		if c == nil || c.Uid != tt.uid || c.Gid != tt.gid {
			t.Errorf("%q/%q: got %+v, want uid %d gid %d", tt.user, tt.group, c, tt.uid, tt.gid)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("ExecStart = \"/bin/a 'b c'\"\nRestart = \"always\"\nRestartSec = 1.5\n"))
	f.Add([]byte("ExecStart = 1\n[x]\ny = [1, \"a\", {z = 2}]\n"))
	f.Add([]byte("KillSignal = 99999999999\nUser = 9999999999\nRestartSec = 1e300\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		u, err := Parse("/service/f.service", data)
		if (u == nil) == (err == nil) {
			t.Fatalf("exactly one of unit and error must be set: %v, %v", u, err)
		}
		if u != nil && len(u.Argv) == 0 {
			t.Fatal("a valid unit must have an argv")
		}
	})
}

func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestLoadDir(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"b.service":             `ExecStart = "/bin/b"`,
		"a.service.disabled":    `ExecStart = "/bin/a"`,
		"broken.service":        `ExecStart = `,
		"both.service":          `ExecStart = "/bin/both"`,
		"both.service.disabled": `ExecStart = "/bin/old"`,
		"README":                "not a service",
		"c.service.bak":         `ExecStart = "/bin/c"`,
		"bad name.service":      `ExecStart = "/bin/x"`,
	})
	if err := os.Mkdir(filepath.Join(dir, "dir.service"), 0o755); err != nil {
		t.Fatal(err)
	}
	entries, err := LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	type row struct {
		name     string
		disabled bool
		ok       bool
		err      string
	}
	want := []row{
		{"a", true, true, ""},
		{"b", false, true, ""},
		{"bad name", false, false, "invalid service name"},
		{"both", false, true, ""},
		{"both", true, false, "both both.service and both.service.disabled exist"},
		{"broken", false, false, "broken.service:1: invalid TOML"},
		{"dir", false, false, "not a regular file"},
	}
	if len(entries) != len(want) {
		for _, e := range entries {
			t.Logf("%+v", e)
		}
		t.Fatalf("got %d entries, want %d", len(entries), len(want))
	}
	for i, w := range want {
		e := entries[i]
		if e.Name != w.name || e.Disabled != w.disabled || (e.Unit != nil) != w.ok || (e.Err == nil) != w.ok {
			t.Errorf("entry %d = %+v, want %+v", i, e, w)
		}
		if w.err != "" && (e.Err == nil || !strings.Contains(e.Err.Error(), w.err)) {
			t.Errorf("entry %d error = %v, want %q", i, e.Err, w.err)
		}
	}

	if _, err := LoadDir(filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("missing dir: error = %v", err)
	}
}

func TestSetEnabled(t *testing.T) {
	tests := []struct {
		name     string
		files    map[string]string
		service  string
		enable   bool
		wantFile string // the only file left for the service
		err      string
	}{
		{name: "enable renames", files: map[string]string{"a.service.disabled": `ExecStart = "/a"`}, service: "a", enable: true, wantFile: "a.service"},
		{name: "enable is idempotent", files: map[string]string{"a.service": `ExecStart = "/a"`}, service: "a", enable: true, wantFile: "a.service"},
		{name: "disable renames", files: map[string]string{"a.service": `ExecStart = "/a"`}, service: "a", enable: false, wantFile: "a.service.disabled"},
		{name: "disable is idempotent", files: map[string]string{"a.service.disabled": `ExecStart = "/a"`}, service: "a", enable: false, wantFile: "a.service.disabled"},
		{
			name:    "enable rewrites ServiceEnable",
			files:   map[string]string{"a.service.disabled": "ExecStart = \"/a\"\n  ServiceEnable = false # off for now\n"},
			service: "a", enable: true, wantFile: "a.service",
		},
		{name: "not found", files: map[string]string{}, service: "nope", enable: true, err: "Service 'nope' not found"},
		{name: "bad name", files: map[string]string{}, service: "../etc/passwd", enable: true, err: "invalid service name"},
		{
			name:    "both files",
			files:   map[string]string{"a.service": `ExecStart = "/a"`, "a.service.disabled": `ExecStart = "/a"`},
			service: "a", enable: false, err: "remove one of them",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := writeFiles(t, tt.files)
			path, err := SetEnabled(dir, tt.service, tt.enable)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if path != filepath.Join(dir, tt.wantFile) {
				t.Errorf("path = %s, want %s", path, tt.wantFile)
			}
			entries, err := LoadDir(dir)
			if err != nil || len(entries) != 1 {
				t.Fatalf("LoadDir: %v, %d entries", err, len(entries))
			}
			u := entries[0].Unit
			if u == nil {
				t.Fatalf("unit broken after SetEnabled: %v", entries[0].Err)
			}
			if u.Enabled() != tt.enable {
				t.Errorf("Enabled() = %v after SetEnabled(%v)", u.Enabled(), tt.enable)
			}
			if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o640 {
				t.Errorf("file mode not kept: %v %v", st.Mode(), err)
			}
		})
	}
}
