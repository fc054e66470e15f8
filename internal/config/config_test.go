package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadInitMissingFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "init.yaml")
	c, errs := LoadInit(p)
	if !reflect.DeepEqual(c, DefaultInit()) {
		t.Errorf("missing file: got %+v, want defaults", c)
	}
	if len(errs) != 1 {
		t.Fatalf("missing file: got %d errors %v, want 1", len(errs), errs)
	}
	if !errors.Is(errs[0], fs.ErrNotExist) {
		t.Errorf("error %v does not satisfy errors.Is(fs.ErrNotExist)", errs[0])
	}
	if !strings.Contains(errs[0].Error(), p) || !strings.Contains(errs[0].Error(), "defaults") {
		t.Errorf("error %q should name the file and say defaults are used", errs[0])
	}
}

func TestLoadInitReferenceExample(t *testing.T) {
	// The complete example from the reference README must load without a
	// single message and give exactly these values.
	p := writeFile(t, "init.yaml", `
service_dir: /service
log_dir: /log
control:
  unix_socket_enabled: true
  unix_socket_path: /run/init.sock
  vsock_enabled: true
  vsock_cid: 4294967295
  vsock_port: 9001
max_log_size: 10485760
max_log_files: 5
environment:
  TZ: UTC
  LANG: en_US.UTF-8
  HOME: /root
  TERM: linux
  ENVIRONMENT: production
vsock:
  enabled: true
  cid: 3
  port: 9000
nsm_driver_path: nsm.ko
pivot_root: true
pivot_root_dir: /rootfs
`)
	c, errs := LoadInit(p)
	if len(errs) != 0 {
		t.Fatalf("unexpected errors: %v", errs)
	}
	want := DefaultInit()
	want.Control.VsockEnabled = true
	want.Environment = map[string]string{"TZ": "UTC", "LANG": "en_US.UTF-8", "HOME": "/root", "TERM": "linux", "ENVIRONMENT": "production"}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("got %+v\nwant %+v", c, want)
	}
	wantEnv := []string{"ENVIRONMENT=production", "HOME=/root", "LANG=en_US.UTF-8", "TERM=linux", "TZ=UTC"}
	if got := c.Environ(); !reflect.DeepEqual(got, wantEnv) {
		t.Errorf("Environ() = %v, want %v", got, wantEnv)
	}
}

