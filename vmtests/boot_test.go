package vmtests

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestBoot(t *testing.T) {
	e := mainVM(t)

	t.Run("heartbeat", func(t *testing.T) {
		e.explain(t)
		t.Logf("heartbeat %s after QEMU start; control answering %s after start",
			e.hb.Round(time.Millisecond), e.booted.Round(time.Millisecond))
		if _, ok := e.vm.HeartbeatReceived(); !ok {
			t.Fatal("the simulator's heartbeat listener recorded no heartbeat")
		}
		st := e.system(t)
		if !strings.HasPrefix(st.Heartbeat, "ok") {
			t.Errorf("system-status heartbeat %q, want ok ...", st.Heartbeat)
		}
		want := fmt.Sprintf("boot: heartbeat to %d:9000 ok", e.hostCID)
		if !strings.Contains(e.vm.Console(), want) {
			t.Errorf("console lacks %q", want)
		}
	})

	t.Run("pid1_mounts_and_dev_links", func(t *testing.T) {
		e.explain(t, "devstdout", "devfd", "shm")
		if m := e.system(t).Mode; m != "pid1" {
			t.Errorf("mode %q, want pid1", m)
		}
		console := e.vm.Console()
		for _, want := range []string{
			"boot: mounted devtmpfs on /dev",
			"boot: mounted proc on /proc",
			"boot: mounted sysfs on /sys",
			"boot: mounted tmpfs on /run",
			"boot: mounted tmpfs on /tmp",
			"boot: mounted tmpfs on /dev/shm",
			"boot: mounted devpts on /dev/pts",
			"on /sys/fs/cgroup",
			"boot: linked /dev/fd -> /proc/self/fd",
			"boot: linked /dev/stdout -> /proc/self/fd/1",
			"boot: stdin, stdout and stderr attached to /dev/console",
		} {
			if !strings.Contains(console, want) {
				t.Errorf("console lacks %q", want)
			}
		}
		// The links and mounts work for services: these wrote through them.
		e.waitLog(t, "devstdout", "written-via-dev-stdout")
		e.waitLog(t, "devfd", "written-via-dev-fd-2")
		if st := e.waitState(t, "shm", "running"); st.PID == nil {
			t.Errorf("shm: no PID while running: %+v", st)
		}
		// /proc works: init's process table lists itself as PID 1.
		found := false
		for _, p := range e.processes(t) {
			found = found || p.PID == 1
		}
		if !found {
			t.Error("ps list has no PID 1")
		}
	})

	t.Run("kernel_cmdline_junk_is_harmless", func(t *testing.T) {
		e.explain(t)
		console := e.vm.Console()
		for _, w := range []string{"nomodules", "xyzzy"} {
			if want := fmt.Sprintf("ignoring unknown argument %q", w); !strings.Contains(console, want) {
				t.Errorf("console lacks %s", want)
			}
		}
	})

	t.Run("kernel_modules_load", func(t *testing.T) {
		e.explain(t)
		st := e.system(t)
		mods := strings.Join(st.Modules, "\n")
		n := 0
		for _, m := range kernel.Modules {
			name := m[strings.LastIndexByte(m, '/')+1:]
			if strings.HasPrefix(name, "nsm.") {
				continue
			}
			n++
			if !strings.Contains(e.vm.Console(), "boot: loaded /lib/modules/"+name) {
				t.Errorf("console does not show %s loaded", name)
			}
			if !strings.Contains(mods, name) {
				t.Errorf("system-status modules %q lack %s", st.Modules, name)
			}
		}
		if n < 3 {
			t.Errorf("only %d modules besides nsm in the kernel cache (%q): the vsock trio should be there", n, kernel.Modules)
		}
	})

	t.Run("nsm_driver_loads_and_dev_nsm_absent", func(t *testing.T) {
		e.explain(t)
		var nsm string
		for _, m := range kernel.Modules {
			if name := m[strings.LastIndexByte(m, '/')+1:]; strings.HasPrefix(name, "nsm.") {
				nsm = name
			}
		}
		if nsm == "" {
			t.Fatalf("the kernel cache has no nsm module (%q): rerun ci/fetch-kernel.sh", kernel.Modules)
		}
		if !strings.Contains(e.vm.Console(), "boot: loaded /lib/modules/"+nsm) {
			t.Errorf("console does not show %s loaded", nsm)
		}
		if got := e.system(t).NSM; got != "absent" {
			t.Errorf("system-status NSM %q, want absent (driver loaded, no NSM device in QEMU)", got)
		}
	})
}
