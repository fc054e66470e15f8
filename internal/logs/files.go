package logs

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// The log directory is opened once and every file in it is reached relative
// to that descriptor without following symbolic links, so that whoever can
// write the directory (or a service that names a file there) cannot make
// init, as root, append to, read or truncate a file elsewhere.

// openDir opens dir, creating it 0755 if missing, and refuses one that a
// user other than root (or init's own user) could write: such a user could
// swap the log files for links or FIFOs between two of init's calls.
func openDir(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("cannot create log directory %s (set log_dir in init.yaml to a writable place): %w", dir, err)
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("cannot open log directory %s: %w", dir, err)
	}
	d := os.NewFile(uintptr(fd), dir)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		d.Close()
		return nil, fmt.Errorf("cannot stat log directory %s: %w", dir, err)
	}
	if err := checkDirOwner(dir, st.Uid, st.Mode); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// checkDirOwner refuses a log directory that a non-root user other than
// init's own could write.
func checkDirOwner(dir string, uid, mode uint32) error {
	euid := uint32(os.Geteuid())
	if uid != 0 && uid != euid {
		return fmt.Errorf("log directory %s is owned by uid %d, who could replace init's log files with links; make it owned by root (chown root %s) or set log_dir to another directory", dir, uid, dir)
	}
	if mode&0o022 != 0 && !(mode&unix.S_ISVTX != 0 && uid == 0) {
		return fmt.Errorf("log directory %s is writable by group or others (mode %04o), who could replace init's log files with links; chmod go-w %s, or make it root-owned and sticky (chmod +t), or set log_dir to another directory", dir, mode&0o7777, dir)
	}
	return nil
}

// openIn opens name in dir without following a link in its last component
// and without blocking on a FIFO, and accepts only a regular file owned by
// init's user.
func openIn(dir *os.File, name string, flag int, perm uint32) (*os.File, error) {
	path := dir.Name() + "/" + name
	fd, err := unix.Openat(int(dir.Fd()), name, flag|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, perm)
	if err == unix.ENXIO {
		// O_WRONLY|O_NONBLOCK on a FIFO without a reader.
		return nil, fmt.Errorf("log file %s is not a regular file (a FIFO); remove it: %w", path, err)
	}
	if err == unix.ELOOP {
		return nil, fmt.Errorf("log file %s is a symbolic link; init does not follow links in the log directory, remove it: %w", path, err)
	}
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, fmt.Errorf("log file %s is not a regular file (mode %o); remove it", path, st.Mode)
	}
	if st.Uid != uint32(os.Geteuid()) {
		unix.Close(fd)
		return nil, fmt.Errorf("log file %s is owned by uid %d, not by init; remove it", path, st.Uid)
	}
	// Regular files ignore O_NONBLOCK, but clear it so that nothing later
	// has to know it was set.
	if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); err == nil {
		unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl&^unix.O_NONBLOCK)
	}
	return os.NewFile(uintptr(fd), path), nil
}

// renameIn renames within dir; rename(2) never follows a link.
func renameIn(dir *os.File, from, to string) error {
	if err := unix.Renameat(int(dir.Fd()), from, int(dir.Fd()), to); err != nil {
		return &os.LinkError{Op: "rename", Old: dir.Name() + "/" + from, New: dir.Name() + "/" + to, Err: err}
	}
	return nil
}

// removeIn removes name from dir (the link itself, if it is one).
func removeIn(dir *os.File, name string) error {
	if err := unix.Unlinkat(int(dir.Fd()), name, 0); err != nil {
		return &os.PathError{Op: "remove", Path: dir.Name() + "/" + name, Err: err}
	}
	return nil
}
