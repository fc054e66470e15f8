package nsm

import (
	"encoding/hex"
	"testing"
)

// Vectors from testdata/README.md (computed with Python's hashlib).
func TestPCRVectors(t *testing.T) {
	hx := func(p PCR) string { return hex.EncodeToString(p[:]) }
	hello := ExtendPCR(PCR{}, []byte("hello"))
	tests := []struct {
		name string
		got  PCR
		want string
	}{
		{"extend zero with hello", hello, "30e84b2d7eeffe6d90a475797b35e59a11b0da473eee4b3b8edfe73daf0279801bb18730c39db7f27f2f77b7b458cb9e"},
		{"then with world", ExtendPCR(hello, []byte("world")), "b2813aa7c511db60aefc74615b21fc7b96cc468692c70350537f344db9f9458ecbe1fcce9772030cba1e22c9ff6bf4f5"},
		{"measure hello", Measure([]byte("hello")), "1d9b87caf048435fc39a4a0a8e4e864af9c9a584b3a3b436193bb8b60125698089f57479f370637f16fcce8a1852d1bc"},
		{"measure abc+def", Measure([]byte("abc"), []byte("def")), "77f653175b6df9be5f49a4b68110ee01e795b667dd6a8c6a83e4c2147598c95061f374fb93fc6a8c49d4a556a9dc11a0"},
		{"measure nothing", Measure(), "21b9efbc184807662e966d34f390821309eeac6802309798826296bf3e8bec7c10edb30948c90ba67310f7b964fc500a"},
	}
	for _, tc := range tests {
		if hx(tc.got) != tc.want {
			t.Errorf("%s = %s, want %s", tc.name, hx(tc.got), tc.want)
		}
	}
}

func TestBank(t *testing.T) {
	b := NewBank(map[int]PCR{0: {1}, 40: {2}})
	if v, locked, code := b.Describe(0); code != Success || !locked || v[0] != 1 {
		t.Errorf("PCR0 = %x locked %v code %s, want 01…, locked", v[:2], locked, code)
	}
	for _, tc := range []struct {
		name string
		got  ErrorCode
		want ErrorCode
	}{
		{"describe 32", func() ErrorCode { _, _, c := b.Describe(32); return c }(), InvalidIndex},
		{"extend 15 (locked at boot)", func() ErrorCode { _, c := b.Extend(15, nil); return c }(), ReadOnlyIndex},
		{"extend 16", func() ErrorCode { _, c := b.Extend(16, []byte("x")); return c }(), Success},
		{"extend 32", func() ErrorCode { _, c := b.Extend(32, nil); return c }(), InvalidIndex},
		{"lock 16", b.Lock(16), Success},
		{"extend 16 after lock", func() ErrorCode { _, c := b.Extend(16, nil); return c }(), ReadOnlyIndex},
		{"lock 16 again", b.Lock(16), Success},
		{"lock 32", b.Lock(32), InvalidIndex},
		{"lock range 33", b.LockRange(33), InvalidIndex},
		{"lock range 20", b.LockRange(20), Success},
		{"extend 19", func() ErrorCode { _, c := b.Extend(19, nil); return c }(), ReadOnlyIndex},
		{"extend 20", func() ErrorCode { _, c := b.Extend(20, nil); return c }(), Success},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, tc.got, tc.want)
		}
	}
	if l := b.Locked(); len(l) != 20 || l[19] != 19 {
		t.Errorf("locked = %v, want 0..19", l)
	}
}
