package eif

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/json"
	"errors"
	"hash/crc32"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nitroinit/nitroinit/internal/nitro"
)

// Values from testdata/README.md, computed with Python and coreutils.
const (
	goldenCRC  = 0x18f712ba
	goldenPCR0 = "359f56c88cbceca5625f256c7915baf9a7bbedab0f63a98a69045b240ab6c54a1a5a085838a966248c2c077312f2a0be"
	goldenPCR1 = "8e11e667508dec0460587259f718366fb53c0c87ade7823c98506699c4702efbc84174a4c9fb428512fbbad9e7a03e2e"
	goldenPCR2 = "439dc35e1c107284b40c7430fddcef5dccfec98b5d526b5056ba2bd5bc351c4528e232c9d075e72a0613e73846fbd19f"
	emptyPCR   = "21b9efbc184807662e966d34f390821309eeac6802309798826296bf3e8bec7c10edb30948c90ba67310f7b964fc500a"
)

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func goldenImage(t testing.TB) *Image {
	return &Image{
		Kernel:   readTestdata(t, "kernel"),
		Cmdline:  string(readTestdata(t, "cmdline")),
		Metadata: readTestdata(t, "metadata.json"),
		Ramdisks: [][]byte{readTestdata(t, "ramdisk0"), readTestdata(t, "ramdisk1")},
	}
}

