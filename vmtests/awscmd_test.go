package vmtests

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nitroinit/nitroinit/initramfs/image"
	"github.com/nitroinit/nitroinit/internal/enclavesim"
	"github.com/nitroinit/nitroinit/internal/wire"
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

	t.Run("app_output_captured", func(t *testing.T) {
		e.explain(t, "app")
		e.waitLog(t, "app", "line 000000002")
	})

	t.Run("powers_off_when_the_app_exits", func(t *testing.T) {
		e.explain(t, "app")
		// Nothing asks for the power-off: the app's own exit must cause it.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		var last []string
		for ctx.Err() == nil {
			r, err := e.try(wire.Request{Kind: wire.KindServiceLogs, Name: "app", Lines: 3})
			if err != nil {
				break // the guest is going down
			}
			last = r.Logs
			// The app sleeps a second after its last line before it
			// exits: polling faster than that sees the line.
			time.Sleep(200 * time.Millisecond)
		}
		ex, err := e.vm.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if ex.Kind != enclavesim.ExitPowerOff || ex.Code != 0 {
			t.Errorf("VM ended with %s, want a power-off with QEMU status 0", ex)
		}
		if !containsLine(last, "line 000000010") {
			t.Errorf("the app's last lines seen before the power-off: %q; want its 10th line captured", last)
		}
		if !strings.Contains(e.vm.Console(), "all services stopped; power-off") {
			t.Errorf("console lacks init's power-off line")
		}
	})
}
