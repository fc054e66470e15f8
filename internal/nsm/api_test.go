package nsm_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/hf/nsm/request"
	"github.com/hf/nsm/response"

	"github.com/nitroinit/nitroinit/internal/nitro"
	"github.com/nitroinit/nitroinit/internal/nsm"
	"github.com/nitroinit/nitroinit/internal/nsm/frame"
	"github.com/nitroinit/nitroinit/internal/nsm/nsmtest"
)

// send encodes req as github.com/hf/nsm does and decodes the answer with its
// response type: the client's own encoders, not ours.
func send(t *testing.T, m *nsm.Module, req request.Request) response.Response {
	t.Helper()
	raw, err := cbor.Marshal(req.Encoded())
	if err != nil {
		t.Fatal(err)
	}
	var res response.Response
	if err := cbor.Unmarshal(m.Handle(raw), &res); err != nil {
		t.Fatalf("%T: decoding the answer: %v", req, err)
	}
	return res
}

func newModule(t *testing.T, pcrs map[int]nsm.PCR) *nsm.Module {
	t.Helper()
	m, err := nsm.New(nsm.Config{PCRs: pcrs})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// Wire shapes computed with Python's cbor2 (testdata/README.md).
func TestWireVectors(t *testing.T) {
	m := newModule(t, nil)
	tests := []struct{ req, want string }{
		{"a16b4465736372696265504352a165696e6465781820", "a1654572726f726c496e76616c6964496e646578"}, // DescribePCR{index: 32}
		{"a1684c6f636b50435273a16572616e676510", "684c6f636b50435273"},                               // LockPCRs{range: 16}
	}
	for _, tc := range tests {
		req, _ := hex.DecodeString(tc.req)
		if got := hex.EncodeToString(m.Handle(req)); got != tc.want {
			t.Errorf("Handle(%s) = %s, want %s", tc.req, got, tc.want)
		}
	}
}

func TestRequests(t *testing.T) {
	m := newModule(t, map[int]nsm.PCR{0: nsm.Measure([]byte("kernel"))})
	r := send(t, m, &request.DescribePCR{Index: 0})
	if r.DescribePCR == nil || !r.DescribePCR.Lock || !bytes.Equal(r.DescribePCR.Data, func() []byte { p := nsm.Measure([]byte("kernel")); return p[:] }()) {
		t.Errorf("DescribePCR 0 = %+v", r)
	}
	hello, _ := hex.DecodeString("30e84b2d7eeffe6d90a475797b35e59a11b0da473eee4b3b8edfe73daf0279801bb18730c39db7f27f2f77b7b458cb9e")
	if r := send(t, m, &request.ExtendPCR{Index: 16, Data: []byte("hello")}); r.ExtendPCR == nil || !bytes.Equal(r.ExtendPCR.Data, hello) {
		t.Errorf("ExtendPCR 16 hello = %+v, want %x", r, hello)
	}
	if r := send(t, m, &request.LockPCR{Index: 16}); r.LockPCR == nil {
		t.Errorf("LockPCR 16 = %+v", r)
	}
	if r := send(t, m, &request.LockPCRs{Range: 18}); r.LockPCRs == nil {
		t.Errorf("LockPCRs 18 = %+v", r)
	}
	d := send(t, m, &request.DescribeNSM{}).DescribeNSM
	if d == nil || d.MaxPCRs != 32 || d.Digest != "SHA384" || len(d.LockedPCRs) != 18 || d.ModuleID != m.ModuleID() || d.VersionMajor != 1 {
		t.Errorf("DescribeNSM = %+v", d)
	}
	if r := send(t, m, &request.GetRandom{}); r.GetRandom == nil || len(r.GetRandom.Random) != nsm.RandomSize {
		t.Errorf("GetRandom = %+v", r)
	}
	big := bytes.Repeat([]byte("u"), nitro.NSMFieldMax+1)
	for _, tc := range []struct {
		req  request.Request
		want response.ErrorCode
	}{
		{&request.DescribePCR{Index: 32}, "InvalidIndex"},
		{&request.ExtendPCR{Index: 0, Data: []byte("x")}, "ReadOnlyIndex"},
		{&request.ExtendPCR{Index: 17, Data: []byte("x")}, "ReadOnlyIndex"},
		{&request.ExtendPCR{Index: 32, Data: []byte("x")}, "InvalidIndex"},
		{&request.LockPCR{Index: 32}, "InvalidIndex"},
		{&request.LockPCRs{Range: 33}, "InvalidIndex"},
		{&request.Attestation{UserData: big}, "InputTooLarge"},
		{&request.Attestation{Nonce: big}, "InputTooLarge"},
		{&request.Attestation{PublicKey: big}, "InputTooLarge"},
		{&request.ExtendPCR{Index: 20, Data: big}, "InputTooLarge"},
	} {
		if r := send(t, m, tc.req); r.Error != tc.want {
			t.Errorf("%T %+v: error %q, want %q", tc.req, tc.req, r.Error, tc.want)
		}
	}
}

func TestMalformed(t *testing.T) {
	m := newModule(t, nil)
	for _, raw := range [][]byte{
		nil,
		{0xff},
		mustCBOR(t, "Nonsense"),
		mustCBOR(t, 7),
		mustCBOR(t, map[string]any{"DescribePCR": map[string]any{"index": 70000}}),
		mustCBOR(t, map[string]any{"DescribePCR": map[string]any{}}),
		mustCBOR(t, map[string]any{"ExtendPCR": map[string]any{"index": 16}}),
		mustCBOR(t, map[string]any{"DescribePCR": map[string]any{"index": 1}, "LockPCR": map[string]any{"index": 1}}),
		mustCBOR(t, map[string]any{"Attestation": map[string]any{"nonce": "text"}}),
		mustCBOR(t, [][][][][]int{{{{{1}}}}}),
		bytes.Repeat([]byte{0x80}, nitro.NSMRequestMax),
	} {
		var res response.Response
		if err := cbor.Unmarshal(m.Handle(raw), &res); err != nil || res.Error != "InvalidArgument" {
			t.Errorf("Handle(%x): %+v %v, want InvalidArgument", raw, res, err)
		}
	}
	if code := string(m.Handle(make([]byte, nitro.NSMRequestMax+1))); code != string(nsm.EncodeError(nsm.InputTooLarge)) {
		t.Errorf("oversized request: %x", code)
	}
}

func mustCBOR(t *testing.T, v any) []byte {
	b, err := cbor.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// verifyDocument runs the verifier that shares no code with our signer.
func verifyDocument(t *testing.T, rootPEM, doc []byte) (map[string]any, error) {
	return nsmtest.Verify(t, rootPEM, doc)
}

func TestAttestationVerifies(t *testing.T) {
	pcrs := map[int]nsm.PCR{0: nsm.Measure([]byte("a")), 1: nsm.Measure([]byte("b")), 2: nsm.Measure()}
	m := newModule(t, pcrs)
	send(t, m, &request.ExtendPCR{Index: 16, Data: []byte("hello")})
	r := send(t, m, &request.Attestation{UserData: []byte("user"), Nonce: []byte("nonce"), PublicKey: []byte("key")})
	if r.Attestation == nil {
		t.Fatalf("Attestation = %+v", r)
	}
	doc := r.Attestation.Document
	if doc[0] != 0x84 {
		t.Errorf("document starts %#x, want 0x84 (untagged COSE_Sign1)", doc[0])
	}
	got, err := verifyDocument(t, m.CA().RootPEM(), doc)
	if err != nil {
		t.Fatalf("independent verifier rejected the document: %v", err)
	}
	wantKeys := []any{"module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle", "public_key", "user_data", "nonce"}
	if fmt.Sprint(got["keys"]) != fmt.Sprint(wantKeys) {
		t.Errorf("payload keys %v, want %v", got["keys"], wantKeys)
	}
	if got["user_data"] != hex.EncodeToString([]byte("user")) || got["nonce"] != hex.EncodeToString([]byte("nonce")) ||
		got["public_key"] != hex.EncodeToString([]byte("key")) || got["digest"] != "SHA384" || got["module_id"] != m.ModuleID() {
		t.Errorf("payload %v", got)
	}
	vals := m.PCRs()
	gotPCRs := got["pcrs"].(map[string]any)
	if len(gotPCRs) != nitro.NSMPCRCount {
		t.Errorf("%d PCRs in the document, want %d", len(gotPCRs), nitro.NSMPCRCount)
	}
	for i, v := range vals {
		if gotPCRs[fmt.Sprint(i)] != hex.EncodeToString(v[:]) {
			t.Errorf("PCR%d = %v, want %x", i, gotPCRs[fmt.Sprint(i)], v)
		}
	}
	if gotPCRs["16"] != "30e84b2d7eeffe6d90a475797b35e59a11b0da473eee4b3b8edfe73daf0279801bb18730c39db7f27f2f77b7b458cb9e" {
		t.Errorf("PCR16 = %v", gotPCRs["16"])
	}
	other, err := nsm.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := verifyDocument(t, other.RootPEM(), doc); err == nil {
		t.Error("the document verified against a different root")
	}
	aws, err := os.ReadFile("testdata/aws-nitro-root-g1.pem")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := verifyDocument(t, aws, doc); err == nil {
		t.Error("the document verified against AWS's root")
	}
	// Our own Go verifier (used by initramfs demo) agrees.
	if d, err := nsm.Verify(doc, m.CA().Root, time.Now()); err != nil || string(d.Nonce) != "nonce" || d.PCRs[16] == nil {
		t.Errorf("nsm.Verify: %+v %v", d, err)
	}
	if _, err := nsm.Verify(doc, other.Root, time.Now()); err == nil {
		t.Error("nsm.Verify accepted a different root")
	}
	tampered := bytes.Clone(doc)
	tampered[len(tampered)-1] ^= 1
	if _, err := verifyDocument(t, m.CA().RootPEM(), tampered); err == nil {
		t.Error("a document with a flipped signature bit verified")
	}
	if _, err := nsm.Verify(tampered, m.CA().Root, time.Now()); err == nil {
		t.Error("nsm.Verify accepted a flipped signature bit")
	}
	// Absent fields are null, as on Nitro.
	r = send(t, m, &request.Attestation{})
	if got, err := verifyDocument(t, m.CA().RootPEM(), r.Attestation.Document); err != nil || got["user_data"] != nil || got["nonce"] != nil || got["public_key"] != nil {
		t.Errorf("attestation without fields: %v %v", got, err)
	}
}

func TestCADirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	a, err := nsm.LoadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	b, err := nsm.LoadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.RootPEM(), b.RootPEM()) {
		t.Error("a second load gave another root")
	}
	m, err := nsm.New(nsm.Config{CA: b})
	if err != nil {
		t.Fatal(err)
	}
	r := send(t, m, &request.Attestation{})
	if _, err := verifyDocument(t, a.RootPEM(), r.Attestation.Document); err != nil {
		t.Errorf("document from a loaded CA: %v", err)
	}
	os.WriteFile(filepath.Join(dir, nsm.IntermediateKeyFile), []byte("junk"), 0o600)
	if _, err := nsm.LoadCA(dir); err == nil {
		t.Error("LoadCA accepted a junk key")
	}
}

