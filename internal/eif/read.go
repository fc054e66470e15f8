package eif

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"

	"github.com/nitroinit/nitroinit/internal/nitro"
)

// FormatError is a damaged or unsupported EIF. Field names the part that is
// wrong ("magic", "version", "section 3 size", ...).
type FormatError struct {
	Field string
	Msg   string
}

func (e *FormatError) Error() string { return "eif: " + e.Field + ": " + e.Msg }

func bad(field, format string, args ...any) error {
	return &FormatError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// SectionInfo is where one section lies in a file.
type SectionInfo struct {
	Type   uint16
	Flags  uint16
	Offset int64 // of the data, past the 12-byte section header
	Size   int64
}

// File is a validated EIF read through an io.ReaderAt. Sections are read on
// demand, so opening a large image holds none of it in memory.
type File struct {
	Header   Header
	Sections []SectionInfo
	r        io.ReaderAt
}

// Open reads and validates the EIF of the given size in r: magic, version
// (at least 4), flags (x86_64 or arm64, nothing else), section count (1 to
// 32), each section's offset (directly behind the previous one), header
// (known type, flags 0, size equal to the header's) and bounds, no bytes
// after the last section, the CRC, and the sections an enclave needs (one
// kernel, one cmdline, at least one ramdisk, at most one metadata and one
// signature). Every refusal is a *FormatError naming the field.
func Open(r io.ReaderAt, size int64) (*File, error) {
	if size < nitro.EIFHeaderSize {
		return nil, bad("header", "the file is %d bytes, shorter than the %d-byte EIF header", size, nitro.EIFHeaderSize)
	}
	hb := make([]byte, nitro.EIFHeaderSize)
	if _, err := r.ReadAt(hb, 0); err != nil {
		return nil, fmt.Errorf("eif: reading the header: %w", err)
	}
	if !bytes.Equal(hb[:4], []byte(nitro.EIFMagic)) {
		return nil, bad("magic", "%q, want %q: not an EIF", hb[:4], nitro.EIFMagic)
	}
	h := unmarshalHeader(hb)
	if h.Version < nitro.EIFVersion {
		return nil, bad("version", "%d; EIF version %d or later is needed (rebuild the image with a current nitro-cli or initramfs)", h.Version, nitro.EIFVersion)
	}
	if h.Flags&^nitro.EIFFlagARM64 != 0 {
		return nil, bad("flags", "%#04x has unknown bits (only bit 0, arm64, is defined)", h.Flags)
	}
	if h.NumSections == 0 || h.NumSections > nitro.EIFMaxSections {
		return nil, bad("section count", "%d, want 1 to %d", h.NumSections, nitro.EIFMaxSections)
	}
	crc := crc32.NewIEEE()
	crc.Write(hb[:len(hb)-4])
	f := &File{Header: h, r: r}
	pos := int64(nitro.EIFHeaderSize)
	var sh [nitro.EIFSectionHeaderSize]byte
	for i := 0; i < int(h.NumSections); i++ {
		field := fmt.Sprintf("section %d", i)
		if h.SectionOffsets[i] != uint64(pos) {
			return nil, bad(field+" offset", "%d, want %d (sections follow the header and each other without gaps)", h.SectionOffsets[i], pos)
		}
		if size-pos < nitro.EIFSectionHeaderSize {
			return nil, bad(field+" header", "at offset %d runs past the end of the %d-byte file", pos, size)
		}
		if _, err := r.ReadAt(sh[:], pos); err != nil {
			return nil, fmt.Errorf("eif: reading %s header: %w", field, err)
		}
		s := SectionInfo{
			Type:  binary.BigEndian.Uint16(sh[0:]),
			Flags: binary.BigEndian.Uint16(sh[2:]),
		}
		ssize := binary.BigEndian.Uint64(sh[4:])
		if s.Type == nitro.EIFSectionInvalid || s.Type > nitro.EIFSectionMetadata {
			return nil, bad(field+" type", "%d is not a section type (1 kernel, 2 cmdline, 3 ramdisk, 4 signature, 5 metadata)", s.Type)
		}
		field += " (" + TypeName(s.Type) + ")"
		if s.Flags != 0 {
			return nil, bad(field+" flags", "%#04x, want 0", s.Flags)
		}
		if ssize != h.SectionSizes[i] {
			return nil, bad(field+" size", "the section header says %d bytes, the EIF header %d", ssize, h.SectionSizes[i])
		}
		pos += nitro.EIFSectionHeaderSize
		if ssize > uint64(size-pos) {
			return nil, bad(field+" size", "%d bytes at offset %d run past the end of the %d-byte file", ssize, pos, size)
		}
		s.Offset, s.Size = pos, int64(ssize)
		crc.Write(sh[:])
		if _, err := io.Copy(crc, io.NewSectionReader(r, s.Offset, s.Size)); err != nil {
			return nil, fmt.Errorf("eif: reading %s: %w", field, err)
		}
		pos += s.Size
		f.Sections = append(f.Sections, s)
	}
	for i := int(h.NumSections); i < nitro.EIFMaxSections; i++ {
		if h.SectionOffsets[i] != 0 || h.SectionSizes[i] != 0 {
			return nil, bad(fmt.Sprintf("section %d", i), "offset %d size %d given past the %d sections the header counts", h.SectionOffsets[i], h.SectionSizes[i], h.NumSections)
		}
	}
	if pos != size {
		return nil, bad("length", "%d bytes follow the last section (the file is %d bytes, its sections end at %d)", size-pos, size, pos)
	}
	if got := crc.Sum32(); got != h.CRC {
		return nil, bad("crc", "the header says %#08x, the contents give %#08x: the file is damaged", h.CRC, got)
	}
	count := map[uint16]int{}
	for _, s := range f.Sections {
		count[s.Type]++
	}
	for _, c := range []struct {
		typ      uint16
		min, max int
	}{
		{nitro.EIFSectionKernel, 1, 1},
		{nitro.EIFSectionCmdline, 1, 1},
		{nitro.EIFSectionRamdisk, 1, nitro.EIFMaxSections},
		{nitro.EIFSectionMetadata, 0, 1},
		{nitro.EIFSectionSignature, 0, 1},
	} {
		if n := count[c.typ]; n < c.min || n > c.max {
			return nil, bad(TypeName(c.typ)+" sections", "%d, want %d to %d", n, c.min, c.max)
		}
	}
	return f, nil
}

// CheckX86 refuses an arm64 image: the simulator boots x86_64 only, as
// QEMU's x86 nitro-enclave machine does.
func (f *File) CheckX86() error {
	if f.Header.Flags != 0 {
		return bad("flags", "%#04x marks an arm64 image; the simulator boots x86_64 images (flags 0)", f.Header.Flags)
	}
	return nil
}

// Arch returns "x86_64" or "aarch64", as describe-eif's ArchitectureType.
func (f *File) Arch() string {
	if f.Header.Flags&nitro.EIFFlagARM64 != 0 {
		return "aarch64"
	}
	return "x86_64"
}

// Reader returns a reader of section i's data.
func (f *File) Reader(i int) *io.SectionReader {
	s := f.Sections[i]
	return io.NewSectionReader(f.r, s.Offset, s.Size)
}

// ofType returns the indexes of the sections of type t, in file order.
func (f *File) ofType(t uint16) []int {
	var idx []int
	for i, s := range f.Sections {
		if s.Type == t {
			idx = append(idx, i)
		}
	}
	return idx
}

// readSmall reads the only section of type t, refusing more than max bytes
// (so a damaged or hostile size cannot make us allocate it). ok is false if
// the file has no such section.
func (f *File) readSmall(t uint16, max int64) (data []byte, ok bool, err error) {
	idx := f.ofType(t)
	if len(idx) == 0 {
		return nil, false, nil
	}
	s := f.Sections[idx[0]]
	if s.Size > max {
		return nil, true, bad(fmt.Sprintf("section %d (%s) size", idx[0], TypeName(t)), "%d bytes, more than the %d this reader accepts", s.Size, max)
	}
	b := make([]byte, s.Size)
	if _, err := f.Reader(idx[0]).ReadAt(b, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, true, fmt.Errorf("eif: reading the %s section: %w", TypeName(t), err)
	}
	return b, true, nil
}

// Bounds on the small sections we read whole.
const (
	maxCmdline   = 64 << 10
	maxMetadata  = 16 << 20
	maxSignature = 1 << 20
)

// Cmdline returns the kernel command line.
func (f *File) Cmdline() (string, error) {
	b, _, err := f.readSmall(nitro.EIFSectionCmdline, maxCmdline)
	return string(bytes.TrimRight(b, "\x00")), err
}

// Metadata returns the metadata JSON, or nil if the image has none.
func (f *File) Metadata() ([]byte, error) {
	b, _, err := f.readSmall(nitro.EIFSectionMetadata, maxMetadata)
	return b, err
}

// Signature returns the signature section, or nil if the image is unsigned.
func (f *File) Signature() ([]byte, error) {
	b, _, err := f.readSmall(nitro.EIFSectionSignature, maxSignature)
	return b, err
}

// Kernel returns a reader of the kernel section.
func (f *File) Kernel() *io.SectionReader {
	return f.Reader(f.ofType(nitro.EIFSectionKernel)[0])
}

// Ramdisks returns a reader of the ramdisks concatenated in file order, the
// initrd a boot loader gives the kernel.
func (f *File) Ramdisks() io.Reader {
	var rs []io.Reader
	for _, i := range f.ofType(nitro.EIFSectionRamdisk) {
		rs = append(rs, f.Reader(i))
	}
	return io.MultiReader(rs...)
}
