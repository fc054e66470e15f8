package oci

import (
	"archive/tar"
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nitroinit/nitroinit/internal/oci/ocitest"
)

func TestParseRef(t *testing.T) {
	dir := t.TempDir()
	colon := filepath.Join(dir, "a:b")
	if err := os.Mkdir(colon, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		in   string
		want Ref
		err  string
	}{
		{in: "oci:/x/y", want: Ref{OCILayout, "/x/y", ""}},
		{in: "oci:/x/y:app", want: Ref{OCILayout, "/x/y", "app"}},
		{in: "oci:" + colon, want: Ref{OCILayout, colon, ""}},
		{in: "docker-archive:/x.tar:localhost/app:v1", want: Ref{DockerArchive, "/x.tar", "localhost/app:v1"}},
		{in: "oci-archive:x.tar", want: Ref{OCIArchive, "x.tar", ""}},
		{in: "docker://alpine", err: `transport "docker" is not supported`},
		{in: "alpine", err: "want TRANSPORT:PATH"},
		{in: "oci:", err: "want TRANSPORT:PATH"},
		{in: "oci::tag", err: "no path"},
	} {
		got, err := ParseRef(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("ParseRef(%q) = %v, %v; want error with %q", c.in, got, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("ParseRef(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
	}
}

func TestReadFlatRefusesDanglingHardLink(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "a", Typeflag: tar.TypeLink, Linkname: "missing"})
	tw.Close()
	if _, err := readFlat(&buf); err == nil || !strings.Contains(err.Error(), "a is a hard link to missing") {
		t.Errorf("readFlat = %v", err)
	}
}

var (
	fixtureOnce sync.Once
	fixtureDir  string
)

// fixture builds ocitest's image once per test binary.
func fixture(t *testing.T) string {
	t.Helper()
	ocitest.NeedTools(t)
	fixtureOnce.Do(func() {
		dir, err := os.MkdirTemp("", "oci-fixture-")
		if err != nil {
			t.Fatal(err)
		}
		fixtureDir = dir
		ocitest.Build(t, dir, "")
	})
	if _, err := os.Stat(filepath.Join(fixtureDir, "bundle")); err != nil {
		t.Fatalf("the test image was not built: %v", err)
	}
	return fixtureDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if fixtureDir != "" {
		os.RemoveAll(fixtureDir)
	}
	os.Exit(code)
}

// want is one file as the comparison sees it.
type want struct {
	Type     byte
	Mode     int64
	UID, GID int
	Data     string
	Link     string
	Dev      [2]int64
}

// walkReference reads umoci's unpacked rootfs. Hard links are reported as
// regular files; groups of names sharing an inode are returned apart.
func walkReference(t *testing.T, root string) (map[string]want, map[uint64][]string) {
	files := map[string]want{}
	inodes := map[uint64][]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		w := want{Mode: int64(st.Mode & 0o7777), UID: int(st.Uid), GID: int(st.Gid)}
		switch st.Mode & syscall.S_IFMT {
		case syscall.S_IFREG:
			w.Type = tar.TypeReg
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			w.Data = string(b)
			if st.Nlink > 1 {
				inodes[st.Ino] = append(inodes[st.Ino], rel)
			}
		case syscall.S_IFDIR:
			w.Type = tar.TypeDir
		case syscall.S_IFLNK:
			w.Type = tar.TypeSymlink
			w.Link, _ = os.Readlink(p)
		case syscall.S_IFCHR, syscall.S_IFBLK:
			w.Type = tar.TypeChar
			if st.Mode&syscall.S_IFMT == syscall.S_IFBLK {
				w.Type = tar.TypeBlock
			}
			w.Dev = [2]int64{int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev))}
		case syscall.S_IFIFO:
			w.Type = tar.TypeFifo
		}
		files[rel] = w
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files, inodes
}

