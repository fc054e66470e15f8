package boot

import (
	"context"
	"fmt"
	"io/fs"
	"net"
	"os"

	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"
)

// Ops is every side effect boot has. SystemOps does the real system calls;
// tests substitute a recorder to check order and failure handling.
// Errors keep the underlying errno reachable through errors.Is.
type Ops interface {
	// Mount is mount(2); data is the comma-separated option string.
	Mount(source, target, fstype string, flags uintptr, data string) error
	Mkdir(path string, perm fs.FileMode) error
	// Symlink creates link pointing at target.
	Symlink(target, link string) error
	// AttachStdio opens console and makes it file descriptors 0, 1 and 2.
	AttachStdio(console string) error
	// FinitModule loads the module file at path with finit_module(2) flags.
	FinitModule(path string, flags int) error
	Unlink(path string) error
	Stat(path string) (fs.FileInfo, error)
	ReadFile(path string) ([]byte, error)
	// ReadDir lists a directory.
	ReadDir(path string) ([]fs.DirEntry, error)
	Chdir(path string) error
	Chroot(path string) error
	// DialVsock connects to cid:port over AF_VSOCK.
	DialVsock(ctx context.Context, cid, port uint32) (net.Conn, error)
	// StartProcess starts path with argv (the simulated NSM device) and
	// returns its PID without waiting for it.
	StartProcess(path string, argv []string) (int, error)
}

// SystemOps returns the Ops that act on the running system.
func SystemOps() Ops { return systemOps{} }

type systemOps struct{}

func (systemOps) Mount(source, target, fstype string, flags uintptr, data string) error {
	if err := unix.Mount(source, target, fstype, flags, data); err != nil {
		return os.NewSyscallError("mount", err)
	}
	return nil
}

func (systemOps) Mkdir(path string, perm fs.FileMode) error { return os.Mkdir(path, perm) }

func (systemOps) Symlink(target, link string) error { return os.Symlink(target, link) }

func (systemOps) AttachStdio(console string) error {
	fd, err := unix.Open(console, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &fs.PathError{Op: "open", Path: console, Err: err}
	}
	for target := 0; target <= 2; target++ {
		if fd == target {
			// Already in place; only the close-on-exec flag must go so
			// that services inherit it.
			if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0); err != nil {
				return fmt.Errorf("clear close-on-exec on %s (fd %d): %w", console, fd, err)
			}
			continue
		}
		if err := unix.Dup3(fd, target, 0); err != nil {
			unix.Close(fd)
			return fmt.Errorf("dup %s onto fd %d: %w", console, target, err)
		}
	}
	if fd > 2 {
		unix.Close(fd)
	}
	return nil
}

func (systemOps) FinitModule(path string, flags int) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.FinitModule(int(f.Fd()), "", flags); err != nil {
		return &fs.PathError{Op: "finit_module", Path: path, Err: err}
	}
	return nil
}

func (systemOps) Unlink(path string) error { return os.Remove(path) }

func (systemOps) Stat(path string) (fs.FileInfo, error) { return os.Stat(path) }

func (systemOps) ReadFile(path string) ([]byte, error) { return os.ReadFile(path) }

func (systemOps) ReadDir(path string) ([]fs.DirEntry, error) { return os.ReadDir(path) }

func (systemOps) Chdir(path string) error { return os.Chdir(path) }

func (systemOps) Chroot(path string) error {
	if err := unix.Chroot(path); err != nil {
		return &fs.PathError{Op: "chroot", Path: path, Err: err}
	}
	return nil
}

func (systemOps) DialVsock(ctx context.Context, cid, port uint32) (net.Conn, error) {
	return vsock.DialContext(ctx, cid, port, nil)
}

func (systemOps) StartProcess(path string, argv []string) (int, error) {
	return startProcess(path, argv)
}
