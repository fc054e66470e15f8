// Package image builds bootable initramfs images (newc cpio archives) for
// nitroinit: our init as /init, initctl, their configuration, service files,
// kernel modules, extra files and an optional application root under
// /rootfs for the root switch.
//
// The output is reproducible: the same inputs give the same bytes. Every
// record has mtime 0, uid and gid 0 and an inode number given by its position;
// records are sorted by path; every directory is an explicit record with mode
// 0755 (unless it comes from the rootfs tree, which keeps its own mode), so
// nothing depends on the build machine's umask or clock.
package image

import (
	"bufio"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/u-root/mkuimage/cpio"

	"github.com/nitroinit/nitroinit/internal/nitro"
)

// Where things go inside the image. They match the defaults of init.yaml
// (service_dir, nsm_driver_path) so that a default configuration finds them.
const (
	InitPath          = "/init"
	InitctlPath       = "/usr/bin/initctl"
	ConfigPath        = nitro.ConfigPath
	InitctlConfigPath = "/etc/initctl.yaml"
	ServiceDir        = "/service"
	ModuleDir         = "/lib/modules"
	RootfsDir         = nitro.RootfsPath
)

// File is one file to put into the image.
type File struct {
	// Src is the host file to copy. Ignored when Data is not nil.
	Src string
	// Data is the content, for files made in memory.
	Data []byte
	// Dst is the absolute path inside the image.
	Dst string
	// Mode holds the permission bits. Zero means: those of Src, or 0644 for
	// Data.
	Mode fs.FileMode
}

// Spec describes an image. Only Init is required.
type Spec struct {
	Init          string   // host path of the binary that becomes /init
	Initctl       string   // host path of initctl, installed as /usr/bin/initctl
	Config        string   // init.yaml, installed as /etc/init.yaml
	InitctlConfig string   // initctl.yaml, installed as /etc/initctl.yaml
	Services      []string // service files, installed as /service/<base name>
	Modules       []string // kernel modules, installed as /lib/modules/<base name>
	Files         []File   // anything else
	Rootfs        string   // host directory copied to /rootfs (the root to switch to)
	// NoConsole leaves out /dev/console. The kernel opens it for PID 1's
	// standard streams before any devtmpfs exists, so it is on by default.
	NoConsole bool
	// Tree is an imported root filesystem (a container image's), placed as
	// given: unlike every other input it keeps owners and device numbers,
	// and may hold hard links.
	Tree []TreeFile
	// AppOnly makes the application half of a two-ramdisk EIF, which the
	// kernel unpacks over the boot half: no /init is needed, and neither
	// /dev/console nor the standard directories are added.
	AppOnly bool
}

// TreeFile is one file of an imported root filesystem.
type TreeFile struct {
	// Dst is the absolute path inside the image.
	Dst string
	// Record holds the type and permission bits (Mode), owner (UID, GID),
	// device numbers (Rmajor, Rminor) and content (regular files: ReaderAt
	// and FileSize; symlinks: the target). Name, times and inode are set
	// by the builder.
	Record cpio.Record
	// HardLink, for a hard link, is the Dst of the regular file it is
	// another name for; Record is then ignored but for nothing.
	HardLink string
}

// ModulePath returns where a module given in Spec.Modules ends up inside the
// image, for init.yaml's kernel_modules and nsm_driver_path.
func ModulePath(hostPath string) string {
	return path.Join(ModuleDir, filepath.Base(hostPath))
}

// ParseFile parses a command-line file argument "SRC:/DST". The split is at
// the last ":/", so SRC may itself contain colons.
func ParseFile(arg string) (File, error) {
	i := strings.LastIndex(arg, ":/")
	if i <= 0 {
		return File{}, fmt.Errorf("file argument %q: want SRC:/DST with an absolute destination", arg)
	}
	return File{Src: arg[:i], Dst: arg[i+1:]}, nil
}

// entry is one planned record with where it came from, for error messages.
type entry struct {
	rec    cpio.Record
	origin string
	// keepOwner keeps rec's UID and GID (imported trees only).
	keepOwner bool
	// hardLink is the normalised name of the file this one is a hard link to.
	hardLink string
}

