package wire

import (
	"encoding/json"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
)

// vectorsPath is a copy of shared/spec/wire-vectors.json, the reference wire
// shapes captured from a build of it.
const vectorsPath = "testdata/wire-vectors.json"

type vectors struct {
	Requests  []json.RawMessage `json:"requests"`
	Responses []json.RawMessage `json:"responses"`
}

func loadVectors(t *testing.T) vectors {
	t.Helper()
	data, err := os.ReadFile(vectorsPath)
	if err != nil {
		t.Fatalf("read golden vectors: %v", err)
	}
	var v vectors
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatalf("parse %s: %v", vectorsPath, err)
	}
	if len(v.Requests) == 0 || len(v.Responses) == 0 {
		t.Fatalf("%s holds no vectors", vectorsPath)
	}
	return v
}

// sameJSON compares two documents as JSON values, ignoring key order.
func sameJSON(t *testing.T, a, b []byte) bool {
	t.Helper()
	var va, vb any
	if err := json.Unmarshal(a, &va); err != nil {
		t.Fatalf("unmarshal %s: %v", a, err)
	}
	if err := json.Unmarshal(b, &vb); err != nil {
		t.Fatalf("unmarshal %s: %v", b, err)
	}
	return reflect.DeepEqual(va, vb)
}

func TestGoldenRequestsRoundTrip(t *testing.T) {
	v := loadVectors(t)
	seen := map[string]bool{}
	for _, raw := range v.Requests {
		var r Request
		if err := json.Unmarshal(raw, &r); err != nil {
			t.Errorf("decode %s: %v", raw, err)
			continue
		}
		seen[r.Kind] = true
		out, err := json.Marshal(r)
		if err != nil {
			t.Errorf("encode %+v: %v", r, err)
			continue
		}
		if !sameJSON(t, raw, out) {
			t.Errorf("round trip changed the value:\n in:  %s\n out: %s", raw, out)
		}
	}
	// Every reference variant has a vector; only our additions may lack one.
	for _, k := range RequestKinds() {
		if !seen[k] && k != KindServiceLogsFollow {
			t.Errorf("request variant %s has no golden vector", k)
		}
	}
}

func TestGoldenResponsesRoundTrip(t *testing.T) {
	v := loadVectors(t)
	for _, raw := range v.Responses {
		var r Response
		if err := json.Unmarshal(raw, &r); err != nil {
			t.Errorf("decode %s: %v", raw, err)
			continue
		}
		out, err := json.Marshal(r)
		if err != nil {
			t.Errorf("encode %+v: %v", r, err)
			continue
		}
		if !sameJSON(t, raw, out) {
			t.Errorf("round trip changed the value:\n in:  %s\n out: %s", raw, out)
		}
	}
}

func TestRequestDecode(t *testing.T) {
	tests := []struct {
		in      string
		want    Request
		wantErr string
	}{
		{in: `"Ping"`, want: Request{Kind: KindPing}},
		{in: `{"Ping":null}`, want: Request{Kind: KindPing}},
		{in: " \"SystemStatus\"\n", want: Request{Kind: KindSystemStatus}},
		{in: `{"ServiceLogsFollow":{"name":"a","lines":5}}`, want: Request{Kind: KindServiceLogsFollow, Name: "a", Lines: 5}},
		{in: `{"ProcessStart":{"command":"/bin/true"}}`, want: Request{Kind: KindProcessStart, Command: "/bin/true"}},
		{in: `{"ServiceStart":{"name":"a","extra":1}}`, want: Request{Kind: KindServiceStart, Name: "a"}},
		{in: `"Frobnicate"`, wantErr: `unknown request "Frobnicate"`},
		{in: `{"Frobnicate":{"x":1}}`, wantErr: `unknown request "Frobnicate"`},
		{in: `{"ServiceStart":{}}`, wantErr: `missing field "name"`},
		{in: `{"ServiceStart":null}`, wantErr: `needs an object`},
		{in: `{"ProcessKill":{"pid":"x","signal":9}}`, wantErr: `field "pid"`},
		{in: `{"Ping":null,"ListServices":null}`, wantErr: `exactly one key`},
		{in: `[1]`, wantErr: `single-key object`},
		{in: `{"Ping":{"a":1}}`, wantErr: `takes no fields`},
	}
	for _, tc := range tests {
		var got Request
		err := json.Unmarshal([]byte(tc.in), &got)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("decode %s: err %v, want containing %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("decode %s: %v", tc.in, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("decode %s = %+v, want %+v", tc.in, got, tc.want)
		}
	}
}