func TestParseInit(t *testing.T) {
	tests := []struct {
		name  string
		yaml  string
		check func(c *Init) string // returns a complaint, or ""
		errs  []string             // substrings, one per expected message, in order
		warns int                  // how many of errs are warnings
	}{
		{
			name: "empty file is all defaults",
			yaml: "# nothing here\n",
			check: func(c *Init) string {
				if !reflect.DeepEqual(c, DefaultInit()) {
					return "not defaults"
				}
				return ""
			},
		},
		{
			name: "bad port keeps default and the other keys",
			yaml: "service_dir: /srv\ncontrol:\n  vsock_enabled: true\n  vsock_port: abc\n",
			check: func(c *Init) string {
				if c.ServiceDir != "/srv" || !c.Control.VsockEnabled || c.Control.VsockPort != 9001 {
					return "wrong values"
				}
				return ""
			},
			errs: []string{`init.yaml:4: control.vsock_port: "abc" is not a port number (0-4294967295)`},
		},
		{
			name: "port out of range",
			yaml: "vsock:\n  port: 4294967296\n",
			errs: []string{`init.yaml:2: vsock.port: "4294967296" is not a port number (0-4294967295)`},
		},
		{
			name:  "unknown keys are warnings",
			yaml:  "service_dir: /a\nfoo: 1\ncontrol:\n  bar: true\n",
			errs:  []string{`init.yaml:2: foo: unknown key, ignored`, `init.yaml:4: control.bar: unknown key, ignored`},
			warns: 2,
			check: func(c *Init) string {
				if c.ServiceDir != "/a" {
					return "service_dir not kept"
				}
				return ""
			},
		},
		{
			name:  "duplicate key warns, later wins",
			yaml:  "log_dir: /a\nlog_dir: /b\n",
			errs:  []string{`init.yaml:2: log_dir: duplicate key (first at line 1)`},
			warns: 1,
			check: func(c *Init) string {
				if c.LogDir != "/b" {
					return "later value should win"
				}
				return ""
			},
		},
		{
			name: "invalid YAML names the line",
			yaml: "service_dir: /a\ncontrol:\n  vsock_port: [1,\n",
			errs: []string{`init.yaml:3: not valid YAML (`},
			check: func(c *Init) string {
				if !reflect.DeepEqual(c, DefaultInit()) {
					return "invalid YAML should give defaults"
				}
				return ""
			},
		},
		{
			name: "nsm null disables, cid -1 is any",
			yaml: "nsm_driver_path: null\ncontrol:\n  vsock_cid: -1\n",
			check: func(c *Init) string {
				if c.NSMEnabled() || c.NSMDriverPath != "" || c.Control.VsockCID != VsockCIDAny {
					return "nsm not disabled or cid wrong"
				}
				return ""
			},
		},
		{
			name: "our keys",
			yaml: `
kernel_modules: [/lib/modules/vsock.ko, /lib/modules/vmw_vsock_virtio_transport.ko]
cgroups: V2
log_ring_lines: 0
on_failure: {heartbeat: fatal, nsm: warn}
vsock: {timeout: 1m30s}
control:
  io_timeout: 2.5
  max_connections: 8
  permissions:
    unix: {uids: [1000, 0x10], gids: [50], classes: [read, Manage]}
    vsock: {cids: [3], classes: [read, manage, exec]}
`,
			check: func(c *Init) string {
				p := c.Control.Permissions
				switch {
				case len(c.KernelModules) != 2 || c.KernelModules[1] != "/lib/modules/vmw_vsock_virtio_transport.ko":
					return "kernel_modules"
				case c.Cgroups != CgroupsV2:
					return "cgroups"
				case c.LogRingLines != 0:
					return "log_ring_lines"
				case c.OnFailure != OnFailure{Heartbeat: ActionFatal, NSM: ActionWarn, PivotRoot: ActionWarn}:
					return "on_failure"
				case c.Vsock.Timeout != 90*time.Second || c.Control.IOTimeout != 2500*time.Millisecond:
					return "durations"
				case c.Control.MaxConnections != 8:
					return "max_connections"
				case !reflect.DeepEqual(p.Unix.UIDs, []uint32{1000, 16}) || !reflect.DeepEqual(p.Unix.GIDs, []uint32{50}):
					return "unix ids"
				case !reflect.DeepEqual(p.Unix.Classes, []Class{ClassRead, ClassManage}):
					return "unix classes"
				case !reflect.DeepEqual(p.Vsock.CIDs, []uint32{3}) || len(p.Vsock.Classes) != 3:
					return "vsock permissions"
				}
				return ""
			},
		},
		{
			name: "bad values in our keys",
			yaml: `
cgroups: v3
on_failure:
  nsm: panic
control:
  io_timeout: -1s
  permissions:
    unix: {classes: [read, root]}
    vsock: {cids: [x]}
max_log_files: -1
pivot_root: maybe
environment: {"A=B": x, GOOD: 8080, LIST: [1]}
`,
			errs: []string{
				`init.yaml:2: cgroups: "v3" is not allowed (use auto, v2, v1, off)`,
				`init.yaml:4: on_failure.nsm: "panic" is not allowed (use warn, fatal)`,
				`init.yaml:6: control.io_timeout: "-1s" must be longer than zero`,
				`init.yaml:8: control.permissions.unix.classes[1]: "root" is not a permission class (use read, manage or exec)`,
				`init.yaml:9: control.permissions.vsock.cids[0]: "x" is not a CID`,
				`init.yaml:10: max_log_files: "-1" is not a whole number from 0 to 1000`,
				`init.yaml:11: pivot_root: "maybe" is not true or false`,
				`init.yaml:12: environment.A=B: "A=B" contains '=', which ends a variable's name in the environment; use a name without '='`,
				`init.yaml:12: environment.LIST: a list is not a plain value`,
			},
			check: func(c *Init) string {
				d := DefaultInit()
				switch {
				case c.Cgroups != d.Cgroups || c.OnFailure != d.OnFailure || c.Control.IOTimeout != d.Control.IOTimeout:
					return "bad values must keep defaults"
				case !reflect.DeepEqual(c.Control.Permissions, d.Control.Permissions):
					return "bad permissions must keep defaults"
				case !reflect.DeepEqual(c.Environment, map[string]string{"GOOD": "8080"}):
					return "environment should keep the good entry"
				}
				return ""
			},
		},
		{
			name: "wrong node kinds",
			yaml: "control: 5\nservice_dir: [a]\nkernel_modules: /x.ko\nlog_dir:\n",
			errs: []string{
				`init.yaml:1: control: expected a mapping of keys, got "5"`,
				`init.yaml:2: service_dir: a list is not a path`,
				`init.yaml:3: kernel_modules: "/x.ko" is not a list of a module file path`,
				`init.yaml:4: log_dir: no value given`,
			},
		},
		{
			name: "top level not a mapping",
			yaml: "- a\n- b\n",
			errs: []string{`init.yaml:1: expected a mapping of keys, got a list; keeping defaults for top level`},
		},
		{
			name: "anchors and aliases",
			yaml: "x-dir: &d /data\nservice_dir: *d\n",
			errs: []string{`x-dir: unknown key`}, warns: 1,
			check: func(c *Init) string {
				if c.ServiceDir != "/data" {
					return "alias not followed"
				}
				return ""
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, errs := ParseInit("/etc/init.yaml", []byte(tt.yaml))
			if c == nil {
				t.Fatal("nil config")
			}
			if len(errs) != len(tt.errs) {
				t.Fatalf("got %d messages %q, want %d %q", len(errs), errs, len(tt.errs), tt.errs)
			}
			warns := 0
			for i, e := range errs {
				if !strings.Contains(e.Error(), tt.errs[i]) {
					t.Errorf("message %d = %q, want it to contain %q", i, e, tt.errs[i])
				}
				if !strings.HasPrefix(e.Error(), "/etc/init.yaml") {
					t.Errorf("message %q does not start with the file name", e)
				}
				if IsWarning(e) {
					warns++
				}
			}
			if warns != tt.warns {
				t.Errorf("got %d warnings, want %d", warns, tt.warns)
			}
			if tt.check != nil {
				if msg := tt.check(c); msg != "" {
					t.Errorf("%s: %+v", msg, c)
				}
			}
		})
	}
}