// Records validates the spec and returns the archive's records in write
// order (sorted by path, directories included, no trailer). Each regular
// file's content is read only when the record is written.
func (s Spec) Records() ([]cpio.Record, error) {
	plan := map[string]entry{}
	var errs []error
	addEntry := func(name string, e entry) {
		name = cpio.Normalize(name)
		e.rec.Name = name
		if prev, ok := plan[name]; ok {
			errs = append(errs, fmt.Errorf("/%s is given twice: by %s and by %s; drop one", name, prev.origin, e.origin))
			return
		}
		plan[name] = e
	}
	add := func(name string, rec cpio.Record, origin string) {
		addEntry(name, entry{rec: rec, origin: origin})
	}
	addFile := func(src, dst string, mode fs.FileMode, origin string) {
		rec, err := fileRecord(src, mode)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", origin, err))
			return
		}
		add(dst, rec, origin)
	}

	if s.Init == "" && !s.AppOnly {
		errs = append(errs, errors.New("no init binary given (--init PATH): the image needs one as /init"))
	} else if s.Init != "" {
		addFile(s.Init, InitPath, 0o755, "--init "+s.Init)
		if err := checkStatic(s.Init); err != nil {
			errs = append(errs, fmt.Errorf("--init %s: %w", s.Init, err))
		}
	}
	if s.Initctl != "" {
		addFile(s.Initctl, InitctlPath, 0o755, "--initctl "+s.Initctl)
		if err := checkStatic(s.Initctl); err != nil {
			errs = append(errs, fmt.Errorf("--initctl %s: %w", s.Initctl, err))
		}
	}
	if s.Config != "" {
		addFile(s.Config, ConfigPath, 0o644, "--config "+s.Config)
	}
	if s.InitctlConfig != "" {
		addFile(s.InitctlConfig, InitctlConfigPath, 0o644, "--initctl-config "+s.InitctlConfig)
	}
	for _, svc := range s.Services {
		if !strings.HasSuffix(svc, ".service") && !strings.HasSuffix(svc, ".service.disabled") {
			errs = append(errs, fmt.Errorf("--service %s: name must end in .service (or .service.disabled) for init to read it", svc))
			continue
		}
		addFile(svc, path.Join(ServiceDir, filepath.Base(svc)), 0o644, "--service "+svc)
	}
	for _, m := range s.Modules {
		addFile(m, ModulePath(m), 0o644, "--module "+m)
	}
	for _, f := range s.Files {
		origin := "--file " + f.Src + ":" + f.Dst
		if !path.IsAbs(f.Dst) {
			errs = append(errs, fmt.Errorf("%s: destination must be absolute", origin))
			continue
		}
		if f.Data != nil {
			mode := f.Mode
			if mode == 0 {
				mode = 0o644
			}
			add(f.Dst, cpio.StaticRecord(f.Data, cpio.Info{Mode: cpio.S_IFREG | uint64(mode.Perm())}), "in-memory file "+f.Dst)
			continue
		}
		addFile(f.Src, f.Dst, f.Mode, origin)
	}
	if !s.NoConsole && !s.AppOnly {
		// 5:1 is /dev/console on Linux.
		add("/dev/console", cpio.CharDev("", 0o600, 5, 1), "the built-in /dev/console")
	}
	if s.Rootfs != "" {
		if err := addTree(s.Rootfs, RootfsDir, add); err != nil {
			errs = append(errs, err)
		}
	}
	for _, tf := range s.Tree {
		origin := "image file " + tf.Dst
		if !path.IsAbs(tf.Dst) {
			errs = append(errs, fmt.Errorf("%s: destination must be absolute", origin))
			continue
		}
		e := entry{rec: tf.Record, origin: origin, keepOwner: true}
		if tf.HardLink != "" {
			e.rec = cpio.StaticRecord(nil, cpio.Info{Mode: cpio.S_IFREG})
			e.hardLink = cpio.Normalize(tf.HardLink)
		}
		addEntry(tf.Dst, e)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}

	// Directories every image has: init mounts over these early, and the
	// parents of everything above.
	standard := []string{"dev", "proc", "sys", "run", "tmp", "etc", "service", "log"}
	if s.AppOnly {
		standard = nil
	}
	for _, d := range standard {
		if _, ok := plan[d]; !ok {
			plan[d] = entry{rec: cpio.Directory(d, 0o755), origin: "standard directory"}
		}
	}
	for name, e := range plan {
		for dir := path.Dir(name); dir != "."; dir = path.Dir(dir) {
			if p, ok := plan[dir]; ok {
				if p.rec.Mode&cpio.S_IFMT != cpio.S_IFDIR {
					return nil, fmt.Errorf("/%s (from %s) needs /%s to be a directory, but %s puts a file there", name, e.origin, dir, p.origin)
				}
				continue
			}
			plan[dir] = entry{rec: cpio.Directory(dir, 0o755), origin: "parent of /" + name}
		}
	}

	names := make([]string, 0, len(plan))
	for n := range plan {
		names = append(names, n)
	}
	// Lexical order puts every directory before its contents ("a" < "a/b").
	sort.Strings(names)
	recs := make([]cpio.Record, 0, len(names))
	index := make(map[string]int, len(names))
	for i, n := range names {
		e := plan[n]
		r := e.rec
		r.Info = cpio.MakeReproducible(r).Info
		if e.keepOwner {
			r.UID, r.GID = e.rec.UID, e.rec.GID
		}
		r.Ino = uint64(i + 1)
		r.NLink = 1
		if r.Mode&cpio.S_IFMT == cpio.S_IFDIR {
			r.NLink = 2
		}
		recs = append(recs, r)
		index[n] = i
	}
	if err := linkRecords(recs, names, plan, index); err != nil {
		return nil, err
	}
	return recs, nil
}

