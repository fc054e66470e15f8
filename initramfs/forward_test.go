package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestForwardFlagsPlan(t *testing.T) {
	dir := t.TempDir()
	allow := filepath.Join(dir, "allow.yaml")
	os.WriteFile(allow, []byte("allowlist:\n- {address: 127.0.0.1, port: 8000}\n"), 0o644)
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("allowlist:\n- {address: 127.0.0.1, port: eighty}\n"), 0o644)
	tests := []struct {
		f    fwdFlags
		n    int
		want string
	}{
		{fwdFlags{ingress: []string{"127.0.0.1:8080=80"}, egress: []string{"8443"}, allow: allow}, 2, ""},
		{fwdFlags{egress: []string{"8443=127.0.0.1:8000"}}, 1, ""},
		{fwdFlags{ingress: []string{"127.0.0.1:8080"}}, 0, `--ingress: "127.0.0.1:8080": want HOST:PORT=GUEST_PORT`},
		{fwdFlags{ingress: []string{"127.0.0.1:8080=x"}}, 0, `bad guest port "x"`},
		{fwdFlags{ingress: []string{"nohost=8"}}, 0, `--ingress: "tcp:nohost"`},
		{fwdFlags{egress: []string{"8443"}}, 0, "need --allow FILE"},
		{fwdFlags{egress: []string{"x=1.2.3.4:5"}}, 0, `bad host port "x"`},
		{fwdFlags{egress: []string{"8443=127.0.0.1:9"}, allow: allow}, 0, "not on the allow-list " + allow},
		{fwdFlags{egress: []string{"8443"}, allow: bad}, 0, bad + `:2: "eighty"`},
	}
	for _, tc := range tests {
		plans, err := tc.f.plan()
		if tc.want == "" {
			if err != nil || len(plans) != tc.n {
				t.Errorf("%+v: %d plans, %v; want %d", tc.f, len(plans), err, tc.n)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want %q", tc.f, err, tc.want)
		}
	}
}
