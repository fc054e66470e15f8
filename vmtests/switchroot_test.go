package vmtests

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/nitroinit/nitroinit/internal/enclavesim"
	"github.com/nitroinit/nitroinit/internal/wire"
)

// rootfsGuest is the root-switch image. The initramfs's init.yaml holds the
// boot keys and runtime keys that must NOT apply after the switch (service
// directory /service with a service of its own, read-only vsock control);
// /rootfs has its own /etc/init.yaml whose runtime keys must apply: another
// service and log directory, an environment, small log files, and exec over
// vsock. Like a container image, /rootfs has no /dev, /proc, /sys, /run or
// /tmp: init must create the mount points.
func rootfsGuest() guest {
	root, err := os.MkdirTemp(bin.dir, "rootfs-")
	if err == nil {
		err = writeTree(root, map[string]string{
			"etc/init.yaml": `service_dir: /srv/services
log_dir: /var/log/init
max_log_size: 4096
max_log_files: 3
environment:
  FROM_NEW_ROOT: "yes"
control:
  vsock_enabled: true
  vsock_port: 9001
  permissions:
    vsock:
      classes: [read, manage, exec]
`,
			"srv/services/hello.service":    `ExecStart = "/bin/svc sleep hello-from-the-new-root"`,
			"srv/services/envcheck.service": `ExecStart = "/bin/svc env"`,
			"srv/services/inside.service":   `ExecStart = "/usr/bin/initctl list"`,
			"srv/services/keep.service":     `ExecStart = "/bin/svc sleep keep-marker"`,
			"srv/services/change.service":   `ExecStart = "/bin/svc sleep change-marker"`,
			// About 40 KB of output against max_log_size 4096.
			"srv/services/rotator.service.disabled": `ExecStart = "/bin/svc count 400"`,
		}, map[string]string{
			"bin/svc":         bin.svc,
			"usr/bin/initctl": bin.initctl,
		})
	}
	if err != nil {
		panic(fmt.Sprintf("building the rootfs tree: %v", err))
	}
	return guest{
		rootfs: root,
		config: moduleYAML() + `
vsock:
  cid: $HOSTCID
  port: 9000
  timeout: 60s
pivot_root: true
pivot_root_dir: /rootfs
service_dir: /service
log_dir: /log
control:
  vsock_enabled: true
  vsock_port: 9001
  permissions:
    vsock:
      classes: [read]
`,
		services: map[string]string{
			"initramfs-only.service": `ExecStart = "/bin/svc sleep initramfs-only"`,
		},
	}
}