// linkRecords gives every hard link its target's inode, mode and owner, and
// every member of a link group the group's size as link count: that is how
// the kernel's initramfs unpacker recognises hard links in newc archives
// (it links records with equal inode numbers and a link count of 2 or
// more). The target keeps the data; the links have none.
func linkRecords(recs []cpio.Record, names []string, plan map[string]entry, index map[string]int) error {
	groups := map[int][]int{}
	for i, n := range names {
		link := plan[n].hardLink
		if link == "" {
			continue
		}
		j, ok := index[link]
		if !ok || recs[j].Mode&cpio.S_IFMT != cpio.S_IFREG || plan[link].hardLink != "" {
			return fmt.Errorf("/%s (from %s) is a hard link to /%s, which is not a regular file in the image", n, plan[n].origin, link)
		}
		t := recs[j]
		recs[i].Ino, recs[i].Mode, recs[i].UID, recs[i].GID = t.Ino, t.Mode, t.UID, t.GID
		groups[j] = append(groups[j], i)
	}
	for j, links := range groups {
		n := uint64(len(links) + 1)
		recs[j].NLink = n
		for _, i := range links {
			recs[i].NLink = n
		}
	}
	return nil
}

// Write writes the archive (with trailer) to w.
func (s Spec) Write(w io.Writer) error {
	recs, err := s.Records()
	if err != nil {
		return err
	}
	rw := cpio.Newc.Writer(w)
	for _, r := range recs {
		if err := rw.WriteRecord(r); err != nil {
			return fmt.Errorf("writing /%s: %w", r.Name, err)
		}
	}
	return cpio.WriteTrailer(rw)
}

// WriteFile writes the archive to out. It writes to a temporary file beside
// out and renames it, so out is either the old image or the complete new one.
func (s Spec) WriteFile(out string) error {
	// Validate first: a bad spec must not leave a temporary file behind.
	if _, err := s.Records(); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".*")
	if err != nil {
		return fmt.Errorf("creating the image next to %s: %w", out, err)
	}
	defer os.Remove(tmp.Name())
	bw := bufio.NewWriterSize(tmp, 1<<20)
	if err := s.Write(bw); err != nil {
		tmp.Close()
		return fmt.Errorf("building %s: %w", out, err)
	}
	if err := bw.Flush(); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", out, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", out, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", out, err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return fmt.Errorf("renaming the image to %s: %w", out, err)
	}
	return nil
}

