package vmtests

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/nitroinit/nitroinit/initramfs/image"
	"github.com/nitroinit/nitroinit/internal/enclavesim"
)

// awsGuest is an image like the ones nitro-cli builds from a container:
// the command in /cmd and its environment in /env, no service files. The
// command prints its environment, then a line a second for ten seconds, and
// exits by itself.
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
		// The kernel hands init unknown key=value words as environment
		// variables; the app must not see them.
		append: "vsock_heartbeat_dummy=1",
		files: []image.File{
			{Data: []byte("/bin/svc\nenv\ncount\n10\n1s\n"), Dst: "/cmd"},
			{Data: []byte(strings.Join(awsEnv, "\n") + "\n"), Dst: "/env"},
		},
	}
}

// awsEnv is the image's /env: the app must see these variables and no
// others, as under AWS's init (docs/boot.md).
var awsEnv = []string{"GREETING=hello from /env", "EMPTY=", "PATH=/usr/bin:/bin"}

// TestAWSCmd boots an AWS-style image: init runs /cmd with /env as the
// service "app" with /env alone as its environment, shows its output on the
// console, captures it too, and powers the enclave off when it
// exits.
func TestAWSCmd(t *testing.T) {
	e := soloBoot(t, "awscmd", awsGuest())
	defer e.stop()

	t.Run("app_runs_from_cmd_and_env", func(t *testing.T) {
		e.explain(t, "app")
		want := `boot: /cmd found: ["/bin/svc" "env" "count" "10" "1s"] with 3 variables from /env`
		if !strings.Contains(e.vm.Console(), want) {
			t.Errorf("console lacks %q", want)
		}
		// pivot_root is on by default; this image has no /rootfs.
		if !strings.Contains(e.vm.Console(), "boot: /rootfs does not exist; staying on the initramfs root") {
			t.Errorf("console does not say the missing /rootfs was skipped")
		}
		st := e.status(t, "app")
		if st.RestartPolicy != "no" || !strings.Contains(st.ExecStart, "/bin/svc env count 10 1s") {
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

	// The environment the app printed, from its captured log: the lines
	// between init's "started" line and the first counted line.
	t.Run("app_environment_is_env_alone", func(t *testing.T) {
		e.explain(t, "app")
		lines := e.waitLog(t, "app", "line 000000001")
		var got []string
		in := false
		for _, l := range lines {
			_, text, _ := strings.Cut(l, "] ")
			switch {
			case strings.HasPrefix(text, "init: started "):
				in = true
			case strings.HasPrefix(text, "line 000000001"):
				in = false
			case in:
				got = append(got, text)
			}
		}
		slices.Sort(got)
		want := slices.Sorted(slices.Values(awsEnv))
		if !slices.Equal(got, want) {
			t.Errorf("the app's environment is\n  %q\nwant exactly /env's\n  %q", got, want)
		}
	})

	// The app's output on the console as it wrote it, without log
	// timestamps: what nitro-cli console shows under AWS's init.
	t.Run("app_output_on_console", func(t *testing.T) {
		e.explain(t, "app")
		wantLines := append(slices.Clone(awsEnv), "line 000000002 "+strings.Repeat("x", 80))
		eventually(t, waitTimeout, "the app's output on the console", func() (bool, string) {
			console := consoleLines(e.vm.Console())
			var missing []string
			for _, w := range wantLines {
				if !slices.Contains(console, w) {
					missing = append(missing, w)
				}
			}
			return len(missing) == 0, fmt.Sprintf("console lacks the lines %q", missing)
		})
	})

	t.Run("powers_off_when_the_app_exits", func(t *testing.T) {
		e.explain(t, "app")
		// Nothing asks for the power-off: the app's own exit must cause it.
		ex := e.waitEnd(t)
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

// consoleLines splits the console into lines, without the carriage returns
// the serial console adds.
func consoleLines(console string) []string {
	return strings.Split(strings.ReplaceAll(console, "\r", ""), "\n")
}
