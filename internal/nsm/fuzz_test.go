package nsm_test

import (
	"testing"

	"github.com/fxamacker/cbor/v2"
	"github.com/hf/nsm/response"

	"github.com/nitroinit/nitroinit/internal/nitro"
	"github.com/nitroinit/nitroinit/internal/nsm"
)

// FuzzHandle: any request bytes get an answer the client library decodes,
// within the driver's response limit, and never a panic.
func FuzzHandle(f *testing.F) {
	for _, s := range []any{
		"DescribeNSM", "GetRandom",
		map[string]any{"DescribePCR": map[string]any{"index": 3}},
		map[string]any{"ExtendPCR": map[string]any{"index": 16, "data": []byte("x")}},
		map[string]any{"LockPCRs": map[string]any{"range": 20}},
		map[string]any{"Attestation": map[string]any{"nonce": []byte("n"), "user_data": nil}},
	} {
		b, _ := cbor.Marshal(s)
		f.Add(b)
	}
	m, err := nsm.New(nsm.Config{})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, req []byte) {
		resp := m.Handle(req)
		if len(resp) > nitro.NSMResponseMax {
			t.Fatalf("response of %d bytes", len(resp))
		}
		var r response.Response
		if err := cbor.Unmarshal(resp, &r); err != nil {
			t.Fatalf("Handle(%x) = %x, which the client cannot decode: %v", req, resp, err)
		}
	})
}