func TestServe(t *testing.T) {
	m := newModule(t, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- m.Serve(ctx, ln, t.Logf) }()
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			for j := 0; j < 5; j++ {
				if err := frame.Write(c, mustCBOR(t, "DescribeNSM")); err != nil {
					t.Error(err)
					return
				}
				b, err := frame.Read(c, nitro.NSMResponseMax)
				var res response.Response
				if err == nil {
					err = cbor.Unmarshal(b, &res)
				}
				if err != nil || res.DescribeNSM == nil {
					t.Errorf("DescribeNSM over the wire: %+v %v", res, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	// An oversized frame ends the connection.
	c, _ := net.Dial("tcp", ln.Addr().String())
	c.Write([]byte{0, 0, 0x10, 0x01})
	if _, err := frame.Read(c, nitro.NSMResponseMax); err == nil {
		t.Error("a 0x1001-byte frame was answered")
	}
	c.Close()
	cancel()
	if err := <-served; err != nil {
		t.Errorf("Serve: %v", err)
	}
}

func TestMeasureImage(t *testing.T) {
	dir := t.TempDir()
	k, r0, r1 := filepath.Join(dir, "k"), filepath.Join(dir, "r0"), filepath.Join(dir, "r1")
	os.WriteFile(k, []byte("ab"), 0o644)
	os.WriteFile(r0, []byte("c"), 0o644)
	os.WriteFile(r1, []byte("def"), 0o644)
	got, err := nsm.MeasureImage(nsm.Image{Kernel: k, Cmdline: "", Ramdisks: []string{r0}})
	if err != nil {
		t.Fatal(err)
	}
	// "ab" ‖ "" ‖ "c" vs testdata vectors: measure("abc"+"def") is the known one.
	got2, _ := nsm.MeasureImage(nsm.Image{Kernel: k, Cmdline: "c", Ramdisks: []string{r1}})
	const abcdef = "77f653175b6df9be5f49a4b68110ee01e795b667dd6a8c6a83e4c2147598c95061f374fb93fc6a8c49d4a556a9dc11a0"
	const empty = "21b9efbc184807662e966d34f390821309eeac6802309798826296bf3e8bec7c10edb30948c90ba67310f7b964fc500a"
	for _, tc := range []struct {
		name string
		p    nsm.PCR
		want string
	}{
		{"PCR0 ab|c|def", got2[0], abcdef},
		{"PCR1 ab|c|def", got2[1], abcdef},
		{"PCR2 single ramdisk", got[2], empty},
	} {
		if hex.EncodeToString(tc.p[:]) != tc.want {
			t.Errorf("%s = %x, want %s", tc.name, tc.p, tc.want)
		}
	}
	three, _ := nsm.MeasureImage(nsm.Image{Kernel: k, Cmdline: "", Ramdisks: []string{r0, r1}})
	if p0 := three[0]; hex.EncodeToString(p0[:]) != abcdef || three[1] != nsm.Measure([]byte("abc")) || three[2] != nsm.Measure([]byte("def")) {
		t.Errorf("two ramdisks: %x", three)
	}
}
