package main

import (
	"reflect"
	"testing"
)

func TestParseArgs(t *testing.T) {
	t.Setenv("INIT_CONFIG", "")
	tests := []struct {
		argv    []string
		config  string
		ignored []string
		version bool
	}{
		{nil, "/etc/init.yaml", nil, false},
		{[]string{"-c", "/x.yaml"}, "/x.yaml", nil, false},
		{[]string{"--config=/y.yaml"}, "/y.yaml", nil, false},
		{[]string{"--config", "/z.yaml", "-V"}, "/z.yaml", nil, true},
		// The words the Nitro kernel command line hands to init.
		{[]string{"nomodules", "console=ttyS0"}, "/etc/init.yaml", []string{"nomodules", "console=ttyS0"}, false},
		{[]string{"-c"}, "/etc/init.yaml", []string{"-c (missing value)"}, false},
	}
	for _, tt := range tests {
		a := parseArgs(tt.argv)
		if a.config != tt.config || !reflect.DeepEqual(a.ignored, tt.ignored) || a.version != tt.version {
			t.Errorf("parseArgs(%q) = %+v", tt.argv, a)
		}
	}
	t.Setenv("INIT_CONFIG", "/env.yaml")
	if a := parseArgs(nil); a.config != "/env.yaml" {
		t.Errorf("INIT_CONFIG ignored: %+v", a)
	}
	if a := parseArgs([]string{"-c", "/flag.yaml"}); a.config != "/flag.yaml" {
		t.Errorf("flag does not beat INIT_CONFIG: %+v", a)
	}
}
