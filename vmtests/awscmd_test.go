package vmtests

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nitroinit/nitroinit/initramfs/image"
	"github.com/nitroinit/nitroinit/internal/enclavesim"
)

// awsGuest is an image like the ones nitro-cli builds from a container:
// the command in /cmd and its environment in /env, no service files. The
// command prints a line a second for ten seconds and exits by itself.
func awsGuest() guest {
	return guest{
		config: moduleYAML() + `
vsock:
  cid: $HOSTCID
  port: 9000
  timeout: 60s
control:
  vsock_enabled: true
  vsock_port: 9001
`,
		files: []image.File{
			{Data: []byte("/bin/svc\ncount\n10\n1s\n"), Dst: "/cmd"},
			{Data: []byte("GREETING=hello from /env\nEMPTY=\n"), Dst: "/env"},
		},
	}
}

// TestAWSCmd boots an AWS-style image: init runs /cmd with /env as the
// service "app", captures its output, and powers the enclave off when it
// exits.
func TestAWSCmd(t *testing.T) {
	e := soloBoot(t, "awscmd", awsGuest())
	defer e.stop()

	t.Run("app_runs_from_cmd_and_env", func(t *testing.T) {
		e.explain(t, "app")
		want := `boot: /cmd found: ["/bin/svc" "count" "10" "1s"] with 2 variables from /env`
		if !strings.Contains(e.vm.Console(), want) {
			t.Errorf("console lacks %q", want)
		}
		// pivot_root is on by default; this image has no /rootfs.
		if !strings.Contains(e.vm.Console(), "boot: /rootfs does not exist; staying on the initramfs root") {
			t.Errorf("console does not say the missing /rootfs was skipped")
		}
		st := e.status(t, "app")
		if st.RestartPolicy != "no" || !strings.Contains(st.ExecStart, "/bin/svc count 10 1s") {
			t.Errorf("app: %+v; want restart policy no and the /cmd command", st)
		}
	})

	// The app's log streams to a host listener from now on: the stream
	// lasts through the shutdown, so it shows the app's last line even
	// though nobody can ask for the log once the guest is gone.
	stream := e.streamTo(t, "app", 9103)

	t.Run("app_output_captured", func(t *testing.T) {
		e.explain(t, "app")
		e.waitLog(t, "app", "line 000000002")
	})

	t.Run("powers_off_when_the_app_exits", func(t *testing.T) {
		e.explain(t, "app")
		// Nothing asks for the power-off: the app's own exit must cause it.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		ex, err := e.vm.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if ex.Kind != enclavesim.ExitPowerOff || ex.Code != 0 {
			t.Errorf("VM ended with %s, want a power-off with QEMU status 0", ex)
		}
		if got := stream(); !strings.Contains(got, "line 000000010") {
			t.Errorf("the app's log stream lacks its 10th and last line; it got:\n%s", got)
		}
		console := e.vm.Console()
		for _, want := range []string{"supervise: app: exited with code 0", "all services stopped; power-off"} {
			if !strings.Contains(console, want) {
				t.Errorf("console lacks %q", want)
			}
		}
	})
}
