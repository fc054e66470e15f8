// Package eif writes, reads and measures Enclave Image Files (EIF v4), the
// images AWS Nitro Enclaves boot: a kernel, its command line, build metadata,
// one or more initramfs ramdisks and an optional signature, behind a fixed
// header with a CRC-32.
//
// Writing follows nitro-cli's eif_build: sections in the order kernel,
// cmdline, metadata, ramdisks, signature, one after another behind the
// header. Reading validates what QEMU's nitro-enclave loader validates
// (version, flags, section count, section flags, sizes, CRC) and more (every
// offset, section types, trailing bytes), and names the field that is wrong.
// The PCRs are nitro-cli's: see Measure.
package eif

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"

	"github.com/nitroinit/nitroinit/internal/nitro"
)

// Header is the fixed EIF header. All integers are big-endian on disk.
type Header struct {
	Version        uint16
	Flags          uint16
	DefaultMemory  uint64
	DefaultCPUs    uint64
	Reserved       uint16
	NumSections    uint16
	SectionOffsets [nitro.EIFMaxSections]uint64
	SectionSizes   [nitro.EIFMaxSections]uint64
	Unused         uint32
	CRC            uint32
}

// MarshalBinary returns the header's 548 bytes.
func (h *Header) MarshalBinary() ([]byte, error) {
	b := make([]byte, 0, nitro.EIFHeaderSize)
	b = append(b, nitro.EIFMagic...)
	b = binary.BigEndian.AppendUint16(b, h.Version)
	b = binary.BigEndian.AppendUint16(b, h.Flags)
	b = binary.BigEndian.AppendUint64(b, h.DefaultMemory)
	b = binary.BigEndian.AppendUint64(b, h.DefaultCPUs)
	b = binary.BigEndian.AppendUint16(b, h.Reserved)
	b = binary.BigEndian.AppendUint16(b, h.NumSections)
	for _, o := range h.SectionOffsets {
		b = binary.BigEndian.AppendUint64(b, o)
	}
	for _, s := range h.SectionSizes {
		b = binary.BigEndian.AppendUint64(b, s)
	}
	b = binary.BigEndian.AppendUint32(b, h.Unused)
	b = binary.BigEndian.AppendUint32(b, h.CRC)
	return b, nil
}

// unmarshalHeader decodes a header from exactly nitro.EIFHeaderSize bytes;
// the magic has already been checked.
func unmarshalHeader(b []byte) Header {
	var h Header
	be := binary.BigEndian
	h.Version = be.Uint16(b[4:])
	h.Flags = be.Uint16(b[6:])
	h.DefaultMemory = be.Uint64(b[8:])
	h.DefaultCPUs = be.Uint64(b[16:])
	h.Reserved = be.Uint16(b[24:])
	h.NumSections = be.Uint16(b[26:])
	off := 28
	for i := range h.SectionOffsets {
		h.SectionOffsets[i] = be.Uint64(b[off:])
		off += 8
	}
	for i := range h.SectionSizes {
		h.SectionSizes[i] = be.Uint64(b[off:])
		off += 8
	}
	h.Unused = be.Uint32(b[off:])
	h.CRC = be.Uint32(b[off+4:])
	return h
}

// sectionHeader encodes the 12 bytes before a section's data.
func sectionHeader(typ, flags uint16, size uint64) []byte {
	b := make([]byte, 0, nitro.EIFSectionHeaderSize)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint16(b, flags)
	return binary.BigEndian.AppendUint64(b, size)
}

// TypeName returns the name nitro-cli's sources give a section type.
func TypeName(t uint16) string {
	switch t {
	case nitro.EIFSectionKernel:
		return "kernel"
	case nitro.EIFSectionCmdline:
		return "cmdline"
	case nitro.EIFSectionRamdisk:
		return "ramdisk"
	case nitro.EIFSectionSignature:
		return "signature"
	case nitro.EIFSectionMetadata:
		return "metadata"
	}
	return fmt.Sprintf("unknown type %d", t)
}

