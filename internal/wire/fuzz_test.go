package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"testing"
)

// splitReader hands out its data at most n bytes per Read, so that the
// fuzzer also decides where the socket's reads would split a request.
type splitReader struct {
	data []byte
	n    int
}

func (c *splitReader) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	k := min(c.n, len(p), len(c.data))
	copy(p, c.data[:k])
	c.data = c.data[k:]
	return k, nil
}

// wireSeeds are the request and response shapes the server and the client
// exchange, plus the framing corner cases ReadValue must survive.
var wireSeeds = []string{
	`"Ping"`,
	`{"Ping":null}`,
	`{"ServiceStatus":{"name":"web"}}`,
	`{"ServiceLogs":{"name":"web","lines":-1}}`,
	`{"ProcessStart":{"command":"/bin/sh","args":["-c","echo \"hi\""],"env":null}}`,
	`{"ProcessKill":{"pid":12,"signal":9}}`,
	`{"ServiceLogsStream":{"name":"a","vsock_cid":4294967295,"vsock_port":0}}`,
	`{"Success":{"message":"ok"}}`,
	`{"ServiceList":{"services":[{"name":"a","enabled":true,"active":false,"restart_policy":"always","restart_count":3}]}}`,
	`{"ServiceStatus":{"status":{"name":"a","pid":null,"exit_status":1,"dependencies":{"before":null}}}}`,
	`{"LogLine":{"line":"x","missed":18446744073709551615}}`,
	"  \n{\"a\":\"}\\\\\"}trailing",
	`[[[[[[[[[[`,
	`"\`,
	`{"Ping":{}} {"Ping":{}}`,
	"\x00",
}

// FuzzDecodeRequest drives the server's request path (ReadValue framing,
// then Request.UnmarshalJSON) and the client's response decoder with
// arbitrary bytes split at arbitrary read boundaries. Invariants: no panic;
// the framed value is a prefix of the input (after leading blanks) that does
// not depend on how reads split it; anything that decodes re-encodes to a
// form that decodes to the same encoding (the codec is a fixed point after
// one round).
func FuzzDecodeRequest(f *testing.F) {
	for _, s := range wireSeeds {
		f.Add([]byte(s), uint8(1))
		f.Add([]byte(s), uint8(200))
	}
	f.Fuzz(func(t *testing.T, data []byte, chunk uint8) {
		const max = 256
		n := int(chunk)%64 + 1
		got, err := ReadValue(&splitReader{data: data, n: n}, max)
		trimmed := bytes.TrimLeft(data, " \t\r\n")
		started := len(trimmed) > 0 && (trimmed[0] == '{' || trimmed[0] == '[' || trimmed[0] == '"')
		if started {
			if !bytes.HasPrefix(trimmed, got) {
				t.Fatalf("framed %q is not a prefix of the input %q", got, trimmed)
			}
			if len(got) > max {
				t.Fatalf("framed %d bytes past the %d-byte limit", len(got), max)
			}
			// One byte per read must frame the same value, or the server
			// would answer differently depending on the kernel's timing.
			again, err2 := ReadValue(&splitReader{data: data, n: 1}, max)
			if !bytes.Equal(again, got) || (err == nil) != (err2 == nil) {
				t.Fatalf("framing depends on read size: %q, %v with %d-byte reads; %q, %v with 1-byte reads", got, err, n, again, err2)
			}
		}
		if err != nil && !errors.Is(err, ErrTooLarge) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
			t.Fatalf("unexpected error kind %v", err)
		}

		for _, raw := range [][]byte{got, data} {
			var req Request
			if json.Unmarshal(raw, &req) == nil {
				roundTrip(t, "request", raw, func() any { return new(Request) }, req)
			}
			var resp Response
			if json.Unmarshal(raw, &resp) == nil {
				roundTrip(t, "response", raw, func() any { return new(Response) }, resp)
			}
		}
	})
}

// roundTrip checks that v, decoded from raw, encodes, and that decoding
// that encoding and encoding again gives identical bytes.
func roundTrip(t *testing.T, what string, raw []byte, fresh func() any, v any) {
	t.Helper()
	enc, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("%s decoded from %q does not encode: %v", what, raw, err)
	}
	back := fresh()
	if err := json.Unmarshal(enc, back); err != nil {
		t.Fatalf("%s decoded from %q encodes to %s, which does not decode: %v", what, raw, enc, err)
	}
	enc2, err := json.Marshal(back)
	if err != nil {
		t.Fatalf("%s re-decoded from %s does not encode: %v", what, enc, err)
	}
	if !bytes.Equal(enc, enc2) {
		t.Fatalf("%s from %q: encoding is not stable:\n first %s\nsecond %s", what, raw, enc, enc2)
	}
}