func write(t testing.TB, im *Image) []byte {
	t.Helper()
	var buf bytes.Buffer
	n, err := im.WriteTo(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(buf.Len()) {
		t.Fatalf("WriteTo returned %d, wrote %d", n, buf.Len())
	}
	return buf.Bytes()
}

func open(b []byte) (*File, error) { return Open(bytes.NewReader(b), int64(len(b))) }

func TestWriteMatchesIndependentWriter(t *testing.T) {
	got := write(t, goldenImage(t))
	want := readTestdata(t, "golden.eif")
	if !bytes.Equal(got, want) {
		t.Fatalf("our EIF (%d bytes) differs from testdata/golden.eif (%d bytes) written by mkeif.py", len(got), len(want))
	}
	if crc := binary.BigEndian.Uint32(got[nitro.EIFHeaderSize-4:]); crc != goldenCRC {
		t.Errorf("header CRC %#08x, want %#08x", crc, goldenCRC)
	}
	if !bytes.Equal(write(t, goldenImage(t)), got) {
		t.Error("two builds of the same image differ")
	}
}

func TestHeaderLayout(t *testing.T) {
	b := readTestdata(t, "golden.eif")
	f, err := open(b)
	if err != nil {
		t.Fatal(err)
	}
	h := f.Header
	if h.Version != 4 || h.Flags != 0 || h.DefaultMemory != 1<<30 || h.DefaultCPUs != 2 || h.NumSections != 5 {
		t.Errorf("header %+v", h)
	}
	wantTypes := []uint16{nitro.EIFSectionKernel, nitro.EIFSectionCmdline, nitro.EIFSectionMetadata, nitro.EIFSectionRamdisk, nitro.EIFSectionRamdisk}
	for i, s := range f.Sections {
		if s.Type != wantTypes[i] {
			t.Errorf("section %d type %d, want %d", i, s.Type, wantTypes[i])
		}
	}
	cmd, err := f.Cmdline()
	if err != nil || cmd != string(readTestdata(t, "cmdline")) {
		t.Errorf("Cmdline() = %q, %v", cmd, err)
	}
	hb, _ := h.MarshalBinary()
	if !bytes.Equal(hb, b[:nitro.EIFHeaderSize]) {
		t.Error("MarshalBinary of the read header differs from the file's header")
	}
}

func TestMeasure(t *testing.T) {
	im := goldenImage(t)
	fromImage, err := im.Measure()
	if err != nil {
		t.Fatal(err)
	}
	f, err := open(readTestdata(t, "golden.eif"))
	if err != nil {
		t.Fatal(err)
	}
	fromFile, err := f.Measure()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []Measurements{fromImage, fromFile} {
		for _, c := range []struct {
			name      string
			got, want string
		}{{"PCR0", m.PCR0.String(), goldenPCR0}, {"PCR1", m.PCR1.String(), goldenPCR1}, {"PCR2", m.PCR2.String(), goldenPCR2}} {
			if c.got != c.want {
				t.Errorf("%s = %s, want %s", c.name, c.got, c.want)
			}
		}
		if m.PCR8 != nil {
			t.Error("PCR8 set for an unsigned image")
		}
	}
	im.Ramdisks = im.Ramdisks[:1]
	one, err := im.Measure()
	if err != nil {
		t.Fatal(err)
	}
	if one.PCR2.String() != emptyPCR {
		t.Errorf("single-ramdisk PCR2 = %s, want %s", one.PCR2, emptyPCR)
	}
	var back Measurements
	if err := json.Unmarshal([]byte(`"`+goldenPCR0+`"`), &back.PCR0); err != nil || back.PCR0 != fromImage.PCR0 {
		t.Errorf("PCR0 does not round-trip through JSON: %v", err)
	}
	j, _ := json.Marshal(fromImage)
	want := `{"HashAlgorithm":"Sha384 { ... }","PCR0":"` + goldenPCR0 + `","PCR1":"` + goldenPCR1 + `","PCR2":"` + goldenPCR2 + `"}`
	if string(j) != want {
		t.Errorf("JSON %s\nwant %s", j, want)
	}
}

// fixCRC rewrites the header CRC after a test changed the file, so that
// the check under test is the one that fires.
func fixCRC(b []byte) {
	crc := crc32.NewIEEE()
	crc.Write(b[:nitro.EIFHeaderSize-4])
	crc.Write(b[nitro.EIFHeaderSize:])
	binary.BigEndian.PutUint32(b[nitro.EIFHeaderSize-4:], crc.Sum32())
}

func TestOpenRefusesDamage(t *testing.T) {
	golden := readTestdata(t, "golden.eif")
	be := binary.BigEndian
	const offsets, sizes = 28, 28 + 32*8
	sec := func(i int) int { return int(be.Uint64(golden[offsets+8*i:])) } // section header offset
	for _, c := range []struct {
		name   string
		damage func([]byte) []byte
		field  string
	}{
		{"short", func(b []byte) []byte { return b[:100] }, "eif: header: the file is 100 bytes"},
		{"magic", func(b []byte) []byte { copy(b, "ELF\x7f"); return b }, "eif: magic:"},
		{"version", func(b []byte) []byte { be.PutUint16(b[4:], 3); return b }, "eif: version: 3;"},
		{"flags", func(b []byte) []byte { be.PutUint16(b[6:], 2); return b }, "eif: flags: 0x0002"},
		{"no sections", func(b []byte) []byte { be.PutUint16(b[26:], 0); return b }, "eif: section count: 0"},
		{"33 sections", func(b []byte) []byte { be.PutUint16(b[26:], 33); return b }, "eif: section count: 33"},
		{"offset", func(b []byte) []byte { be.PutUint64(b[offsets+8:], 9); return b }, "eif: section 1 offset: 9, want"},
		{"header size", func(b []byte) []byte { be.PutUint64(b[sizes+8*3:], 1); return b }, "eif: section 3 (ramdisk) size: the section header says"},
		{"section size", func(b []byte) []byte { be.PutUint64(b[sec(1)+4:], 1); return b }, "eif: section 1 (cmdline) size: the section header says 1"},
		{"type", func(b []byte) []byte { be.PutUint16(b[sec(2):], 9); return b }, "eif: section 2 type: 9"},
		{"section flags", func(b []byte) []byte { be.PutUint16(b[sec(0)+2:], 1); return b }, "eif: section 0 (kernel) flags: 0x0001"},
		{"truncated", func(b []byte) []byte { return b[:len(b)-1] }, "eif: section 4 (ramdisk) size: 26 bytes"},
		{"trailing", func(b []byte) []byte { return append(b, 0) }, "eif: length: 1 bytes follow"},
		{"extra offset", func(b []byte) []byte { be.PutUint64(b[offsets+8*7:], 5); return b }, "eif: section 7: offset 5"},
		{"data", func(b []byte) []byte { b[len(b)-2] ^= 1; return b }, "eif: crc:"},
		{"crc", func(b []byte) []byte { b[nitro.EIFHeaderSize-1] ^= 1; return b }, "eif: crc:"},
		{"two kernels", func(b []byte) []byte { be.PutUint16(b[sec(1):], nitro.EIFSectionKernel); fixCRC(b); return b }, "eif: kernel sections: 2"},
		{"no ramdisk", func(b []byte) []byte {
			be.PutUint16(b[sec(3):], nitro.EIFSectionSignature)
			be.PutUint16(b[sec(4):], nitro.EIFSectionMetadata)
			fixCRC(b)
			return b
		}, "eif: ramdisk sections: 0"},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := c.damage(bytes.Clone(golden))
			_, err := open(b)
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.HasPrefix(err.Error(), c.field) {
				t.Errorf("error %q, want it to start with %q", err, c.field)
			}
			if _, ok := err.(*FormatError); !ok {
				t.Errorf("error is %T, want *FormatError", err)
			}
		})
	}
}

func TestARM64(t *testing.T) {
	im := goldenImage(t)
	im.Flags = nitro.EIFFlagARM64
	f, err := open(write(t, im))
	if err != nil {
		t.Fatal(err)
	}
	if f.Arch() != "aarch64" {
		t.Errorf("Arch() = %s", f.Arch())
	}
	if err := f.CheckX86(); err == nil || !strings.Contains(err.Error(), "arm64") {
		t.Errorf("CheckX86() = %v, want an arm64 refusal", err)
	}
}

func testSigner(t testing.TB) ([]byte, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "eif test"},
		NotBefore:    time.Unix(0, 0),
		NotAfter:     time.Unix(1<<32, 0),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return der, key
}

