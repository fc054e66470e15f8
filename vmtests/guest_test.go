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

	// AF_VSOCK through the guest kernel's loopback transport (vsock_loopback,
	// loaded at boot): the same listener the parent reaches, and the same
	// default classes for a vsock peer, whatever its CID.
	t.Run("initctl_over_vsock_loopback", func(t *testing.T) {
		e.explain(t, "loopsys", "loophalt")
		defer e.retire(t, "loopsys", "loophalt")
		e.do(t, wire.Request{Kind: wire.KindServiceEnable, Name: "loopsys"})
		e.try(wire.Request{Kind: wire.KindServiceStart, Name: "loopsys"})
		lines := e.waitLog(t, "loopsys", "init: exited with code")
		t.Logf("initctl system-status over vsock loopback:\n%s", strings.Join(lines, "\n"))
		if !containsLine(lines, "This connection: read, manage") || containsLine(lines, "This connection: read, manage, exec") {
			t.Errorf("system-status over vsock loopback does not show the default vsock classes (read, manage):\n%s", strings.Join(lines, "\n"))
		}
		if st := e.waitState(t, "loopsys", "exited"); st.ExitStatus == nil || *st.ExitStatus != 0 {
			t.Errorf("system-status over vsock loopback: exit status %v, want 0:\n%s", st.ExitStatus, strings.Join(lines, "\n"))
		}
		e.do(t, wire.Request{Kind: wire.KindServiceEnable, Name: "loophalt"})
		e.try(wire.Request{Kind: wire.KindServiceStart, Name: "loophalt"})
		lines = e.waitLog(t, "loophalt", "init: exited with code")
		t.Logf("initctl shutdown over vsock loopback:\n%s", strings.Join(lines, "\n"))
		if st := e.waitState(t, "loophalt", "exited"); st.ExitStatus == nil || *st.ExitStatus == 0 {
			t.Errorf("shutdown over vsock loopback with the default classes: exit status %v, want a refusal:\n%s", st.ExitStatus, strings.Join(lines, "\n"))
		}
		if !containsLine(lines, "exec") {
			t.Errorf("the refusal of shutdown over vsock loopback does not name the class it lacks (exec):\n%s", strings.Join(lines, "\n"))
		}
		// init is still up: the status request this makes would fail otherwise.
		e.status(t, "ctl")
	})
}
