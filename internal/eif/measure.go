package eif

import (
	"bytes"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"

	"github.com/nitroinit/nitroinit/internal/nitro"
)

// PCR is one SHA-384 platform configuration register value.
type PCR [sha512.Size384]byte

// String returns the PCR in lower-case hex, as nitro-cli prints it.
func (p PCR) String() string { return hex.EncodeToString(p[:]) }

// MarshalText implements encoding.TextMarshaler (hex).
func (p PCR) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler: 96 hex digits.
func (p *PCR) UnmarshalText(b []byte) error {
	if hex.DecodedLen(len(b)) != len(p) {
		return fmt.Errorf("eif: PCR %q: want %d hex digits", b, 2*len(p))
	}
	_, err := hex.Decode(p[:], b)
	if err != nil {
		return fmt.Errorf("eif: PCR %q: %w", b, err)
	}
	return nil
}

// Measurements are an image's PCRs as nitro-cli computes them at build time
// and the Nitro hypervisor at boot:
//
//	PCR0 = extend(kernel ‖ cmdline ‖ ramdisk 0 ‖ … ‖ ramdisk n)
//	PCR1 = extend(kernel ‖ cmdline ‖ ramdisk 0)
//	PCR2 = extend(ramdisk 1 ‖ … ‖ ramdisk n)
//	PCR8 = extend(signing certificate DER)       (signed images only)
//
// where extend(d) = SHA-384(48 zero bytes ‖ SHA-384(d)), one extension of a
// zeroed register. Section headers and metadata are never measured.
type Measurements struct {
	PCR0, PCR1, PCR2 PCR
	// PCR8 is nil for an unsigned image.
	PCR8 *PCR
}

// HashAlgorithm is the value nitro-cli prints for it (Rust's Debug output).
const HashAlgorithm = "Sha384 { ... }"

// MarshalJSON writes {"HashAlgorithm": ..., "PCR0": ..., ...} in
// nitro-cli's key order.
func (m Measurements) MarshalJSON() ([]byte, error) {
	type pcrs struct {
		HashAlgorithm    string
		PCR0, PCR1, PCR2 PCR
		PCR8             *PCR `json:",omitempty"`
	}
	return json.Marshal(pcrs{HashAlgorithm, m.PCR0, m.PCR1, m.PCR2, m.PCR8})
}

// extend returns SHA-384(zero register ‖ digest).
func extend(digest []byte) PCR {
	h := sha512.New384()
	h.Write(make([]byte, sha512.Size384))
	h.Write(digest)
	var p PCR
	h.Sum(p[:0])
	return p
}

// Extend returns the PCR value after one extension of a zeroed register
// with SHA-384(data): what PCR8 holds for a certificate's DER.
func Extend(data []byte) PCR {
	d := sha512.Sum384(data)
	return extend(d[:])
}

// measurer feeds the section data of an image to the three hashes.
type measurer struct {
	image, boot, app hash.Hash
	ramdisks         int
}

func newMeasurer() *measurer {
	return &measurer{image: sha512.New384(), boot: sha512.New384(), app: sha512.New384()}
}

func (m *measurer) add(typ uint16, r io.Reader) error {
	var w io.Writer
	switch typ {
	case nitro.EIFSectionKernel, nitro.EIFSectionCmdline:
		w = io.MultiWriter(m.image, m.boot)
	case nitro.EIFSectionRamdisk:
		if m.ramdisks == 0 {
			w = io.MultiWriter(m.image, m.boot)
		} else {
			w = io.MultiWriter(m.image, m.app)
		}
		m.ramdisks++
	default:
		return nil
	}
	_, err := io.Copy(w, r)
	return err
}

func (m *measurer) result() Measurements {
	return Measurements{
		PCR0: extend(m.image.Sum(nil)),
		PCR1: extend(m.boot.Sum(nil)),
		PCR2: extend(m.app.Sum(nil)),
	}
}

// orderForPCR returns the sections in the order nitro-cli hashes them:
// kernel, cmdline, then the ramdisks in file order. eif_build writes them
// in that order anyway; this keeps the PCRs right for any valid layout.
func orderForPCR(types []uint16) []int {
	var idx []int
	for _, want := range []uint16{nitro.EIFSectionKernel, nitro.EIFSectionCmdline, nitro.EIFSectionRamdisk} {
		for i, t := range types {
			if t == want {
				idx = append(idx, i)
			}
		}
	}
	return idx
}

// Measure returns the image's PCRs. PCR8 is set when the image carries a
// signature (see Sign).
func (im *Image) Measure() (Measurements, error) {
	secs := im.Sections()
	types := make([]uint16, len(secs))
	for i, s := range secs {
		types[i] = s.Type
	}
	m := newMeasurer()
	for _, i := range orderForPCR(types) {
		if err := m.add(secs[i].Type, bytes.NewReader(secs[i].Data)); err != nil {
			return Measurements{}, err
		}
	}
	res := m.result()
	if im.Signature != nil {
		cert, _, err := parseSignature(im.Signature)
		if err != nil {
			return Measurements{}, err
		}
		p := Extend(cert)
		res.PCR8 = &p
	}
	return res, nil
}

// Measure reads the file's sections and returns its PCRs, PCR8 included
// when the file is signed.
func (f *File) Measure() (Measurements, error) {
	types := make([]uint16, len(f.Sections))
	for i, s := range f.Sections {
		types[i] = s.Type
	}
	m := newMeasurer()
	for _, i := range orderForPCR(types) {
		if err := m.add(f.Sections[i].Type, f.Reader(i)); err != nil {
			return Measurements{}, fmt.Errorf("eif: reading section %d (%s): %w", i, TypeName(f.Sections[i].Type), err)
		}
	}
	res := m.result()
	sig, err := f.Signature()
	if err != nil {
		return Measurements{}, err
	}
	if sig != nil {
		cert, _, err := parseSignature(sig)
		if err != nil {
			return Measurements{}, err
		}
		p := Extend(cert)
		res.PCR8 = &p
	}
	return res, nil
}