func TestWithRuntime(t *testing.T) {
	boot, _ := ParseInit("initramfs.yaml", []byte(`
service_dir: /boot-services
log_dir: /boot-log
vsock: {cid: 7, port: 7000}
nsm_driver_path: /nsm.ko
kernel_modules: [/a.ko]
pivot_root_dir: /newroot
cgroups: v1
on_failure: {pivot_root: fatal}
environment: {A: boot}
control: {vsock_enabled: true}
`))
	rt, _ := ParseInit("rootfs.yaml", []byte(`
service_dir: /srv
log_dir: /var/log/init
max_log_size: 8192
max_log_files: 2
log_ring_lines: 10
environment: {B: runtime}
control: {vsock_port: 1234}
vsock: {cid: 99}
pivot_root: false
nsm_driver_path: null
`))
	got := boot.WithRuntime(rt)
	tests := []struct {
		key       string
		got, want any
	}{
		{"service_dir", got.ServiceDir, "/srv"},
		{"log_dir", got.LogDir, "/var/log/init"},
		{"max_log_size", got.MaxLogSize, int64(8192)},
		{"max_log_files", got.MaxLogFiles, 2},
		{"log_ring_lines", got.LogRingLines, 10},
		{"environment", got.Environ(), []string{"B=runtime"}},
		{"control.vsock_port", got.Control.VsockPort, uint32(1234)},
		{"control.vsock_enabled", got.Control.VsockEnabled, false},
		{"vsock.cid", got.Vsock.CID, uint32(7)},
		{"vsock.port", got.Vsock.Port, uint32(7000)},
		{"pivot_root", got.PivotRoot, true},
		{"pivot_root_dir", got.PivotRootDir, "/newroot"},
		{"nsm_driver_path", got.NSMDriverPath, "/nsm.ko"},
		{"kernel_modules", got.KernelModules, []string{"/a.ko"}},
		{"cgroups", got.Cgroups, CgroupsV1},
		{"on_failure.pivot_root", got.OnFailure.PivotRoot, ActionFatal},
	}
	for _, tt := range tests {
		if !reflect.DeepEqual(tt.got, tt.want) {
			t.Errorf("%s = %v, want %v", tt.key, tt.got, tt.want)
		}
	}
	// The merge must not alias the inputs.
	got.Environment["C"] = "x"
	got.KernelModules[0] = "/changed.ko"
	if _, ok := rt.Environment["C"]; ok || boot.KernelModules[0] != "/a.ko" {
		t.Error("WithRuntime result shares maps or slices with its inputs")
	}
	if same := boot.WithRuntime(nil); !reflect.DeepEqual(same, boot) {
		t.Error("WithRuntime(nil) should equal the boot config")
	}
}

