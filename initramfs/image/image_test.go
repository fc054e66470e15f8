package image

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/u-root/mkuimage/cpio"
)

// inputs creates a set of host input files in dir and returns a spec using
// them. The mtimes are set to now so that two calls differ in everything but
// content and mode.
func inputs(t *testing.T, dir string) Spec {
	t.Helper()
	write := func(rel, content string, mode os.FileMode) string {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		os.Chtimes(p, now, now)
		return p
	}
	root := filepath.Join(dir, "root")
	write("root/bin/app", "#!/bin/sh\necho app\n", 0o755)
	write("root/etc/app.conf", "x=1\n", 0o600)
	if err := os.Symlink("app", filepath.Join(root, "bin", "app-link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(root, "tmp"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A FileMode's sticky bit is os.ModeSticky, not 0o1000.
	if err := os.Chmod(filepath.Join(root, "tmp"), 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	return Spec{
		Init:          write("init", "INIT", 0o700),
		Initctl:       write("initctl", "INITCTL", 0o755),
		Config:        write("init.yaml", "service_dir: /service\n", 0o600),
		InitctlConfig: write("initctl.yaml", "protocol: unix\n", 0o644),
		Services:      []string{write("svc/b.service", "[Service]\nExecStart=/bin/b\n", 0o644), write("svc/a.service", "[Service]\nExecStart=/bin/a\n", 0o644)},
		Modules:       []string{write("mods/vsock.ko.xz", "MOD", 0o644)},
		Files: []File{
			{Src: write("extra/tool", "TOOL", 0o750), Dst: "/usr/local/bin/tool"},
			{Data: []byte("hello\n"), Dst: "/etc/motd"},
		},
		Rootfs: root,
	}
}

func build(t *testing.T, s Spec) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := s.Write(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func readBack(t *testing.T, b []byte) map[string]cpio.Record {
	t.Helper()
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(b)))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]cpio.Record{}
	var last string
	for _, r := range recs {
		if r.Name == cpio.Trailer {
			continue
		}
		if r.Name <= last {
			t.Errorf("record %q after %q: records are not sorted", r.Name, last)
		}
		last = r.Name
		m[r.Name] = r
	}
	return m
}

func TestImageContents(t *testing.T) {
	s := inputs(t, t.TempDir())
	m := readBack(t, build(t, s))
	tests := []struct {
		name    string
		mode    uint64
		content string // checked for regular files and symlinks
	}{
		{"init", cpio.S_IFREG | 0o755, "INIT"},
		{"usr/bin/initctl", cpio.S_IFREG | 0o755, "INITCTL"},
		{"etc/init.yaml", cpio.S_IFREG | 0o644, "service_dir: /service\n"},
		{"etc/initctl.yaml", cpio.S_IFREG | 0o644, "protocol: unix\n"},
		{"service/a.service", cpio.S_IFREG | 0o644, "[Service]\nExecStart=/bin/a\n"},
		{"service/b.service", cpio.S_IFREG | 0o644, "[Service]\nExecStart=/bin/b\n"},
		{"lib/modules/vsock.ko.xz", cpio.S_IFREG | 0o644, "MOD"},
		{"usr/local/bin/tool", cpio.S_IFREG | 0o750, "TOOL"},
		{"etc/motd", cpio.S_IFREG | 0o644, "hello\n"},
		{"dev/console", cpio.S_IFCHR | 0o600, ""},
		{"rootfs", cpio.S_IFDIR | 0o755, ""},
		{"rootfs/bin/app", cpio.S_IFREG | 0o755, "#!/bin/sh\necho app\n"},
		{"rootfs/bin/app-link", cpio.S_IFLNK | 0o777, "app"},
		{"rootfs/etc/app.conf", cpio.S_IFREG | 0o600, "x=1\n"},
		{"rootfs/tmp", cpio.S_IFDIR | 0o1777, ""},
		// Implicit parents and standard directories are 0755, never 0777.
		{"usr", cpio.S_IFDIR | 0o755, ""},
		{"usr/local/bin", cpio.S_IFDIR | 0o755, ""},
		{"lib/modules", cpio.S_IFDIR | 0o755, ""},
		{"proc", cpio.S_IFDIR | 0o755, ""},
		{"sys", cpio.S_IFDIR | 0o755, ""},
		{"run", cpio.S_IFDIR | 0o755, ""},
		{"log", cpio.S_IFDIR | 0o755, ""},
	}
	for _, tc := range tests {
		r, ok := m[tc.name]
		if !ok {
			t.Errorf("%s: missing from the image", tc.name)
			continue
		}
		if r.Mode != tc.mode {
			t.Errorf("%s: mode %#o, want %#o", tc.name, r.Mode, tc.mode)
		}
		if r.UID != 0 || r.GID != 0 || r.MTime != 0 {
			t.Errorf("%s: uid %d gid %d mtime %d, want all 0", tc.name, r.UID, r.GID, r.MTime)
		}
		if tc.content != "" {
			b, err := io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != tc.content {
				t.Errorf("%s: content %q, want %q", tc.name, b, tc.content)
			}
		}
	}
	if r := m["dev/console"]; r.Rmajor != 5 || r.Rminor != 1 {
		t.Errorf("dev/console: device %d:%d, want 5:1", r.Rmajor, r.Rminor)
	}
	for name, r := range m {
		if r.Mode&cpio.S_IFMT == cpio.S_IFDIR && r.Mode&0o1777 == 0o777 {
			t.Errorf("%s: directory mode %#o is world-writable", name, r.Mode)
		}
	}
}

// TestReproducible builds the same inputs twice, from copies with different
// mtimes, in different directories, and expects identical bytes.
func TestReproducible(t *testing.T) {
	a := build(t, inputs(t, t.TempDir()))
	s2 := inputs(t, t.TempDir())
	past := time.Unix(1e9, 0)
	for _, p := range append([]string{s2.Init, s2.Config}, s2.Services...) {
		os.Chtimes(p, past, past)
	}
	b := build(t, s2)
	if !bytes.Equal(a, b) {
		t.Fatalf("two builds of the same inputs differ (%d vs %d bytes)", len(a), len(b))
	}
	// The check above must be able to fail: a changed byte of content must
	// change the image.
	if err := os.WriteFile(s2.Config, []byte("service_dir: /servicf\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if c := build(t, s2); bytes.Equal(a, c) {
		t.Fatal("changing init.yaml did not change the image")
	}
}

func TestErrorsNameTheInput(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "nope")
	tests := []struct {
		name   string
		modify func(*Spec)
		want   []string
	}{
		{"no init", func(s *Spec) { s.Init = "" }, []string{"no init binary", "--init"}},
		{"missing init", func(s *Spec) { s.Init = missing }, []string{"--init " + missing, "does not exist"}},
		{"missing config", func(s *Spec) { s.Config = missing }, []string{"--config " + missing}},
		{"missing service", func(s *Spec) { s.Services = append(s.Services, missing+".service") }, []string{"--service " + missing + ".service", "does not exist"}},
		{"service name", func(s *Spec) { s.Services = []string{s.Config} }, []string{"--service ", "init.yaml: name must end in .service"}},
		{"missing module", func(s *Spec) { s.Modules = []string{missing + ".ko"} }, []string{"--module " + missing + ".ko"}},
		{"missing file", func(s *Spec) { s.Files = []File{{Src: missing, Dst: "/x"}} }, []string{"--file " + missing + ":/x"}},
		{"relative dst", func(s *Spec) { s.Files = []File{{Src: s.Init, Dst: "x"}} }, []string{"destination must be absolute"}},
		{"directory as file", func(s *Spec) { s.Initctl = dir }, []string{"--initctl " + dir, "not a regular file"}},
		{"missing rootfs", func(s *Spec) { s.Rootfs = missing }, []string{"--rootfs " + missing}},
		{"duplicate", func(s *Spec) { s.Files = []File{{Src: s.Init, Dst: "/etc/init.yaml"}} }, []string{"/etc/init.yaml is given twice", "--config", "--file"}},
		{"file over dir", func(s *Spec) { s.Files = []File{{Src: s.Init, Dst: "/usr/bin"}} }, []string{"needs /usr/bin to be a directory"}},
		{"dynamic init", func(s *Spec) { s.Init = "/bin/true" }, []string{"--init /bin/true", "dynamically linked", "CGO_ENABLED=0"}},
		{"dynamic initctl", func(s *Spec) { s.Initctl = "/bin/true" }, []string{"--initctl /bin/true", "dynamically linked"}},
		{"two missing", func(s *Spec) { s.Init = missing; s.Config = missing + "2" }, []string{"--init " + missing, "--config " + missing + "2"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := inputs(t, t.TempDir())
			tc.modify(&s)
			_, err := s.Records()
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestParseFile(t *testing.T) {
	tests := []struct {
		arg      string
		src, dst string
		bad      bool
	}{
		{"a:/b", "a", "/b", false},
		{"/x/y:/etc/z", "/x/y", "/etc/z", false},
		{"c:d:/e", "c:d", "/e", false},
		{"a:b", "", "", true},
		{":/b", "", "", true},
		{"plain", "", "", true},
	}
	for _, tc := range tests {
		f, err := ParseFile(tc.arg)
		if (err != nil) != tc.bad {
			t.Errorf("ParseFile(%q) error %v, want error %v", tc.arg, err, tc.bad)
			continue
		}
		if !tc.bad && (f.Src != tc.src || f.Dst != tc.dst) {
			t.Errorf("ParseFile(%q) = %q:%q, want %q:%q", tc.arg, f.Src, f.Dst, tc.src, tc.dst)
		}
	}
}

// TestGNUCpioReads checks the archive with an independent reader: GNU cpio.
func TestGNUCpioReads(t *testing.T) {
	gnu, err := exec.LookPath("cpio")
	if err != nil {
		t.Skip("GNU cpio not installed (ci/install-deps.sh installs it)")
	}
	out := filepath.Join(t.TempDir(), "out.cpio")
	if err := inputs(t, t.TempDir()).WriteFile(out); err != nil {
		t.Fatal(err)
	}
	dest := t.TempDir()
	cmd := exec.Command(gnu, "-idm", "--quiet", "--no-absolute-filenames")
	cmd.Dir = dest
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd.Stdin = f
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -i: %v: %s", err, b)
	}
	tests := []struct {
		path    string
		content string
	}{
		{"init", "INIT"},
		{"service/a.service", "[Service]\nExecStart=/bin/a\n"},
		{"rootfs/etc/app.conf", "x=1\n"},
	}
	for _, tc := range tests {
		b, err := os.ReadFile(filepath.Join(dest, tc.path))
		if err != nil || string(b) != tc.content {
			t.Errorf("%s after GNU cpio extraction: %q, %v; want %q", tc.path, b, err, tc.content)
		}
	}
	if l, err := os.Readlink(filepath.Join(dest, "rootfs/bin/app-link")); err != nil || l != "app" {
		t.Errorf("symlink after extraction: %q, %v", l, err)
	}
}

func TestWriteFileLeavesNothingOnError(t *testing.T) {
	dir := t.TempDir()
	s := Spec{Init: filepath.Join(dir, "missing")}
	out := filepath.Join(dir, "out.cpio")
	if err := s.WriteFile(out); err == nil {
		t.Fatal("no error for a missing init")
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 0 {
		t.Errorf("files left behind: %v", ents)
	}
}
