package procfs

import "testing"

// TestPrintable: names and command lines with control characters cannot
// forge or garble ps rows (issue 10 item 8).
func TestPrintable(t *testing.T) {
	for in, want := range map[string]string{
		"nginx: worker":           "nginx: worker",
		"héllo wörld":             "héllo wörld",
		"evil\n1 0 init":          `evil\n1 0 init`,
		"tab\there":               `tab\there`,
		"\x1b[2Jclear":            `\x1b[2Jclear`,
		"bad\xffbyte":             `bad\xffbyte`,
		"del\x7f c1\u0085":        `del\x7f c1\u0085`,
		"back\\slash stays as is": "back\\slash stays as is",
	} {
		if got := Printable(in); got != want {
			t.Errorf("Printable(%q) = %q, want %q", in, got, want)
		}
	}
	if got := Cmdline([]byte("sh\x00-c\x00echo a\nb\x00"), "sh"); got != `sh -c echo a\nb` {
		t.Errorf("Cmdline = %q", got)
	}
	if got := Cmdline(nil, "kworker\n"); got != `[kworker\n]` {
		t.Errorf("Cmdline of a kernel thread = %q", got)
	}
}
