package vmtests

import (
	"strings"
	"testing"

	"github.com/nitroinit/nitroinit/internal/wire"
)

func TestGuest(t *testing.T) {
	e := mainVM(t)

	t.Run("initctl_over_the_unix_socket", func(t *testing.T) {
		e.explain(t, "inside", "insidesys")
		defer e.retire(t, "inside", "insidesys")
		for _, n := range []string{"inside", "insidesys"} {
			e.do(t, wire.Request{Kind: wire.KindServiceEnable, Name: n})
			e.try(wire.Request{Kind: wire.KindServiceStart, Name: n})
		}
		// Wait for the end: the table's lines arrive one by one.
		lines := e.waitLog(t, "inside", "init: exited with code")
		for _, want := range []string{"NAME", "ENABLED", "talk ", "ctl "} {
			if !containsLine(lines, want) {
				t.Errorf("in-guest initctl list lacks %q:\n%s", want, strings.Join(lines, "\n"))
			}
		}
		lines = e.waitLog(t, "insidesys", "init: exited with code")
		if !containsLine(lines, "System Status") {
			t.Errorf("in-guest system-status:\n%s", strings.Join(lines, "\n"))
		}
		// Root on the Unix socket gets every class.
		if !containsLine(lines, "This connection: read, manage, exec") {
			t.Errorf("in-guest system-status does not show root's classes:\n%s", strings.Join(lines, "\n"))
		}
		if st := e.waitState(t, "inside", "exited"); st.ExitStatus == nil || *st.ExitStatus != 0 {
			t.Errorf("in-guest initctl list exit status %v, want 0", st.ExitStatus)
		}
	})
}