// writeTree writes files (relative path -> content) and copies binaries
// (relative path -> host path) under root.
func writeTree(root string, files, binaries map[string]string) error {
	for rel, body := range files {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		// Files end in a newline, so that appending a line to one from
		// inside the guest makes a new line.
		if err := os.WriteFile(p, []byte(strings.TrimSuffix(body, "\n")+"\n"), 0o644); err != nil {
			return err
		}
	}
	for rel, src := range binaries {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		in, err := os.Open(src)
		if err != nil {
			return err
		}
		out, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
		if err == nil {
			_, err = io.Copy(out, in)
			if cerr := out.Close(); err == nil {
				err = cerr
			}
		}
		in.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

func rootfsVM(t *testing.T) *enclave {
	t.Helper()
	return sharedEnclave(t, "rootfs", rootfsGuest)
}

// TestRootSwitch boots an image with an application root in /rootfs and
// checks that init switched into it and runs what it describes; this image
// grants exec over vsock, so the ps commands that need it run here.
func TestRootSwitch(t *testing.T) {
	e := rootfsVM(t)
	wantOut := func(t *testing.T, out string, wants ...string) {
		t.Helper()
		for _, w := range wants {
			if !strings.Contains(out, w) {
				t.Errorf("output lacks %q:\n%s", w, out)
			}
		}
	}
	pidOf := e.runningPID

	t.Run("switched_root_and_runtime_configuration", func(t *testing.T) {
		e.explain(t)
		console := e.vm.Console()
		for _, want := range []string{"boot: switched root to /rootfs", "runtime configuration from the new root's /etc/init.yaml"} {
			if !strings.Contains(console, want) {
				t.Errorf("console lacks %q", want)
			}
		}
		st := e.system(t)
		if st.ServiceDir != "/srv/services" || st.LogDir != "/var/log/init" {
			t.Errorf("service dir %q, log dir %q; want the new root's /srv/services and /var/log/init", st.ServiceDir, st.LogDir)
		}
		if !strings.HasPrefix(st.Heartbeat, "ok") {
			t.Errorf("heartbeat %q, want ok", st.Heartbeat)
		}
		// The early mounts were made again inside the new root, which had
		// no mount points of its own.
		if !strings.Contains(console, "boot: mounting early filesystems (") || strings.Count(console, "boot: mounted proc on /proc") < 2 {
			t.Errorf("console does not show the early mounts made twice (initramfs and new root)")
		}
	})

	t.Run("services_from_the_new_root", func(t *testing.T) {
		e.explain(t, "hello", "envcheck")
		pidOf(t, "hello")
		names := map[string]bool{}
		for _, s := range e.do(t, wire.Request{Kind: wire.KindListServices}).Services {
			names[s.Name] = true
		}
		if names["initramfs-only"] {
			t.Errorf("the initramfs's /service/initramfs-only.service is supervised after the switch")
		}
		for _, n := range []string{"hello", "envcheck", "inside", "keep", "rotator"} {
			if !names[n] {
				t.Errorf("service %s of the new root is not listed (have %v)", n, names)
			}
		}
		if len(e.processesWith(t, "initramfs-only")) != 0 {
			t.Errorf("the initramfs's service runs")
		}
		e.waitLog(t, "envcheck", "FROM_NEW_ROOT=yes")
	})

	t.Run("initctl_over_the_unix_socket_in_the_new_root", func(t *testing.T) {
		e.explain(t, "inside")
		lines := e.waitLog(t, "inside", "init: exited with code")
		if !containsLine(lines, "NAME") || !containsLine(lines, "hello ") || !containsLine(lines, "rotator ") {
			t.Errorf("in-guest initctl list:\n%s", strings.Join(lines, "\n"))
		}
	})

	t.Run("exec_allowed_when_configured", func(t *testing.T) {
		e.explain(t)
		wantOut(t, e.initctlOK(t, "system-status"), "This connection: read, manage, exec")
		// run is start's alias.
		out := e.initctlOK(t, "ps", "run", "/bin/svc", "sleep", "adhoc-marker")
		wantOut(t, out, "✓ Process started with PID")
		f := strings.Fields(out[strings.LastIndex(out, "PID"):])
		pid, err := strconv.Atoi(strings.Trim(f[len(f)-1], "():"))
		if err != nil {
			t.Fatalf("no PID in %q", out)
		}
		wantOut(t, e.initctlOK(t, "ps", "status", strconv.Itoa(pid)), "Managed by Init: no", "adhoc-marker")
		wantOut(t, e.initctlOK(t, "ps", "kill", strconv.Itoa(pid), "-s", "KILL"), fmt.Sprintf("Signal 9 sent to process %d", pid))
		eventually(t, waitTimeout, "the ad-hoc process reaped", func() (bool, string) {
			for _, p := range e.processes(t) {
				if p.PID == pid {
					return false, fmt.Sprintf("%+v", p)
				}
			}
			return true, ""
		})
	})

	t.Run("ps_stop_restart_kill_on_a_service", func(t *testing.T) {
		e.explain(t, "hello")
		pid := pidOf(t, "hello")
		wantOut(t, e.initctlOK(t, "ps", "restart", strconv.Itoa(pid)), "✓ Service 'hello' restarted")
		again := pidOf(t, "hello")
		if again == pid {
			t.Errorf("ps restart kept PID %d", pid)
		}
		wantOut(t, e.initctlOK(t, "ps", "stop", strconv.Itoa(again)), fmt.Sprintf("sent to process %d", again))
		e.waitState(t, "hello", "inactive")
		e.do(t, wire.Request{Kind: wire.KindServiceStart, Name: "hello"})
		pid = pidOf(t, "hello")
		wantOut(t, e.initctlOK(t, "ps", "kill", strconv.Itoa(pid), "-s", "SIGKILL"), fmt.Sprintf("Signal 9 sent to process %d", pid))
		eventually(t, waitTimeout, "hello's process gone", func() (bool, string) {
			ps := e.processesWith(t, "hello-from-the-new-root")
			return len(ps) == 0, fmt.Sprintf("%+v", ps)
		})
		e.do(t, wire.Request{Kind: wire.KindServiceStart, Name: "hello"})
	})

	t.Run("log_rotation", func(t *testing.T) {
		e.explain(t, "rotator")
		e.do(t, wire.Request{Kind: wire.KindServiceEnable, Name: "rotator"})
		e.try(wire.Request{Kind: wire.KindServiceStart, Name: "rotator"})
		e.waitState(t, "rotator", "exited")
		e.waitLog(t, "rotator", "line 000000400")
		// The guest has no shell to list /var/log/init; exec tells: a
		// rotated file exists (mode 0644: "permission denied"), one past
		// max_log_files does not.
		tests := []struct {
			file string
			want string
		}{
			{"/var/log/init/rotator.log", "permission denied"},
			{"/var/log/init/rotator.log.1", "permission denied"},
			{"/var/log/init/rotator.log.2", "permission denied"},
			{"/var/log/init/rotator.log.3", "no such file"},
		}
		for _, tc := range tests {
			out, errOut, code := e.initctl(t, "ps", "start", tc.file)
			if code != 1 || !strings.Contains(errOut, tc.want) {
				t.Errorf("ps start %s: exit %d, stdout %q, stderr %q; want exit 1 and %q", tc.file, code, out, errOut, tc.want)
			}
		}
	})

	t.Run("reload_without_duplicates", func(t *testing.T) {
		e.explain(t, "keep", "change", "new", "adhoc")
		keep := pidOf(t, "keep")
		change := pidOf(t, "change")
		// Change the service directory from inside: svc append writes its
		// line and then sleeps until it is killed.
		var writers []string
		write := func(file, line string) {
			out := e.initctlOK(t, "ps", "start", "/bin/svc", "append", "/srv/services/"+file, line)
			f := strings.Fields(out[strings.LastIndex(out, "PID"):])
			writers = append(writers, strings.Trim(f[len(f)-1], "():"))
		}
		write("new.service", `ExecStart = "/bin/svc sleep new-marker"`)
		write("change.service", `Environment = ["VERSION=2"]`)
		// A reload that reads a half-written new file sees an invalid
		// service (see the report on invalid-then-fixed files), so reload
		// only once new.service exists: exec of it then fails with
		// "permission denied" rather than "no such file", and svc writes its
		// line right after creating the file. Appending one line to the
		// existing change.service is a single write, so reloads may run
		// until init reports it changed on disk.
		eventually(t, waitTimeout, "new.service created", func() (bool, string) {
			_, errOut, _ := e.initctl(t, "ps", "start", "/srv/services/new.service")
			return strings.Contains(errOut, "permission denied"), errOut
		})
		eventually(t, waitTimeout, "change.service reported changed on disk after a reload", func() (bool, string) {
			wantOut(t, e.initctlOK(t, "reload"), "✓ Service configurations reloaded")
			st := e.status(t, "change")
			return st.ChangedOnDisk, fmt.Sprintf("%+v", st)
		})
		for _, pid := range writers {
			e.initctlOK(t, "ps", "kill", pid, "-s", "KILL")
		}
		newPID := pidOf(t, "new")
		for range 3 {
			wantOut(t, e.initctlOK(t, "reload"), "✓ Service configurations reloaded")
		}
		if now := pidOf(t, "keep"); now != keep {
			t.Errorf("unchanged keep was restarted by reload (%d -> %d)", keep, now)
		}
		if now := pidOf(t, "change"); now != change {
			t.Errorf("reload restarted the running change (%d -> %d); its new definition should wait for a restart", change, now)
		}
		wantOut(t, e.initctlOK(t, "status", "change"), "changed") // the on-disk warning
		wantOut(t, e.initctlOK(t, "restart", "change"), "✓ Service 'change' restarted")
		if st := e.status(t, "change"); st.ChangedOnDisk {
			t.Errorf("change still reported changed on disk after its restart")
		}
		if now := pidOf(t, "new"); now != newPID {
			t.Errorf("new was restarted by a reload that did not change it (%d -> %d)", newPID, now)
		}
		for _, marker := range []string{"/bin/svc sleep keep-marker", "/bin/svc sleep change-marker", "/bin/svc sleep new-marker"} {
			n := 0
			for _, p := range e.processes(t) {
				if strings.HasPrefix(p.Cmdline, marker) && p.State != "Z" {
					n++
				}
			}
			if n != 1 {
				t.Errorf("%d processes run %q after reloads, want 1", n, marker)
			}
		}
	})

	t.Run("reload_starts_a_service_whose_file_was_fixed", func(t *testing.T) {
		e.explain(t, "fixed")
		// A file without ExecStart is an invalid service; appending the
		// missing line fixes it. An operator who fixes a file and reloads
		// expects the enabled, never started service to start, as a new
		// file's service does.
		write := func(line string, loaded func(wire.ServiceStatus) bool) {
			out := e.initctlOK(t, "ps", "start", "/bin/svc", "append", "/srv/services/fixed.service", line)
			f := strings.Fields(out[strings.LastIndex(out, "PID"):])
			pid := strings.Trim(f[len(f)-1], "():")
			eventually(t, waitTimeout, "init to read "+line, func() (bool, string) {
				wantOut(t, e.initctlOK(t, "reload"), "✓ Service configurations reloaded")
				r, err := e.try(wire.Request{Kind: wire.KindServiceStatus, Name: "fixed"})
				return err == nil && r.Status != nil && loaded(*r.Status), fmt.Sprintf("%+v %v", r.Status, err)
			})
			e.initctlOK(t, "ps", "kill", pid, "-s", "KILL")
		}
		write(`Restart = "no"`, func(st wire.ServiceStatus) bool { return st.State == "invalid" })
		write(`ExecStart = "/bin/svc sleep fixed-marker"`, func(st wire.ServiceStatus) bool {
			return strings.Contains(st.ExecStart, "fixed-marker")
		})
		e.waitState(t, "fixed", "running")
	})
}

// TestReboot reboots the rootfs VM from the host, which that image
// allows (exec over vsock): the simulator must see a reboot, not a
// power-off.
func TestReboot(t *testing.T) {
	e := rootfsVM(t)
	t.Run("reboot_is_not_power_off", func(t *testing.T) {
		e.explain(t, "hello")
		if out := e.initctlOK(t, "reboot"); !strings.Contains(out, "✓ System reboot initiated") {
			t.Errorf("initctl reboot printed %q", out)
		}
		ex := e.waitEnd(t)
		if ex.Kind != enclavesim.ExitReboot {
			t.Errorf("VM ended with %s, want a reboot", ex)
		}
		console := e.vm.Console()
		for _, want := range []string{"shutting down for reboot", "all services stopped; reboot"} {
			if !strings.Contains(console, want) {
				t.Errorf("console lacks %q", want)
			}
		}
	})
}