func TestUnknownRequestErrorType(t *testing.T) {
	var r Request
	err := json.Unmarshal([]byte(`"NoSuchThing"`), &r)
	var ue *UnknownRequestError
	if !errors.As(err, &ue) || ue.Kind != "NoSuchThing" {
		t.Fatalf("err = %v, want *UnknownRequestError for NoSuchThing", err)
	}
}

func TestResponseEncodeAdditions(t *testing.T) {
	tests := []struct {
		r    Response
		want string
	}{
		{Response{Kind: KindLogLine, Line: "x", Missed: 3}, `{"LogLine":{"line":"x","missed":3}}`},
		{Response{Kind: KindServiceList}, `{"ServiceList":{"services":[]}}`},
		{Response{Kind: KindServiceLogs}, `{"ServiceLogs":{"logs":[]}}`},
		{Errorf("bad %d", 1), `{"Error":{"message":"bad 1"}}`},
		{Success("ok"), `{"Success":{"message":"ok"}}`},
		{Response{Kind: KindPong}, `"Pong"`},
	}
	for _, tc := range tests {
		out, err := json.Marshal(tc.r)
		if err != nil {
			t.Errorf("encode %+v: %v", tc.r, err)
			continue
		}
		if string(out) != tc.want {
			t.Errorf("encode %+v = %s, want %s", tc.r, out, tc.want)
		}
	}
	if _, err := json.Marshal(Response{Kind: "Bogus"}); err == nil {
		t.Error("encoding an unknown response variant succeeded")
	}
}

// chunkReader returns its data a few bytes per Read and then blocks
// (returns an error the test would see) instead of EOF, like a client that
// never half-closes.
type chunkReader struct {
	data []byte
	step int
}

var errWouldBlock = errors.New("read past the end: the reader would block here")

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, errWouldBlock
	}
	n := min(c.step, len(c.data), len(p))
	copy(p, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}

func TestReadValue(t *testing.T) {
	tests := []struct {
		in      string
		max     int
		want    string
		wantErr error
	}{
		{in: `"Ping"`, want: `"Ping"`},
		{in: "  \n\"Ping\"\n", want: `"Ping"`},
		{in: `{"ServiceStart":{"name":"a}\"]"}}`, want: `{"ServiceStart":{"name":"a}\"]"}}`},
		{in: `{"A":{"b":[1,{"c":"\\"}]}}trailing`, want: `{"A":{"b":[1,{"c":"\\"}]}}`},
		{in: `{"A":{}`, wantErr: errWouldBlock},
		{in: `x`, want: `x`},
		{in: `{"A":"` + strings.Repeat("x", 100) + `"}`, max: 50, wantErr: ErrTooLarge},
		{in: `{"A":"xx"}`, max: 10, want: `{"A":"xx"}`},
		{in: `{"A":"xxx"}`, max: 10, wantErr: ErrTooLarge},
	}
	for _, tc := range tests {
		for _, step := range []int{1, 3, 4096} {
			max := tc.max
			if max == 0 {
				max = MaxRequestSize
			}
			got, err := ReadValue(&chunkReader{data: []byte(tc.in), step: step}, max)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Errorf("ReadValue(%.40q, step %d) err = %v, want %v", tc.in, step, err, tc.wantErr)
				}
				continue
			}
			if err != nil || string(got) != tc.want {
				t.Errorf("ReadValue(%.40q, step %d) = %q, %v; want %q", tc.in, step, got, err, tc.want)
			}
		}
	}
}
