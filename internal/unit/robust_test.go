package unit

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nitroinit/nitroinit/internal/wait"
)

// TestLoadDirSkipsWhatIsNotAFile: no directory entry blocks LoadDir; each
// is reported by name and skipped, and the good file beside them loads
// (issue 10 item 3).
func TestLoadDirSkipsWhatIsNotAFile(t *testing.T) {
	dir := t.TempDir()
	p := func(n string) string { return filepath.Join(dir, n) }
	if err := os.WriteFile(p("good.service"), []byte("ExecStart = \"/bin/true\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(p("fifo.service"), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", p("sock.service"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for link, target := range map[string]string{
		"dev.service":      "/dev/zero",
		"tty.service":      "/dev/tty",
		"dangling.service": p("nowhere"),
		"loop.service":     p("loop.service"),
		"dirlink.service":  dir,
	} {
		if err := os.Symlink(target, p(link)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(p("subdir.service"), 0o755); err != nil {
		t.Fatal(err)
	}
	huge, err := os.Create(p("huge.service"))
	if err != nil {
		t.Fatal(err)
	}
	huge.Truncate(1 << 40) // sparse: costs no disk
	huge.Close()

	type result struct {
		entries []*Entry
		err     error
	}
	done := make(chan result, 1)
	go func() {
		e, err := LoadDir(dir)
		done <- result{e, err}
	}()
	var res result
	wait.For(t, "LoadDir not to block on a directory entry", wait.Receive(done, &res))
	if res.err != nil {
		t.Fatal(res.err)
	}
	want := map[string]string{
		"fifo": "FIFO", "sock": "socket", "dev": "device", "tty": "device", "subdir": "directory", "dirlink": "directory",
		"dangling": "no such file", "loop": "too many levels of symbolic links", "huge": "too large",
	}
	for _, e := range res.entries {
		if e.Name == "good" {
			if e.Err != nil || e.Unit == nil {
				t.Errorf("good: %v", e.Err)
			}
			continue
		}
		w, ok := want[e.Name]
		if !ok {
			t.Errorf("unexpected entry %s", e.Name)
			continue
		}
		delete(want, e.Name)
		if e.Err == nil || !strings.Contains(e.Err.Error(), w) || !strings.Contains(e.Err.Error(), e.Path) {
			t.Errorf("%s: error %v, want one naming %s and saying %q", e.Name, e.Err, e.Path, w)
		}
	}
	for n := range want {
		t.Errorf("no entry for %s", n)
	}
}

func TestUnreadableServiceFile(t *testing.T) {
	// As root the file is readable whatever its mode, so the test re-runs
	// itself as the nobody user (the os/exec helper-process pattern) and the
	// child does the load.
	if path := os.Getenv("UNIT_TEST_UNREADABLE"); path != "" {
		if _, err := Load(path); err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "permission denied") {
			t.Fatalf("unreadable file: %v", err)
		}
		return
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "secret.service")
	if err := os.WriteFile(path, []byte("ExecStart = \"/bin/true\"\n"), 0); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() != 0 {
		if _, err := Load(path); err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "permission denied") {
			t.Fatalf("unreadable file: %v", err)
		}
		return
	}
	// Let nobody reach the file (not read it) through the temporary dirs.
	for d := dir; d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The test binary sits in a directory only root may enter: copy it.
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "unit.test")
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^TestUnreadableServiceFile$", "-test.count=1")
	cmd.Env = append(os.Environ(), "UNIT_TEST_UNREADABLE="+path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("as uid 65534: %v\n%s", err, out)
	}
}

func TestOneshotAndBareEnvironment(t *testing.T) {
	for _, tc := range []struct {
		name, toml string
		check      func(*Unit) bool
		err        string
	}{
		{"oneshot defaults", "ExecStart = \"/x\"\nType = \"oneshot\"\n",
			func(u *Unit) bool { return u.Type == TypeOneshot && u.TimeoutStartSec == 0 && !u.RemainAfterExit }, ""},
		{"oneshot with timeout and remain", "ExecStart = \"/x\"\nType = \"oneshot\"\nTimeoutStartSec = 9\nRemainAfterExit = true\n",
			func(u *Unit) bool { return u.TimeoutStartSec == 9*time.Second && u.RemainAfterExit }, ""},
		{"oneshot always", "ExecStart = \"/x\"\nType = \"oneshot\"\nRestart = \"always\"\n", nil, `"always" with Type = "oneshot"`},
		{"RemainAfterExit not bool", "ExecStart = \"/x\"\nRemainAfterExit = 1\n", nil, "RemainAfterExit: 1 is not true or false"},
		{"bare names", "ExecStart = \"/x\"\nEnvironment = [\"JUSTNAME\", \"A=b\"]\n",
			func(u *Unit) bool {
				return len(u.Environment) == 2 && len(u.Warnings) == 1 && strings.Contains(u.Warnings[0], `web.service:2: Environment: item 1: "JUSTNAME" has no value`)
			}, ""},
		{"bare name with a dash", "ExecStart = \"/x\"\nEnvironment = [\"NOT-A-NAME\"]\n", nil, `"NOT-A-NAME" is not NAME=value`},
	} {
		u, err := Parse("/service/web.service", []byte(tc.toml))
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%s: error %v, want %q", tc.name, err, tc.err)
		case tc.err == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.check != nil && !tc.check(u):
			t.Errorf("%s: %+v", tc.name, u)
		}
	}
}
