package boot

import (
	"context"
	"fmt"
	"io/fs"
	"net"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// recOps records every call as a short string ("mount proc /proc",
// "finit /nsm.ko", "chroot .") and answers from its tables. It keeps a tiny
// model of the filesystem so that unlinked files disappear.
type recOps struct {
	mu     sync.Mutex
	calls  []string
	mounts []mountCall
	finits map[string]int // path -> flags of the last finit

	errs   map[string]error       // call string -> error to return
	files  map[string][]byte      // ReadFile contents; Stat sees them as regular files
	modes  map[string]fs.FileMode // Stat modes of other existing paths
	panics map[string]bool        // call strings that panic
	dial   func(ctx context.Context) (net.Conn, error)
	noNSM  bool // StartProcess does not make /dev/nsm appear
}

type mountCall struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
}

func newRecOps() *recOps {
	return &recOps{
		finits: map[string]int{},
		errs:   map[string]error{},
		files:  map[string][]byte{},
		modes:  map[string]fs.FileMode{},
		panics: map[string]bool{},
	}
}

func (r *recOps) record(call string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, call)
	if r.panics[call] {
		panic("injected panic in " + call)
	}
	return r.errs[call]
}

// index returns the position of the n-th (0-based) occurrence of call, or -1.
func (r *recOps) index(call string, n int) int {
	for i, c := range r.calls {
		if c == call {
			if n == 0 {
				return i
			}
			n--
		}
	}
	return -1
}

func (r *recOps) count(call string) int {
	k := 0
	for _, c := range r.calls {
		if c == call {
			k++
		}
	}
	return k
}

func (r *recOps) Mount(source, target, fstype string, flags uintptr, data string) error {
	kind := fstype
	switch {
	case flags&unix.MS_BIND != 0:
		kind = "bind"
	case flags&unix.MS_MOVE != 0:
		kind = "move"
	}
	r.mu.Lock()
	r.mounts = append(r.mounts, mountCall{source, target, fstype, flags, data})
	r.mu.Unlock()
	return r.record("mount " + kind + " " + target)
}

func (r *recOps) Mkdir(path string, perm fs.FileMode) error { return r.record("mkdir " + path) }
func (r *recOps) Symlink(target, link string) error         { return r.record("symlink " + link) }
func (r *recOps) AttachStdio(console string) error          { return r.record("attach " + console) }
func (r *recOps) Chdir(path string) error                   { return r.record("chdir " + path) }
func (r *recOps) Chroot(path string) error                  { return r.record("chroot " + path) }

func (r *recOps) FinitModule(path string, flags int) error {
	r.mu.Lock()
	r.finits[path] = flags
	r.mu.Unlock()
	return r.record("finit " + path)
}

func (r *recOps) Unlink(path string) error {
	if err := r.record("unlink " + path); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.files[path]; !ok {
		if _, ok := r.modes[path]; !ok {
			return &fs.PathError{Op: "remove", Path: path, Err: fs.ErrNotExist}
		}
	}
	delete(r.files, path)
	delete(r.modes, path)
	return nil
}

func (r *recOps) Stat(path string) (fs.FileInfo, error) {
	// Stat is polled (for /dev/nsm); record it only once per path to keep
	// the call list readable.
	r.mu.Lock()
	seen := false
	for _, c := range r.calls {
		if c == "stat "+path {
			seen = true
		}
	}
	r.mu.Unlock()
	if !seen {
		if err := r.record("stat " + path); err != nil {
			return nil, err
		}
	} else if err := r.errs["stat "+path]; err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if data, ok := r.files[path]; ok {
		return fakeInfo{name: path, size: int64(len(data))}, nil
	}
	if m, ok := r.modes[path]; ok {
		return fakeInfo{name: path, mode: m}, nil
	}
	return nil, &fs.PathError{Op: "stat", Path: path, Err: fs.ErrNotExist}
}

func (r *recOps) ReadFile(path string) ([]byte, error) {
	if err := r.record("read " + path); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if data, ok := r.files[path]; ok {
		return data, nil
	}
	return nil, &fs.PathError{Op: "open", Path: path, Err: fs.ErrNotExist}
}

// ReadDir is not recorded: it only decides whether waiting for /dev/nsm is
// worth it, and reporting "no such directory" keeps the waiting behaviour.
func (r *recOps) ReadDir(path string) ([]fs.DirEntry, error) {
	return nil, &fs.PathError{Op: "open", Path: path, Err: fs.ErrNotExist}
}

func (r *recOps) DialVsock(ctx context.Context, cid, port uint32) (net.Conn, error) {
	call := fmt.Sprintf("dial %d:%d", cid, port)
	if err := r.record(call); err != nil {
		return nil, err
	}
	if r.dial == nil {
		return nil, fmt.Errorf("%s: no dialer in this test", call)
	}
	return r.dial(ctx)
}

// callsWithPrefix lists the recorded calls starting with prefix, in order.
func (r *recOps) callsWithPrefix(prefix string) []string {
	var out []string
	for _, c := range r.calls {
		if strings.HasPrefix(c, prefix) {
			out = append(out, c)
		}
	}
	return out
}

type fakeInfo struct {
	name string
	size int64
	mode fs.FileMode
}

func (f fakeInfo) Name() string       { return f.name }
func (f fakeInfo) Size() int64        { return f.size }
func (f fakeInfo) Mode() fs.FileMode  { return f.mode }
func (f fakeInfo) ModTime() time.Time { return time.Time{} }
func (f fakeInfo) IsDir() bool        { return f.mode.IsDir() }
func (f fakeInfo) Sys() any           { return nil }

// echoDialer returns a dialer whose peer answers every heartbeat with reply.
func echoDialer(reply byte) func(ctx context.Context) (net.Conn, error) {
	return func(ctx context.Context) (net.Conn, error) {
		enclave, host := net.Pipe()
		go func() {
			defer host.Close()
			var b [1]byte
			if _, err := host.Read(b[:]); err == nil {
				host.Write([]byte{reply})
			}
		}()
		return enclave, nil
	}
}

// StartProcess records "start ARGV..." and, as the simulated NSM device
// would, makes /dev/nsm appear with mode 0666.
func (r *recOps) StartProcess(path string, argv []string) (int, error) {
	if err := r.record("start " + path + " " + strings.Join(argv, " ")); err != nil {
		return 0, err
	}
	r.mu.Lock()
	if !r.noNSM {
		r.modes[NSMDevice] = fs.ModeDevice | fs.ModeCharDevice | 0o666
	}
	r.mu.Unlock()
	return 42, nil
}