func TestImagesAgainstUmociUnpack(t *testing.T) {
	dir := fixture(t)
	ref, hardGroups := walkReference(t, filepath.Join(dir, "bundle", "rootfs"))
	if len(hardGroups) != 1 {
		t.Fatalf("the reference has %d hard-link groups, want 1 (bin/app, bin/app-hard)", len(hardGroups))
	}
	for _, c := range []struct {
		ref           string
		name, version string
	}{
		{"oci:" + dir + "/oci:app", "oci", "app"},
		{"oci:" + dir + "/oci", "oci", "app"},
		{"oci-archive:" + dir + "/app-oci.tar:app", "app-oci.tar", "app"},
		{"docker-archive:" + dir + "/app-docker.tar", "localhost/app", "v1"},
		{"docker-archive:" + dir + "/app-docker.tar:localhost/app:v1", "localhost/app", "v1"},
	} {
		t.Run(strings.SplitN(c.ref, ":", 2)[0], func(t *testing.T) {
			r, err := ParseRef(c.ref)
			if err != nil {
				t.Fatal(err)
			}
			im, err := Open(r)
			if err != nil {
				t.Fatal(err)
			}
			defer im.Close()
			if im.Name != c.name || im.Version != c.version {
				t.Errorf("name, version = %q, %q; want %q, %q", im.Name, im.Version, c.name, c.version)
			}
			if got, w := im.Command(), []string{"/bin/app", "argv", "first arg", "two words"}; !reflect.DeepEqual(got, w) {
				t.Errorf("Command() = %q, want %q", got, w)
			}
			if got := im.Env(); !reflect.DeepEqual(got, []string{"FOO=bar", "GREETING=hello world"}) {
				t.Errorf("Env() = %q", got)
			}
			if im.WorkingDir() != "/data" {
				t.Errorf("WorkingDir() = %q", im.WorkingDir())
			}
			entries, err := im.Rootfs()
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]want{}
			byName := map[string]Entry{}
			for _, e := range entries {
				byName[e.Name] = e
			}
			for _, e := range entries {
				w := want{Type: e.Typeflag, Mode: e.Mode, UID: e.UID, GID: e.GID, Data: string(e.Data), Dev: [2]int64{e.Devmajor, e.Devminor}}
				switch e.Typeflag {
				case tar.TypeSymlink:
					w.Link = e.Linkname
				case tar.TypeLink:
					// umoci unpacks a hard link as a second name for the
					// target's inode: compare it as that file.
					target := byName[e.Linkname]
					w.Type, w.Data = tar.TypeReg, string(target.Data)
				}
				got[e.Name] = w
			}
			for name, w := range ref {
				g, ok := got[name]
				if !ok {
					t.Errorf("%s: in umoci's rootfs, not in ours", name)
					continue
				}
				if g != w {
					t.Errorf("%s: ours %+v, umoci's %+v", name, g, w)
				}
			}
			for name := range got {
				if _, ok := ref[name]; !ok {
					t.Errorf("%s: in ours, not in umoci's rootfs", name)
				}
			}
			for _, group := range hardGroups {
				linked := 0
				for _, n := range group {
					if byName[n].Typeflag == tar.TypeLink {
						linked++
					}
				}
				if linked != len(group)-1 {
					t.Errorf("hard-link group %v: %d links, want %d", group, linked, len(group)-1)
				}
			}
		})
	}
}

func TestOpenErrors(t *testing.T) {
	dir := fixture(t)
	for _, c := range []struct{ ref, want string }{
		{"oci:" + dir + "/oci:nope", `no image tagged "nope"`},
		{"oci:" + dir + "/missing", "reading"},
		{"docker-archive:" + dir + "/nope.tar", "no such file"},
		{"oci-archive:" + dir + "/app-docker.tar", "oci-archive"},
	} {
		r, err := ParseRef(c.ref)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Open(r); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Open(%s) = %v, want an error with %q", c.ref, err, c.want)
		}
	}
}