// Section is one section of an image to write.
type Section struct {
	Type uint16
	Data []byte
}

// Image is an EIF to write. Its zero value plus a kernel, a cmdline and a
// ramdisk is a valid x86_64 image.
type Image struct {
	Kernel   []byte
	Cmdline  string // stored without a trailing NUL, as eif_build does
	Metadata []byte // the EifIdentityInfo JSON; left out when nil
	Ramdisks [][]byte
	// Signature is the CBOR signature section (see Sign); left out when nil.
	Signature []byte
	// Flags is the header's flags (0: x86_64).
	Flags uint16
	// DefaultMemory and DefaultCPUs default to eif_build's 1 GiB and 2.
	DefaultMemory uint64
	DefaultCPUs   uint64
}

// Sections returns the image's sections in eif_build's order: kernel,
// cmdline, metadata, ramdisks, signature.
func (im *Image) Sections() []Section {
	s := []Section{
		{nitro.EIFSectionKernel, im.Kernel},
		{nitro.EIFSectionCmdline, []byte(im.Cmdline)},
	}
	if im.Metadata != nil {
		s = append(s, Section{nitro.EIFSectionMetadata, im.Metadata})
	}
	for _, r := range im.Ramdisks {
		s = append(s, Section{nitro.EIFSectionRamdisk, r})
	}
	if im.Signature != nil {
		s = append(s, Section{nitro.EIFSectionSignature, im.Signature})
	}
	return s
}

// header lays out the sections one after another behind the header and
// computes the CRC over the header (without its CRC field) and every
// section header and section in file order, as eif_build does.
func (im *Image) header() (Header, error) {
	secs := im.Sections()
	if len(im.Kernel) == 0 {
		return Header{}, fmt.Errorf("eif: no kernel")
	}
	if len(im.Ramdisks) == 0 {
		return Header{}, fmt.Errorf("eif: no ramdisk: an enclave needs at least one")
	}
	if len(secs) > nitro.EIFMaxSections {
		return Header{}, fmt.Errorf("eif: %d sections, more than the format's %d: use fewer ramdisks", len(secs), nitro.EIFMaxSections)
	}
	h := Header{
		Version:       nitro.EIFVersion,
		Flags:         im.Flags,
		DefaultMemory: im.DefaultMemory,
		DefaultCPUs:   im.DefaultCPUs,
		NumSections:   uint16(len(secs)),
	}
	if h.DefaultMemory == 0 {
		h.DefaultMemory = nitro.EIFDefaultMemory
	}
	if h.DefaultCPUs == 0 {
		h.DefaultCPUs = nitro.EIFDefaultCPUs
	}
	off := uint64(nitro.EIFHeaderSize)
	for i, s := range secs {
		h.SectionOffsets[i] = off
		h.SectionSizes[i] = uint64(len(s.Data))
		off += nitro.EIFSectionHeaderSize + uint64(len(s.Data))
	}
	crc := crc32.NewIEEE()
	hb, _ := h.MarshalBinary()
	crc.Write(hb[:len(hb)-4])
	for _, s := range secs {
		crc.Write(sectionHeader(s.Type, 0, uint64(len(s.Data))))
		crc.Write(s.Data)
	}
	h.CRC = crc.Sum32()
	return h, nil
}

// WriteTo writes the image to w.
func (im *Image) WriteTo(w io.Writer) (int64, error) {
	h, err := im.header()
	if err != nil {
		return 0, err
	}
	var n int64
	write := func(b []byte) error {
		m, err := w.Write(b)
		n += int64(m)
		return err
	}
	hb, _ := h.MarshalBinary()
	if err := write(hb); err != nil {
		return n, err
	}
	for _, s := range im.Sections() {
		if err := write(sectionHeader(s.Type, 0, uint64(len(s.Data)))); err != nil {
			return n, err
		}
		if err := write(s.Data); err != nil {
			return n, err
		}
	}
	return n, nil
}