// checkStatic refuses a dynamically linked ELF program: the image has no
// dynamic loader or libc, so the kernel would fail to run it ("No working
// init found" and a panic, for /init). Files that are not ELF (scripts, test
// stand-ins) pass; the image builder cannot judge them.
func checkStatic(p string) error {
	f, err := elf.Open(p)
	if err != nil {
		return nil // missing files are reported elsewhere; non-ELF passes
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			interp, _ := io.ReadAll(io.LimitReader(prog.Open(), 256))
			return fmt.Errorf("dynamically linked (needs %s, which the image lacks): build it with CGO_ENABLED=0", strings.TrimRight(string(interp), "\x00"))
		}
	}
	return nil
}

// fileRecord plans a regular file copied from src. A mode of 0 keeps src's
// permission bits.
func fileRecord(src string, mode fs.FileMode) (cpio.Record, error) {
	fi, err := os.Stat(src)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return cpio.Record{}, fmt.Errorf("input file %s does not exist", src)
		}
		return cpio.Record{}, err
	}
	if !fi.Mode().IsRegular() {
		return cpio.Record{}, fmt.Errorf("input %s is not a regular file (%s)", src, fi.Mode().Type())
	}
	if mode == 0 {
		mode = fi.Mode().Perm()
	}
	return cpio.Record{
		ReaderAt: &lazyFile{path: src, size: fi.Size()},
		Info:     cpio.Info{Mode: cpio.S_IFREG | uint64(mode.Perm()), FileSize: uint64(fi.Size())},
	}, nil
}

// addTree plans every entry under the host directory root at dst. Modes and
// symlink targets are kept; owners, times and hard links are not (each link
// becomes its own file).
func addTree(root, dst string, add func(string, cpio.Record, string)) error {
	fi, err := os.Stat(root)
	if err != nil {
		return fmt.Errorf("--rootfs %s: %w", root, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("--rootfs %s: not a directory", root)
	}
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("--rootfs %s: %w", root, err)
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		name := path.Join(dst, filepath.ToSlash(rel))
		origin := "--rootfs " + p
		info, err := d.Info()
		if err != nil {
			return fmt.Errorf("%s: %w", origin, err)
		}
		perm := uint64(info.Mode().Perm())
		if info.Mode()&fs.ModeSetuid != 0 {
			perm |= 0o4000
		}
		if info.Mode()&fs.ModeSetgid != 0 {
			perm |= 0o2000
		}
		if info.Mode()&fs.ModeSticky != 0 {
			perm |= 0o1000
		}
		switch t := info.Mode().Type(); {
		case t.IsDir():
			add(name, cpio.Directory("", perm), origin)
		case t.IsRegular():
			add(name, cpio.Record{
				ReaderAt: &lazyFile{path: p, size: info.Size()},
				Info:     cpio.Info{Mode: cpio.S_IFREG | perm, FileSize: uint64(info.Size())},
			}, origin)
		case t&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return fmt.Errorf("%s: %w", origin, err)
			}
			add(name, cpio.Symlink("", target), origin)
		default:
			return fmt.Errorf("%s: %s files are not supported in a rootfs (create device nodes at boot instead)", origin, t)
		}
		return nil
	})
}

// lazyFile reads a host file only while its record is being written, so a
// large rootfs does not hold one descriptor per file. Its size is fixed at
// planning time: a file that changes size in between makes the write fail
// instead of producing a corrupt archive.
type lazyFile struct {
	path string
	size int64
	f    *os.File
}

// ReadAt implements io.ReaderAt.
func (l *lazyFile) ReadAt(p []byte, off int64) (int, error) {
	if l.f == nil {
		f, err := os.Open(l.path)
		if err != nil {
			return 0, err
		}
		l.f = f
	}
	if off >= l.size {
		return 0, io.EOF
	}
	if max := l.size - off; int64(len(p)) > max {
		p = p[:max]
	}
	return l.f.ReadAt(p, off)
}

// Close implements io.Closer; the cpio writer calls it after the content.
func (l *lazyFile) Close() error {
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}
