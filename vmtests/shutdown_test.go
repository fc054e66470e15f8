package vmtests

import (
	"strings"
	"testing"

	"github.com/nitroinit/nitroinit/internal/enclavesim"
	"github.com/nitroinit/nitroinit/internal/wire"
)

func TestShutdown(t *testing.T) {
	e := mainVM(t)

	t.Run("power_off_stops_services_and_flushes_logs", func(t *testing.T) {
		e.explain(t, "trapper")
		e.waitState(t, "trapper", "running")
		// trapper's log streams to a host listener that stays open through
		// the shutdown: its "TERM" must arrive before the power-off.
		stream := e.streamTo(t, "trapper", 9102)

		// Over vsock, power-off needs exec, which this image does not grant.
		if out, errOut, code := e.initctl(t, "shutdown"); code != 1 || !strings.Contains(errOut, "permission denied") {
			t.Errorf("host initctl shutdown without exec: exit %d, stdout %q, stderr %q; want exit 1 and permission denied", code, out, errOut)
		}
		// halt runs `initctl shutdown` inside, as root over the Unix socket.
		// Its start may be answered with an error: the shutdown it begins
		// stops it too.
		e.do(t, wire.Request{Kind: wire.KindServiceEnable, Name: "halt"})
		e.try(wire.Request{Kind: wire.KindServiceStart, Name: "halt"})

		ex := e.waitEnd(t)
		if ex.Kind != enclavesim.ExitPowerOff || ex.Code != 0 {
			t.Errorf("VM ended with %s, want a power-off with QEMU status 0", ex)
		}
		got := stream()
		if !strings.Contains(got, "TERM") {
			t.Errorf("trapper's log stream lacks the TERM its SIGTERM handler wrote; it got:\n%s", got)
		}
		console := e.vm.Console()
		for _, want := range []string{"shutting down for power-off", "all services stopped; power-off"} {
			if !strings.Contains(console, want) {
				t.Errorf("console lacks %q", want)
			}
		}
	})
}
