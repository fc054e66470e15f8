package vmtests

// The images and the helpers the scenarios share.
//
// The main VM is one boot shared by TestBoot, TestControl, TestGuest,
// TestSupervision and TestShutdown, which powers it off; the rootfs VM is
// shared by TestRootSwitch and TestReboot; TestAWSCmd boots its own. Go runs
// the top-level tests file by file in name order (awscmd, boot, control,
// guest, services, shutdown, switchroot) and, within a file, in declaration
// order, so each VM is booted once and ends before the next one boots. Run
// without -shuffle; a test run alone boots what it needs.

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/nitroinit/nitroinit/internal/wait"
	"github.com/nitroinit/nitroinit/internal/wire"
)

// mainGuest is the main image: the vsock modules from kernel_modules, the
// Debian nsm.ko.xz as nsm_driver_path, heartbeat to the simulator, control
// over vsock with the default permissions (read and manage, no exec), no
// root switch, and junk words on the kernel command line like nitro-cli's
// "nomodules". Services that only one scenario needs are .disabled and the
// scenario enables and starts them, so that boot stays light and each
// scenario starts from a known state.
func mainGuest() guest {
	return guest{
		append:   "nomodules xyzzy",
		memoryMB: 3072, // the zombie storm: 10 000 processes need their kernel stacks and page tables
		config:   guestYAML("", "  io_timeout: 2s\n  max_connections: 16\n"),
		services: map[string]string{
			// Boot: they write through the /dev links and into /dev/shm.
			"devstdout.service": `ExecStart = "/bin/svc append /dev/stdout written-via-dev-stdout"`,
			"devfd.service":     `ExecStart = "/bin/svc append /dev/fd/2 written-via-dev-fd-2"`,
			"shm.service":       `ExecStart = "/bin/svc append /dev/shm/probe written-to-dev-shm"`,

			// Dependency and readiness order at boot: cache is ready only
			// 700ms after it starts; db is ordered after it, web requires db
			// and is ordered after cache.
			"cache.service": "ExecStart = \"/bin/svc notify 700ms warm\"\nType = \"notify\"\nBefore = [\"db\"]",
			"db.service":    `ExecStart = "/bin/svc sleep db"`,
			"web.service":   "ExecStart = \"/bin/svc sleep web\"\nRequires = [\"db\"]\nAfter = [\"cache\"]",

			// Restart policies and the start limit.
			"always.service.disabled":      "ExecStart = \"/bin/svc exit 0 100ms\"\nRestart = \"always\"\nRestartSec = 0.2\nStartLimitIntervalSec = 0",
			"no.service.disabled":          "ExecStart = \"/bin/svc exit 1 100ms\"\nRestart = \"no\"",
			"onfail-ok.service.disabled":   "ExecStart = \"/bin/svc exit 0 100ms\"\nRestart = \"on-failure\"\nRestartSec = 0.1",
			"onfail-bad.service.disabled":  "ExecStart = \"/bin/svc exit 3 100ms\"\nRestart = \"on-failure\"\nRestartSec = 0.1\nStartLimitIntervalSec = 0",
			"onsucc.service.disabled":      "ExecStart = \"/bin/svc exit 0 100ms\"\nRestart = \"on-success\"\nRestartSec = 0.1\nStartLimitIntervalSec = 0",
			"onabn-crash.service.disabled": "ExecStart = \"/bin/svc crash 100ms\"\nRestart = \"on-abnormal\"\nRestartSec = 0.1\nStartLimitIntervalSec = 0",
			"onabn-exit.service.disabled":  "ExecStart = \"/bin/svc exit 4 100ms\"\nRestart = \"on-abnormal\"\nRestartSec = 0.1",
			"flappy.service.disabled":      "ExecStart = \"/bin/svc exit 1\"\nRestart = \"always\"\nRestartSec = 0\nStartLimitBurst = 3\nStartLimitIntervalSec = 60",

			// Stop escalation: it and its grandchild ignore SIGTERM.
			"stubborn.service.disabled": "ExecStart = \"/bin/svc stubborn /run/stubborn.pids\"\nTimeoutStopSec = 1\nRestart = \"always\"",
			// 10 000 orphans at once.
			"storm.service.disabled": `ExecStart = "/bin/zombies -n 10000"`,
			// Output capture.
			"talk.service": `ExecStart = "/bin/svc print 3"`,
			// Its log is cleared by logs-clear.
			"chatter.service": `ExecStart = "/bin/svc print 2"`,
			// A slow, steady writer for logs -f and logs-stream.
			"counter.service.disabled": `ExecStart = "/bin/svc count 100000 250ms"`,
			// Disabled, and started by hand.
			"dormant.service.disabled": `ExecStart = "/bin/svc sleep dormant-marker"`,
			// The service the control commands work on.
			"ctl.service": "ExecStart = \"/bin/svc sleep ctl-marker\"\nRestart = \"always\"\nRestartSec = 0.2",

			// Inside the guest: initctl over the Unix socket, as root.
			"inside.service.disabled":    `ExecStart = "/usr/bin/initctl list"`,
			"insidesys.service.disabled": `ExecStart = "/usr/bin/initctl system-status"`,
			// Inside the guest: initctl over real AF_VSOCK through the
			// loopback transport (CID 1), a peer with the default vsock
			// classes (read, manage): it may look, and may not power off.
			"loopsys.service.disabled":  "ExecStart = \"/usr/bin/initctl -p vsock --vsock-cid 1 system-status\"\nRestart = \"no\"",
			"loophalt.service.disabled": "ExecStart = \"/usr/bin/initctl -p vsock --vsock-cid 1 shutdown\"\nRestart = \"no\"",

			// Shutdown: it must get SIGTERM, and its last words must reach
			// its log.
			"trapper.service": `ExecStart = "/bin/svc trap /dev/stdout"`,
			// Power-off from inside: root on the Unix socket has every class,
			// while the host over vsock lacks exec, which shutdown needs.
			"halt.service.disabled": `ExecStart = "/usr/bin/initctl shutdown"`,
		},
	}
}

