package config

import (
	"strings"
	"testing"
)

func TestLoopbackKey(t *testing.T) {
	tests := []struct {
		yaml string
		want bool
		err  string
	}{
		{"", true, ""},
		{"loopback: false\n", false, ""},
		{"loopback: true\n", true, ""},
		{"service_dir: /s\nloopback: maybe\n", true, `init.yaml:2: loopback: "maybe" is not true or false`},
	}
	for _, tc := range tests {
		c, errs := ParseInit("init.yaml", []byte(tc.yaml))
		if c.Loopback != tc.want {
			t.Errorf("%q: Loopback = %v, want %v", tc.yaml, c.Loopback, tc.want)
		}
		switch {
		case tc.err == "" && len(errs) != 0:
			t.Errorf("%q: unexpected errors %v", tc.yaml, errs)
		case tc.err != "" && (len(errs) != 1 || !strings.Contains(errs[0].Error(), tc.err)):
			t.Errorf("%q: errors %v, want one containing %q", tc.yaml, errs, tc.err)
		}
	}
}
