package vmtests

import (
	"fmt"
	"testing"

	"github.com/nitroinit/nitroinit/internal/nitro"
)

// guestYAML is the init.yaml most guests boot with: the kernel's modules,
// the heartbeat to the host ($HOSTCID, filled in at boot), no root switch,
// and the control port open on vsock. top is added at the top level (after
// pivot_root) and control under control:, each as whole YAML lines with
// their indentation, or "".
func guestYAML(top, control string) string {
	return moduleYAML() + fmt.Sprintf(`
vsock:
  cid: $HOSTCID
  port: %d
  timeout: 60s
pivot_root: false
%scontrol:
  vsock_enabled: true
  vsock_port: %d
%s`, nitro.HeartbeatPort, top, nitro.ControlPort, control)
}

// runningPID waits until the service runs and returns its main PID.
func (e *enclave) runningPID(t testing.TB, name string) int {
	t.Helper()
	st := e.waitState(t, name, "running")
	if st.PID == nil {
		t.Fatalf("%s running without a PID: %+v", name, st)
	}
	return *st.PID
}
