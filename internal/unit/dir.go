package unit

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"

	"golang.org/x/sys/unix"
)

// maxFileSize bounds a service file; anything larger is surely not one and
// must not make PID 1 allocate without limit.
const maxFileSize = 1 << 20

// Entry is one service file found in the service directory.
type Entry struct {
	Name     string // service name
	Path     string // file path
	Disabled bool   // the file ends in .service.disabled
	Unit     *Unit  // nil when Err is set
	Err      error  // why the file cannot be used
}

// ErrNotFound is wrapped by SetEnabled when there is no such service.
var ErrNotFound = errors.New("service not found")

// LoadDir reads every *.service and *.service.disabled file in dir, sorted by
// name (the enabled file first when both exist). A file that cannot be used
// gives an Entry with Err set and does not stop the others; when a name has
// both files, the disabled one gets an Err saying so and the enabled one is
// used. A missing or unreadable directory gives an empty list and an error.
func LoadDir(dir string) ([]*Entry, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("service directory %s does not exist: no services to run (create it or set service_dir in init.yaml): %w", dir, err)
		}
		return nil, fmt.Errorf("cannot read service directory %s: %w", dir, err)
	}
	var out []*Entry
	enabled := map[string]bool{}
	for _, de := range des {
		name, disabled, ok := NameFromPath(de.Name())
		if !ok {
			continue
		}
		e := &Entry{Name: name, Path: filepath.Join(dir, de.Name()), Disabled: disabled}
		out = append(out, e)
		if !disabled {
			enabled[name] = true
		}
		if err := ValidateName(name); err != nil {
			e.Err = fmt.Errorf("%s: %w", e.Path, err)
			continue
		}
		data, err := readServiceFile(e.Path)
		if err != nil {
			e.Err = err
			continue
		}
		e.Unit, e.Err = Parse(e.Path, data)
	}
	for _, e := range out {
		if e.Disabled && enabled[e.Name] {
			e.Unit = nil
			e.Err = fmt.Errorf("%s: both %s%s and %s%s exist; the enabled file is used, remove one of them",
				e.Path, e.Name, Suffix, e.Name, DisabledSuffix)
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return !out[i].Disabled && out[j].Disabled
	})
	return out, nil
}

// readServiceFile reads a regular file of bounded size. Nothing a directory
// entry can be may block it: the entry is checked before it is opened (a
// FIFO would block open until a writer came, a device could do anything),
// and it is opened without blocking and checked again, in case it was
// swapped in between.
func readServiceFile(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("cannot use service file: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, notRegular(path, st.Mode())
	}
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, fmt.Errorf("cannot open service file: %w", err)
	}
	defer f.Close()
	st, err = f.Stat()
	if err != nil {
		return nil, fmt.Errorf("cannot stat service file: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, notRegular(path, st.Mode())
	}
	if st.Size() > maxFileSize {
		return nil, fmt.Errorf("%s: %d bytes is too large for a service file (limit %d)", path, st.Size(), maxFileSize)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("cannot read service file: %w", err)
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("%s: grew beyond %d bytes while being read", path, maxFileSize)
	}
	return data, nil
}

// notRegular explains why path, of mode m, is skipped.
func notRegular(path string, m fs.FileMode) error {
	what := "not a regular file"
	switch {
	case m.IsDir():
		what = "a directory"
	case m&fs.ModeNamedPipe != 0:
		what = "a FIFO (named pipe)"
	case m&fs.ModeSocket != 0:
		what = "a socket"
	case m&fs.ModeDevice != 0:
		what = "a device"
	}
	return fmt.Errorf("%s is %s, not a regular file; skipped (replace it with a TOML file)", path, what)
}

// Load reads and parses one service file.
func Load(path string) (*Unit, error) {
	data, err := readServiceFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, data)
}

// serviceEnableFalse matches a top-level "ServiceEnable = false" line,
// keeping indentation and any trailing comment.
var serviceEnableFalse = regexp.MustCompile(`(?m)^([ \t]*"?ServiceEnable"?[ \t]*=[ \t]*)false\b`)

// SetEnabled puts service name in dir into the asked state and returns the
// path of its file afterwards.
//
// Enabling renames name.service.disabled to name.service and, if the file
// says ServiceEnable = false, rewrites that line to true, so the service ends
// up enabled either way. Disabling renames name.service to
// name.service.disabled (the ServiceEnable line is left alone). A service
// already in the asked state is not an error. The name is validated first,
// since it comes from control clients.
func SetEnabled(dir, name string, enable bool) (path string, err error) {
	if err := ValidateName(name); err != nil {
		return "", err
	}
	on := filepath.Join(dir, name+Suffix)
	off := filepath.Join(dir, name+DisabledSuffix)
	onExists, offExists := exists(on), exists(off)
	if !onExists && !offExists {
		return "", fmt.Errorf("Service '%s' not found (no %s or %s): %w", name, on, off, ErrNotFound)
	}
	if onExists && offExists {
		return "", fmt.Errorf("service %s has both %s and %s; remove one of them first", name, on, off)
	}
	if !enable {
		if offExists {
			return off, nil
		}
		return off, renameNoReplace(on, off)
	}
	if offExists {
		if err := renameNoReplace(off, on); err != nil {
			return "", err
		}
	}
	return on, forceServiceEnable(on)
}

// forceServiceEnable rewrites "ServiceEnable = false" to true, atomically
// (temporary file, fsync, rename) and keeping the file's mode.
func forceServiceEnable(path string) error {
	data, err := readServiceFile(path)
	if err != nil {
		return err
	}
	u, perr := Parse(path, data)
	if perr == nil && u.ServiceEnable {
		return nil
	}
	if !serviceEnableFalse.Match(data) {
		if perr != nil {
			return nil // a broken file stays broken; its parse error is reported elsewhere
		}
		return fmt.Errorf("%s says ServiceEnable = false in a form this tool cannot rewrite; set it to true by hand", path)
	}
	data = serviceEnableFalse.ReplaceAll(data, []byte("${1}true"))
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("cannot stat %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".enable-*")
	if err != nil {
		return fmt.Errorf("cannot rewrite ServiceEnable in %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err == nil {
		err = tmp.Chmod(st.Mode().Perm())
		if err == nil {
			err = tmp.Sync()
		}
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(tmp.Name(), path)
		}
		if err != nil {
			return fmt.Errorf("cannot rewrite ServiceEnable in %s: %w", path, err)
		}
	} else {
		tmp.Close()
		return fmt.Errorf("cannot rewrite ServiceEnable in %s: %w", path, err)
	}
	return nil
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// renameNoReplace renames without clobbering a file that appeared meanwhile
// (two clients enabling and disabling at once).
func renameNoReplace(from, to string) error {
	err := unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, to, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		// The filesystem cannot do RENAME_NOREPLACE: check, then rename.
		if exists(to) {
			return fmt.Errorf("cannot rename %s to %s: %w", from, to, fs.ErrExist)
		}
		err = os.Rename(from, to)
	}
	if err != nil {
		return fmt.Errorf("cannot rename %s to %s: %w", from, to, err)
	}
	return nil
}