func TestLoadInitctl(t *testing.T) {
	tests := []struct {
		name      string
		yaml      string // "" = no file
		want      *Initctl
		transport string
		err       string
	}{
		{name: "missing file", want: DefaultInitctl(), transport: "unix"},
		{
			name:      "reference host example",
			yaml:      "protocol: vsock\nunix_socket_path: /run/init.sock\nvsock_cid: 16\nvsock_port: 9001\n",
			want:      &Initctl{Protocol: "vsock", UnixSocketPath: "/run/init.sock", VsockCID: 16, VsockPort: 9001},
			transport: "vsock",
		},
		{
			name:      "vsock through a hybrid socket",
			yaml:      "protocol: vsock\nvsock_uds_path: /tmp/vm.vsock\nvsock_cid: 16\n",
			want:      &Initctl{Protocol: "vsock", UnixSocketPath: "/run/init.sock", VsockCID: 16, VsockPort: 9001, VsockUDSPath: "/tmp/vm.vsock"},
			transport: "hybrid",
		},
		{
			name: "hybrid without path",
			yaml: "protocol: hybrid\n",
			err:  "initctl.yaml: vsock_uds_path: protocol \"hybrid\" needs vsock_uds_path",
		},
		{
			name: "bad protocol and port",
			yaml: "protocol: tcp\nvsock_port: -3\n",
			err:  "initctl.yaml:1: protocol: \"tcp\" is not allowed (use unix, vsock, hybrid)\n" + "", // first line
		},
		{
			name: "unknown key is a warning",
			yaml: "protocl: vsock\n",
			want: &Initctl{Protocol: "unix", UnixSocketPath: "/run/init.sock", VsockCID: 3, VsockPort: 9001,
				Warnings: []string{"initctl.yaml:1: protocl: unknown key, ignored"}},
			transport: "unix",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "initctl.yaml")
			if tt.yaml != "" {
				p = writeFile(t, "initctl.yaml", tt.yaml)
			}
			c, err := LoadInitctl(p)
			if c == nil {
				t.Fatal("nil config")
			}
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), strings.TrimSuffix(tt.err, "\n")) {
					t.Fatalf("error = %v, want it to contain %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if tt.want.Warnings != nil {
				for i := range tt.want.Warnings {
					tt.want.Warnings[i] = filepath.Join(filepath.Dir(p), tt.want.Warnings[i])
				}
			}
			if !reflect.DeepEqual(c, tt.want) {
				t.Errorf("got %+v, want %+v", c, tt.want)
			}
			if got := c.Transport(); got != tt.transport {
				t.Errorf("Transport() = %q, want %q", got, tt.transport)
			}
		})
	}
}

func FuzzParseInit(f *testing.F) {
	f.Add([]byte("control:\n  vsock_port: 1\n"))
	f.Add([]byte("environment: {A: [1]}\nx: &a *a\n"))
	f.Add([]byte("- 1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, errs := ParseInit("f.yaml", data)
		if c == nil {
			t.Fatal("nil config")
		}
		for _, e := range errs {
			if !strings.HasPrefix(e.Error(), "f.yaml") {
				t.Fatalf("message without file name: %q", e)
			}
		}
	})
}

// TestReferenceValues: values the reference accepts are accepted, with the
// same meaning; the one refused says why and what to use instead.
func TestReferenceValues(t *testing.T) {
	tests := []struct {
		yaml    string
		check   func(c *Init) bool
		wantErr string // "" = accepted without a message
	}{
		{yaml: "max_log_files: 0", check: func(c *Init) bool { return c.MaxLogFiles == 1 }},
		{yaml: "max_log_files: 1", check: func(c *Init) bool { return c.MaxLogFiles == 1 }},
		{yaml: "max_log_size: 1000", check: func(c *Init) bool { return c.MaxLogSize == 1000 }},
		{yaml: "max_log_size: 1", check: func(c *Init) bool { return c.MaxLogSize == 1 }},
		{yaml: "max_log_size: 0", check: func(c *Init) bool { return c.MaxLogSize == DefaultMaxLogSize },
			wantErr: "max_log_size: 0 would rotate the log at every line; use a size in bytes such as 1048576"},
		{yaml: "environment: {MY-VAR: a, 1X: b, my.var: c}", check: func(c *Init) bool {
			return reflect.DeepEqual(c.Environ(), []string{"1X=b", "MY-VAR=a", "my.var=c"})
		}},
		{yaml: `environment: {"": a, OK: b}`, check: func(c *Init) bool { return reflect.DeepEqual(c.Environ(), []string{"OK=b"}) },
			wantErr: "an empty name cannot be set"},
	}
	for _, tt := range tests {
		t.Run(tt.yaml, func(t *testing.T) {
			c, errs := ParseInit("init.yaml", []byte(tt.yaml+"\n"))
			switch {
			case tt.wantErr == "" && len(errs) > 0:
				t.Errorf("messages %q, want none", errs)
			case tt.wantErr != "" && (len(errs) != 1 || !strings.Contains(errs[0].Error(), tt.wantErr)):
				t.Errorf("messages %q, want one containing %q", errs, tt.wantErr)
			}
			if !tt.check(c) {
				t.Errorf("wrong result: max_log_files %d, max_log_size %d, environment %q", c.MaxLogFiles, c.MaxLogSize, c.Environ())
			}
		})
	}
}
