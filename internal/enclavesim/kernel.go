package enclavesim

import (
	"bufio"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Kernel is a test kernel: the images ci/fetch-kernel.sh caches, or the ones
// named by NITROINIT_KERNEL and NITROINIT_MODULES_DIR.
type Kernel struct {
	// Dir is the cache directory the kernel came from ("" for
	// NITROINIT_KERNEL).
	Dir string
	// Version is the kernel release, when known.
	Version string
	// Vmlinuz is the bzImage (or whatever NITROINIT_KERNEL names).
	Vmlinuz string
	// Vmlinux is the uncompressed ELF with a PVH note, "" when there is none.
	Vmlinux string
	// Modules are the module files to load, in load order: vsock,
	// vmw_vsock_virtio_transport_common, vmw_vsock_virtio_transport,
	// vsock_loopback and nsm, those present. Built-in ones are absent.
	Modules []string
}

// moduleNames are the modules the simulator's guests need, in load order.
var moduleNames = []string{"vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport", "vsock_loopback", "nsm", "virtio_mmio"}

// cacheDir is ${NITROINIT_CACHE:-$HOME/.cache/nitroinit}.
func cacheDir() string {
	if d := os.Getenv("NITROINIT_CACHE"); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(os.TempDir(), "nitroinit-cache")
	}
	return filepath.Join(home, ".cache", "nitroinit")
}

// ErrNoKernel is returned (wrapped) by FindKernel when there is no kernel
// at all; tests skip on it.
var ErrNoKernel = errors.New("no test kernel")

// FindKernel locates the test kernel. NITROINIT_KERNEL (a bzImage or a PVH
// vmlinux) wins, with modules found anywhere under NITROINIT_MODULES_DIR;
// otherwise the cache's kernel/current directory that ci/fetch-kernel.sh
// fills.
func FindKernel() (Kernel, error) {
	if k := os.Getenv("NITROINIT_KERNEL"); k != "" {
		return kernelFromEnv(k, os.Getenv("NITROINIT_MODULES_DIR"))
	}
	dir := filepath.Join(cacheDir(), "kernel", "current")
	ver, err := os.ReadFile(filepath.Join(dir, "VERSION"))
	if err != nil {
		return Kernel{}, fmt.Errorf("%w: %s has no VERSION (%v): run ci/fetch-kernel.sh, or set NITROINIT_KERNEL (and NITROINIT_MODULES_DIR)", ErrNoKernel, dir, err)
	}
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		dir = real
	}
	k := Kernel{Dir: dir, Version: strings.TrimSpace(string(ver)), Vmlinuz: filepath.Join(dir, "vmlinuz")}
	if _, err := os.Stat(k.Vmlinuz); err != nil {
		return Kernel{}, fmt.Errorf("%w: %v: rerun ci/fetch-kernel.sh", ErrNoKernel, err)
	}
	if v := filepath.Join(dir, "vmlinux"); fileExists(v) {
		k.Vmlinux = v
	}
	order, err := os.ReadFile(filepath.Join(dir, "modules", "ORDER"))
	if err != nil {
		return Kernel{}, fmt.Errorf("kernel cache %s: %w: rerun ci/fetch-kernel.sh", dir, err)
	}
	for _, name := range strings.Fields(string(order)) {
		if p := findModule(filepath.Join(dir, "modules"), name); p != "" {
			k.Modules = append(k.Modules, p)
		}
	}
	return k, nil
}

func kernelFromEnv(image, modDir string) (Kernel, error) {
	if !fileExists(image) {
		return Kernel{}, fmt.Errorf("%w: NITROINIT_KERNEL=%s: no such file", ErrNoKernel, image)
	}
	k := Kernel{Vmlinuz: image}
	if ok, _ := hasPVHNote(image); ok {
		k.Vmlinux = image
	}
	if modDir != "" {
		if _, err := os.Stat(modDir); err != nil {
			return Kernel{}, fmt.Errorf("NITROINIT_MODULES_DIR=%s: %w", modDir, err)
		}
		for _, name := range moduleNames {
			if p := findModule(modDir, name); p != "" {
				k.Modules = append(k.Modules, p)
			}
		}
	}
	return k, nil
}

// findModule looks for name.ko[.xz|.zst|.gz] anywhere under dir.
func findModule(dir, name string) string {
	var found string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || found != "" {
			return nil
		}
		b := d.Name()
		for _, ext := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
			if b == name+ext {
				found = p
				return filepath.SkipAll
			}
		}
		return nil
	})
	return found
}

// BootImage is what QEMU's -kernel gets: the PVH vmlinux when there is one
// (it skips real mode and decompression, about 25% faster under TCG), else
// the bzImage.
func (k Kernel) BootImage() string {
	if k.Vmlinux != "" {
		return k.Vmlinux
	}
	return k.Vmlinuz
}

// xenElfnotePhys32Entry is XEN_ELFNOTE_PHYS32_ENTRY, the PVH entry point note
// QEMU looks for in an ELF kernel.
const xenElfnotePhys32Entry = 18

// hasPVHNote reports whether path is an ELF kernel with a PVH entry note, so
// QEMU can boot it directly with -kernel.
func hasPVHNote(path string) (bool, error) {
	f, err := elf.Open(path)
	if err != nil {
		var fe *elf.FormatError
		if errors.As(err, &fe) {
			return false, nil // not ELF: a bzImage
		}
		return false, err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		if found, err := scanNotes(p.Open(), f.ByteOrder); err != nil {
			return false, fmt.Errorf("%s: reading notes: %w", path, err)
		} else if found {
			return true, nil
		}
	}
	return false, nil
}

// scanNotes walks ELF notes (namesz, descsz, type, name, desc; 4-byte
// aligned) looking for the Xen PVH entry.
func scanNotes(r io.Reader, bo binary.ByteOrder) (bool, error) {
	br := bufio.NewReader(r)
	for {
		var hdr [3]uint32
		if err := binary.Read(br, bo, &hdr); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return false, nil
			}
			return false, err
		}
		name := make([]byte, align4(hdr[0]))
		if _, err := io.ReadFull(br, name); err != nil {
			return false, nil
		}
		if _, err := br.Discard(int(align4(hdr[1]))); err != nil {
			return false, nil
		}
		if hdr[2] == xenElfnotePhys32Entry && strings.TrimRight(string(name), "\x00") == "Xen" {
			return true, nil
		}
	}
}

func align4(n uint32) uint32 { return (n + 3) &^ 3 }

func fileExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}
