package wire

import (
	"bytes"
	"encoding/json"
	"math/rand"
	"testing"
)

// TestAppendStringMatchesEncodingJSON: streamed answers must be the bytes a
// marshalled answer would be, so that they stay wire-compatible.
func TestAppendStringMatchesEncodingJSON(t *testing.T) {
	cases := []string{"", "plain", `"quoted" \ back`, "<a & b>", "\u2028\u2029", "\xff\xfe bad utf8 \xc3", "é ü 日本"}
	all := make([]byte, 256)
	for i := range all {
		all[i] = byte(i)
	}
	cases = append(cases, string(all))
	r := rand.New(rand.NewSource(1))
	for i := 0; i < 2000; i++ {
		b := make([]byte, r.Intn(40))
		r.Read(b)
		cases = append(cases, string(b))
	}
	for _, c := range cases {
		want, _ := json.Marshal(c)
		if got := AppendString(nil, []byte(c)); !bytes.Equal(got, want) {
			t.Fatalf("AppendString(%q) = %s, want %s", c, got, want)
		}
	}
}

func FuzzAppendString(f *testing.F) {
	f.Add([]byte("<\u2028\xff"))
	f.Fuzz(func(t *testing.T, b []byte) {
		want, _ := json.Marshal(string(b))
		if got := AppendString(nil, b); !bytes.Equal(got, want) {
			t.Fatalf("AppendString(%q) = %s, want %s", b, got, want)
		}
	})
}