func TestSign(t *testing.T) {
	der, key := testSigner(t)
	im := goldenImage(t)
	if err := im.Sign(der, key); err != nil {
		t.Fatal(err)
	}
	b := write(t, im)
	f, err := open(b)
	if err != nil {
		t.Fatal(err)
	}
	m, err := f.Measure()
	if err != nil {
		t.Fatal(err)
	}
	if m.PCR0.String() != goldenPCR0 || m.PCR2.String() != goldenPCR2 {
		t.Errorf("signing changed PCR0/2: %s %s", m.PCR0, m.PCR2)
	}
	certHash := sha512.Sum384(der)
	want := sha512.Sum384(append(make([]byte, 48), certHash[:]...))
	if m.PCR8 == nil || *m.PCR8 != PCR(want) {
		t.Fatalf("PCR8 = %v, want %x", m.PCR8, want)
	}
	if _, err := f.VerifySignature(m); err != nil {
		t.Fatal(err)
	}
	d, err := Describe(f)
	if err != nil || !d.IsSigned || d.SignatureCheck == nil || !*d.SignatureCheck {
		t.Fatalf("Describe = %+v, %v", d, err)
	}

	// The signature over a different PCR0 must not verify.
	other := goldenImage(t)
	other.Signature = im.Signature
	other.Ramdisks[1] = []byte("another app")
	f, err = open(write(t, other))
	if err != nil {
		t.Fatal(err)
	}
	m, _ = f.Measure()
	if _, err := f.VerifySignature(m); err == nil || !strings.Contains(err.Error(), "signature payload") {
		t.Errorf("signature over another PCR0 accepted: %v", err)
	}

	_, otherKey := testSigner(t)
	if err := goldenImage(t).Sign(der, otherKey); err == nil || !strings.Contains(err.Error(), "does not belong") {
		t.Errorf("Sign with a foreign key: %v", err)
	}
}

func TestDescribe(t *testing.T) {
	id := Identity{
		ImageName:     "app",
		ImageVersion:  "latest",
		BuildMetadata: BuildMetadata{BuildTime: BuildTime(time.Unix(0, 0)), BuildTool: "initramfs"},
		DockerInfo:    json.RawMessage(`{"Config":{"Cmd":["/app"]}}`),
	}
	meta, err := id.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	im := goldenImage(t)
	im.Metadata = meta
	f, err := open(write(t, im))
	if err != nil {
		t.Fatal(err)
	}
	d, err := Describe(f)
	if err != nil {
		t.Fatal(err)
	}
	if d.EifVersion != 4 || !d.CheckCRC || d.IsSigned || d.ImageName != "app" || d.ImageVersion != "latest" || d.ArchitectureType != "x86_64" {
		t.Errorf("Describe = %+v", d)
	}
	j, _ := json.Marshal(d)
	for _, key := range []string{`"EifVersion":4`, `"PCR0":"` + goldenPCR0, `"CheckCRC":true`, `"BuildTime":"1970-01-01T00:00:00+00:00"`, `"DockerInfo":{"Config"`} {
		if !bytes.Contains(j, []byte(key)) {
			t.Errorf("describe JSON lacks %s: %s", key, j)
		}
	}
	if bytes.Contains(j, []byte("SignatureCheck")) {
		t.Errorf("unsigned describe has SignatureCheck: %s", j)
	}
}

func TestWriteRefuses(t *testing.T) {
	for _, c := range []struct {
		name string
		im   Image
		want string
	}{
		{"no kernel", Image{Ramdisks: [][]byte{{1}}}, "no kernel"},
		{"no ramdisk", Image{Kernel: []byte{1}}, "no ramdisk"},
		{"too many", Image{Kernel: []byte{1}, Ramdisks: make([][]byte, 31)}, "33 sections"},
	} {
		if _, err := c.im.WriteTo(&bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
}

// FuzzOpen feeds arbitrary bytes to the reader, as they are and with the
// CRC made right: it must refuse with a *FormatError or accept without
// panicking, and what it accepts must measure and describe.
func FuzzOpen(f *testing.F) {
	f.Add(readTestdata(f, "golden.eif"))
	der, key := testSigner(f)
	im := goldenImage(f)
	if err := im.Sign(der, key); err != nil {
		f.Fatal(err)
	}
	f.Add(write(f, im))
	f.Fuzz(func(t *testing.T, b []byte) {
		check := func(b []byte) {
			file, err := open(b)
			if err != nil {
				var fe *FormatError
				if !errors.As(err, &fe) {
					t.Fatalf("Open refused with %T (%v), want a *FormatError", err, err)
				}
				return
			}
			if _, err := file.Measure(); err != nil {
				return
			}
			Describe(file)
			file.Cmdline()
		}
		check(b)
		// Again with the CRC made right, so that the checks behind it see
		// the mutations too.
		if len(b) >= nitro.EIFHeaderSize {
			b = bytes.Clone(b)
			fixCRC(b)
			check(b)
		}
	})
}