func mainVM(t *testing.T) *enclave {
	t.Helper()
	return sharedEnclave(t, "main", mainGuest)
}

// run enables and starts a .disabled service: a manual start of a disabled
// service is not what these scenarios are about.
func (e *enclave) run(t testing.TB, name string) {
	t.Helper()
	e.do(t, wire.Request{Kind: wire.KindServiceEnable, Name: name})
	e.do(t, wire.Request{Kind: wire.KindServiceStart, Name: name})
}

// retire stops and disables a scenario's services so that they do not load
// the guest during later scenarios.
func (e *enclave) retire(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		e.try(wire.Request{Kind: wire.KindServiceStop, Name: n})
		e.try(wire.Request{Kind: wire.KindServiceDisable, Name: n})
	}
}

func (e *enclave) system(t testing.TB) *wire.SystemStatus {
	t.Helper()
	r := e.do(t, wire.Request{Kind: wire.KindSystemStatus})
	if r.System == nil {
		t.Fatalf("SystemStatus without a body: %+v", r)
	}
	return r.System
}

func (e *enclave) processes(t testing.TB) []wire.ProcessInfo {
	t.Helper()
	return e.do(t, wire.Request{Kind: wire.KindProcessList}).Processes
}

// processesWith returns the live (non-zombie) processes whose command line
// contains substr.
func (e *enclave) processesWith(t testing.TB, substr string) []wire.ProcessInfo {
	t.Helper()
	var out []wire.ProcessInfo
	for _, p := range e.processes(t) {
		if p.State != "Z" && strings.Contains(p.Cmdline, substr) {
			out = append(out, p)
		}
	}
	return out
}

// rawExchange sends raw bytes to init's control port and returns what
// comes back before init closes the connection or d passes.
func (e *enclave) rawExchange(t testing.TB, send []byte, stall time.Duration) (string, error) {
	t.Helper()
	dialing := e.consoleMoves()
	dialing.Stall = stall
	ctx, cancel := dialing.Context(context.Background(), "the control port")
	defer cancel()
	c, err := e.vm.DialOnce(ctx, controlPort)
	if err != nil {
		return "", err
	}
	defer c.Close()
	// Reads and writes may each wait stall for their bytes: a guest under
	// TCG takes 2 MiB slowly, but takes it.
	wc := wait.Limits{Stall: stall}.Conn(c)
	// A write error means init hung up before taking it all (an oversized
	// request); what it said before that is still worth reading.
	wc.Write(send)
	var b strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := wc.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			if isTimeout(err) {
				return b.String(), err
			}
			return b.String(), nil
		}
	}
}

// streamTo asks init to stream a service's log to a listener on the host's
// vsock port, and returns a function that waits for the stream to end
// (init closes it when it powers off) and returns what came through.
func (e *enclave) streamTo(t testing.TB, service string, port uint32) func() string {
	t.Helper()
	ln, err := e.vm.ListenHost(port)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1)
	go func() {
		defer ln.Close()
		c, err := ln.Accept()
		if err != nil {
			got <- "accept: " + err.Error()
			return
		}
		defer c.Close()
		// A bound for this goroutine when nobody waits for it; the wait
		// itself is below.
		c.SetReadDeadline(time.Now().Add(vmLifetime))
		b, _ := io.ReadAll(c)
		got <- string(b)
	}()
	e.do(t, wire.Request{Kind: wire.KindServiceLogsStream, Name: service, VsockCID: e.hostCID, VsockPort: port})
	return func() string {
		var s string
		// init ends the stream as it powers off: its console moves.
		e.consoleMoves().For(t, "the log stream of "+service+" to end", wait.Receive(got, &s))
		return s
	}
}
