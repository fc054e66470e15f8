package vmtests

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nitroinit/nitroinit/initramfs/image"
	"github.com/nitroinit/nitroinit/internal/control"
	"github.com/nitroinit/nitroinit/internal/enclavesim"
	"github.com/nitroinit/nitroinit/internal/nitro"
	"github.com/nitroinit/nitroinit/internal/wait"
	"github.com/nitroinit/nitroinit/internal/wire"
)

// controlPort is init's vsock control port in every image (the default,
// nitro.ControlPort), untyped so that it serves as an int and a uint32.
const controlPort = 9001

// controlPort must be nitro.ControlPort: either difference overflows
// uint32 (a compile error) unless they are equal.
var _ = [nitro.ControlPort - controlPort]struct{}{}
var _ = [controlPort - nitro.ControlPort]struct{}{}

// How long things may take. Everything runs under TCG on two shared cores
// in CI, where the same step takes several times longer when other work
// loads the machine; waits therefore follow progress (internal/wait): they
// fail when what they watch has not moved for a while, not after a fixed
// time.
const (
	// waitTimeout is how long a wait may see no change in what it watches
	// (a service's state, its log, the guest's console) before it fails.
	// Waits that see progress go on, up to wait.DefaultCap.
	waitTimeout = wait.DefaultStall
	// bootTimeout bounds a boot up to the heartbeat: the kernel prints
	// nothing for a long while on a busy machine (wait.BootStall).
	bootTimeout = wait.BootStall
	// vmLifetime is Options.Timeout: a VM that a test forgot dies. Shared
	// VMs serve many tests, so it is long enough for the whole suite on a
	// machine ten times slower than ours.
	vmLifetime = time.Hour
)

// guest describes an initramfs image. Text fields may use $HOSTCID, replaced
// by the CID the guest must dial to reach the host on the vsock route in use.
type guest struct {
	config   string                 // /etc/init.yaml
	services map[string]string      // /service/<file name> -> TOML
	files    []image.File           // more files
	rootfs   string                 // host directory copied to /rootfs
	append   string                 // extra kernel command-line words
	memoryMB int                    // 0: 1024
	nsm      *enclavesim.NSMOptions // the host serves the simulated NSM (nsm_test.go)
}

// enclave is a booted VM running init as PID 1.
type enclave struct {
	name    string
	dir     string // sockets, image, console.log; removed by stop
	vm      *simVM
	hostCID uint32
	target  control.Target
	simLog  *syncBuffer // the simulator's own diagnostics
	booted  time.Duration
	hb      time.Duration // QEMU start to first heartbeat
}

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer = wait.Buffer

// boot builds g's image and boots it, and waits for the heartbeat. The VM
// is not tied to t: shared VMs outlive the test that booted them, so
// nothing here logs to t from a background goroutine.
func boot(t testing.TB, name string, g guest) (_ *enclave, err error) {
	t.Helper()
	// Short and under /tmp: Unix socket names are limited to 107 bytes.
	dir, err := os.MkdirTemp("", "vmt-"+name+"-")
	if err != nil {
		return nil, err
	}
	e := &enclave{name: name, dir: dir, simLog: &syncBuffer{}}
	defer func() {
		if err != nil {
			if e.vm != nil {
				e.vm.Stop()
			}
			os.RemoveAll(dir)
		}
	}()
	logf := func(format string, args ...any) { fmt.Fprintf(e.simLog, format+"\n", args...) }

	// Resolve first: the route decides the host CID, which goes into the
	// image. Resolve wants an initrd that exists; the real one comes next.
	initrd := filepath.Join(dir, "initrd.cpio")
	if err := os.WriteFile(initrd, nil, 0o644); err != nil {
		return nil, err
	}
	mem := g.memoryMB
	if mem == 0 {
		mem = 1024
	}
	ctx := context.Background()
	opts, err := enclavesim.Options{
		Initrd:   initrd,
		Kernel:   kernel.BootImage(),
		Append:   g.append,
		MemoryMB: mem,
		Dir:      dir,
		Timeout:  vmLifetime,
		Logf:     logf,
		NSM:      g.nsm,
	}.Resolve(ctx)
	if err != nil {
		return nil, fmt.Errorf("resolving simulator options: %w", err)
	}
	e.hostCID = nitro.ParentCID
	if opts.Route == enclavesim.RouteVhostVsock {
		e.hostCID = 2
	}
	spec, err := g.spec(dir, e.hostCID)
	if err != nil {
		return nil, err
	}
	if err := spec.WriteFile(initrd); err != nil {
		return nil, fmt.Errorf("building the %s image: %w", name, err)
	}
	start := time.Now()
	var booting wait.Limits
	for attempt := 1; ; attempt++ {
		e.vm, err = startVM(opts, consoleEcho(name))
		if err != nil {
			return nil, fmt.Errorf("starting the %s VM: %w", name, err)
		}
		if opts.Route == enclavesim.RouteVhostVsock {
			e.target = control.Target{Protocol: control.ProtocolVsock, VsockCID: opts.GuestCID, VsockPort: controlPort}
		} else {
			e.target = control.Target{Protocol: control.ProtocolHybrid, HybridPath: e.vm.HybridSocket(), VsockPort: controlPort}
		}
		// The boot goes on as long as the console advances; the kernel's own
		// part of it prints nothing.
		booting = e.consoleMoves()
		booting.Stall = wait.BootStall
		err = booting.Until(ctx, "the heartbeat on port "+strconv.Itoa(int(nitro.HeartbeatPort)), func() (bool, string) {
			if _, ok := e.vm.HeartbeatReceived(); ok || e.ended() {
				return true, ""
			}
			return false, e.vm.ConsoleTail(1)
		})
		if _, ok := e.vm.HeartbeatReceived(); ok {
			break
		}
		exit := e.vm.Stop()
		if err == nil {
			err = fmt.Errorf("VM ended (%s) without a heartbeat", exit)
		}
		if attempt == 1 && kernelDiedBeforeInit(exit, e.vm.Console()) {
			// Debian's kernel under QEMU's TCG has, rarely (once in a
			// day of runs, on a heavily loaded machine), panicked while
			// patching its own code (text_poke_early) before it ran any
			// of ours. Such a boot is tried once more, and says so; a
			// second one fails the test.
			msg := fmt.Sprintf("%s: the guest kernel panicked before init ran (%s); booting once more. Its console:\n%s", name, exit, e.vm.ConsoleTail(20))
			fmt.Fprintln(e.simLog, msg)
			fmt.Fprintln(os.Stderr, "vmtests: "+msg)
			continue
		}
		return nil, fmt.Errorf("%s: %w; console:\n%s\nsimulator log:\n%s", name, err, e.vm.ConsoleTail(20), e.simLog.String())
	}
	hb, _ := e.vm.HeartbeatReceived()
	e.hb = hb.Sub(e.vm.Started())
	// The control socket comes up after the heartbeat: wait for a Pong.
	err = booting.Until(ctx, fmt.Sprintf("init to answer a ping on vsock port %d", controlPort), func() (bool, string) {
		r, err := e.try(wire.Request{Kind: wire.KindPing})
		return (err == nil && r.Kind == wire.KindPong) || e.ended(), fmt.Sprintf("%v, %+v", err, r)
	})
	if err == nil && e.ended() {
		err = fmt.Errorf("VM ended (%s)", e.vm.Stop())
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w; console:\n%s", name, err, e.vm.ConsoleTail(40))
	}
	e.booted = time.Since(start)
	return e, nil
}

// kernelDiedBeforeInit reports whether a VM ended in a kernel panic before
// init printed its first line ("nitroinit VERSION starting"): a failure of
// the guest kernel or of QEMU, not of anything this project put in the
// image.
func kernelDiedBeforeInit(exit enclavesim.Exit, console string) bool {
	return exit.Kind == enclavesim.ExitPanic && !strings.Contains(console, "nitroinit")
}

// consoleEcho streams a VM's console to stderr when NITROINIT_VMTEST_CONSOLE
// is set, for watching a guest live; otherwise the console is only kept
// (and printed when a test fails).
func consoleEcho(name string) io.Writer {
	if os.Getenv("NITROINIT_VMTEST_CONSOLE") == "" {
		return nil
	}
	return &prefixWriter{prefix: name + "| "}
}

type prefixWriter struct{ prefix string }

func (p *prefixWriter) Write(b []byte) (int, error) {
	for _, line := range strings.SplitAfter(string(b), "\n") {
		if line != "" {
			fmt.Fprint(os.Stderr, p.prefix+line)
		}
	}
	return len(b), nil
}

// spec turns g into an image spec, with the service files and init.yaml
// written to dir.
func (g guest) spec(dir string, hostCID uint32) (image.Spec, error) {
	sub := func(s string) string { return strings.ReplaceAll(s, "$HOSTCID", strconv.Itoa(int(hostCID))) }
	cfg := filepath.Join(dir, "init.yaml")
	if err := os.WriteFile(cfg, []byte(sub(g.config)), 0o644); err != nil {
		return image.Spec{}, err
	}
	spec := image.Spec{
		Init:    bin.init,
		Initctl: bin.initctl,
		Config:  cfg,
		Modules: kernel.Modules,
		Rootfs:  g.rootfs,
		Files: append([]image.File{
			{Src: bin.svc, Dst: "/bin/svc", Mode: 0o755},
			{Src: bin.zombies, Dst: "/bin/zombies", Mode: 0o755},
		}, g.files...),
	}
	svcDir := filepath.Join(dir, "service")
	if err := os.MkdirAll(svcDir, 0o755); err != nil {
		return image.Spec{}, err
	}
	names := make([]string, 0, len(g.services))
	for n := range g.services {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		p := filepath.Join(svcDir, n)
		if err := os.WriteFile(p, []byte(sub(g.services[n])), 0o644); err != nil {
			return image.Spec{}, err
		}
		spec.Services = append(spec.Services, p)
	}
	return spec, nil
}

// moduleYAML lists the kernel's modules for init.yaml: every module but nsm
// goes to kernel_modules, nsm to nsm_driver_path.
func moduleYAML() string {
	var b strings.Builder
	nsm := "null"
	b.WriteString("kernel_modules:\n")
	for _, m := range kernel.Modules {
		if strings.HasPrefix(filepath.Base(m), "nsm.") {
			nsm = image.ModulePath(m)
			continue
		}
		fmt.Fprintf(&b, "  - %s\n", image.ModulePath(m))
	}
	fmt.Fprintf(&b, "nsm_driver_path: %s\n", nsm)
	return b.String()
}

// try sends one control request over vsock. The answer shows nothing
// until it comes: it may take one stall interval, or longer while the
// guest's console moves.
func (e *enclave) try(req wire.Request) (wire.Response, error) {
	ctx, cancel := e.answerContext("the answer to " + req.Kind)
	defer cancel()
	r, err := control.Do(ctx, e.target, req)
	if err != nil && context.Cause(ctx) != ctx.Err() {
		err = fmt.Errorf("%w (%v)", err, context.Cause(ctx))
	}
	return r, err
}

// do sends a request and fails the test unless init answers without Error.
func (e *enclave) do(t testing.TB, req wire.Request) wire.Response {
	t.Helper()
	r, err := e.try(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Kind, req.Name, err)
	}
	if r.Kind == wire.KindError {
		t.Fatalf("%s %s: init answered an error: %s", req.Kind, req.Name, r.Message)
	}
	return r
}

func (e *enclave) status(t testing.TB, name string) wire.ServiceStatus {
	t.Helper()
	r := e.do(t, wire.Request{Kind: wire.KindServiceStatus, Name: name})
	if r.Status == nil {
		t.Fatalf("ServiceStatus %s: response without a status: %+v", name, r)
	}
	return *r.Status
}

// logs returns the last n lines of a service's log.
func (e *enclave) logs(t testing.TB, name string, n int) []string {
	t.Helper()
	return e.do(t, wire.Request{Kind: wire.KindServiceLogs, Name: name, Lines: n}).Logs
}

// waitState polls until the service is in state.
func (e *enclave) waitState(t testing.TB, name, state string) wire.ServiceStatus {
	t.Helper()
	var st wire.ServiceStatus
	eventually(t, waitTimeout, name+" to be "+state, func() (bool, string) {
		st = e.status(t, name)
		return st.State == state, fmt.Sprintf("state %q, error %q, restarts %d", st.State, st.Error, st.RestartCount)
	})
	return st
}

// waitLog polls until a line of the service's log contains substr.
func (e *enclave) waitLog(t testing.TB, name, substr string) []string {
	t.Helper()
	var lines []string
	eventually(t, waitTimeout, fmt.Sprintf("%q in the log of %s", substr, name), func() (bool, string) {
		lines = e.logs(t, name, 1000)
		return containsLine(lines, substr), "log:\n" + strings.Join(lines, "\n")
	})
	return lines
}

// eventually polls cond until it holds. cond describes what it saw; as long
// as that description changes the wait goes on (up to wait.DefaultCap), and
// when it has not changed for stall the test fails with it. Pass waitTimeout
// unless the thing waited for is known to show nothing for longer.
func eventually(t testing.TB, stall time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	wait.Limits{Stall: stall}.For(t, what, cond)
}

// consoleMoves is a wait that also counts the guest's console advancing as
// progress: for steps whose only sign of life is the guest printing
// (booting, forking thousands of processes).
func (e *enclave) consoleMoves() wait.Limits {
	return wait.Limits{Progress: e.vm.ConsoleLines}
}

// answerContext is the context for a request, a dial or a command whose
// result shows nothing until it comes: it ends when the guest's console
// has not moved for a stall interval (context.Cause says so). Call
// cancel when done.
func (e *enclave) answerContext(what string) (context.Context, context.CancelFunc) {
	return e.consoleMoves().Context(context.Background(), what)
}

func containsLine(lines []string, substr string) bool {
	for _, l := range lines {
		if strings.Contains(l, substr) {
			return true
		}
	}
	return false
}

// initctl runs the host's initctl against the guest and returns its stdout,
// stderr and exit code.
func (e *enclave) initctl(t testing.TB, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	// initctl runs for as long as it prints or the guest's console moves,
	// and one stall interval beyond.
	var out, errb wait.Buffer
	lim := wait.Limits{Progress: func() int64 { return out.Len() + errb.Len() + e.vm.ConsoleLines() }}
	ctx, cancel := lim.Context(context.Background(), "initctl "+strings.Join(args, " "))
	defer cancel()
	cmd := exec.CommandContext(ctx, bin.initctl, append(e.initctlTarget(), args...)...)
	cmd.Env = append(os.Environ(), "INITCTL_CONFIG=/nonexistent/initctl.yaml")
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("initctl %s killed: %v; stdout:\n%s\nstderr:\n%s", strings.Join(args, " "), context.Cause(ctx), out.String(), errb.String())
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatalf("running initctl %s: %v", strings.Join(args, " "), err)
	}
	return out.String(), errb.String(), code
}

// initctlOK runs initctl and fails unless it exits 0.
func (e *enclave) initctlOK(t testing.TB, args ...string) string {
	t.Helper()
	out, errOut, code := e.initctl(t, args...)
	if code != 0 {
		t.Fatalf("initctl %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// initctlTarget is how the host's initctl reaches this guest.
func (e *enclave) initctlTarget() []string {
	if e.target.Protocol == control.ProtocolVsock {
		return []string{"-p", "vsock", "--vsock-cid", strconv.Itoa(int(e.target.VsockCID)), "--vsock-port", strconv.Itoa(controlPort)}
	}
	return []string{"--vsock-uds", e.target.HybridPath, "--vsock-port", strconv.Itoa(controlPort)}
}

// kernelLine matches the kernel's own console lines ("[    1.234567] ...").
var kernelLine = regexp.MustCompile(`^\[\s*\d+\.\d+\]`)

// initLog is init's own log as it appeared on the console: every console
// line that is not the kernel's.
func (e *enclave) initLog() string {
	var out []string
	for _, l := range strings.Split(e.vm.Console(), "\n") {
		if l != "" && !kernelLine.MatchString(l) {
			out = append(out, l)
		}
	}
	if len(out) > 120 {
		out = out[len(out)-120:]
	}
	return strings.Join(out, "\n")
}

// explain makes a failing test print what is needed to understand it from CI
// output alone: the console tail, init's log, and the logs of the services
// the test used (fetched over vsock while the guest still runs).
func (e *enclave) explain(t testing.TB, services ...string) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		t.Logf("=== %s VM: console tail\n%s", e.name, e.vm.ConsoleTail(30))
		t.Logf("=== %s VM: init log (console lines that are not the kernel's)\n%s", e.name, e.initLog())
		for _, s := range services {
			if r, err := e.try(wire.Request{Kind: wire.KindServiceLogs, Name: s, Lines: 40}); err == nil {
				t.Logf("=== %s VM: log of %s (%s)\n%s", e.name, s, r.Kind, strings.Join(r.Logs, "\n")+r.Message)
			} else {
				t.Logf("=== %s VM: log of %s: %v", e.name, s, err)
			}
		}
		if s := e.simLog.String(); s != "" {
			t.Logf("=== %s VM: simulator log\n%s", e.name, s)
		}
	})
}

// stop ends the VM if it still runs (the end of a test run, or a test that
// gave up on it).
func (e *enclave) stop() enclavesim.Exit {
	ex := e.vm.Stop()
	os.RemoveAll(e.dir)
	return ex
}

// Shared VMs are booted once and used by several top-level tests. Only one
// VM runs at a time: on the vhost-vsock route the guest CID and the host's
// vsock ports (the heartbeat listener's 9000, logs-stream listeners) are
// machine-wide, so a second VM could not start. Asking for another VM stops
// the running one; asking again for a VM that has ended boots it anew.
var (
	sharedMu sync.Mutex
	current  *enclave             // the running shared VM, if any
	bootErrs = map[string]error{} // a failed boot is not retried
)

// sharedEnclave returns the running VM called name, booting it (and
// stopping any other VM) when needed.
func sharedEnclave(t testing.TB, name string, g func() guest) *enclave {
	t.Helper()
	needVM(t)
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if err := bootErrs[name]; err != nil {
		t.Fatalf("booting the %s VM failed earlier: %v", name, err)
	}
	if current != nil && current.name == name && !current.ended() {
		return current
	}
	stopCurrentLocked()
	e, err := boot(t, name, g())
	if err != nil {
		bootErrs[name] = err
		t.Fatalf("booting the %s VM: %v", name, err)
	}
	t.Logf("%s VM booted: heartbeat %s after QEMU start, control ready after %s (route %s)",
		name, e.hb.Round(time.Millisecond), e.booted.Round(time.Millisecond), e.vm.Route())
	current = e
	return e
}

// waitEnd waits for the guest to end by itself (a power-off, a reboot) and
// says how it ended. The wait goes on while the console advances.
func (e *enclave) waitEnd(t testing.TB) enclavesim.Exit {
	t.Helper()
	e.consoleMoves().For(t, "the "+e.name+" VM to end", func() (bool, string) {
		return e.ended(), e.vm.ConsoleTail(1)
	})
	return e.vm.Stop()
}

// ended reports whether the VM has stopped running.
func (e *enclave) ended() bool {
	select {
	case <-e.vm.Done():
		return true
	default:
		return false
	}
}

// soloBoot boots a VM that no other test shares, after stopping the shared
// one; the caller stops it.
func soloBoot(t testing.TB, name string, g guest) *enclave {
	t.Helper()
	needVM(t)
	stopShared()
	e, err := boot(t, name, g)
	if err != nil {
		t.Fatalf("booting the %s VM: %v", name, err)
	}
	t.Logf("%s VM booted: heartbeat %s after QEMU start, control ready after %s (route %s)",
		name, e.hb.Round(time.Millisecond), e.booted.Round(time.Millisecond), e.vm.Route())
	return e
}

// stopShared stops the running shared VM, if any.
func stopShared() {
	sharedMu.Lock()
	defer sharedMu.Unlock()
	stopCurrentLocked()
}

func stopCurrentLocked() {
	if current != nil {
		current.stop()
		current = nil
	}
}

func TestKernelDiedBeforeInit(t *testing.T) {
	for _, c := range []struct {
		exit    enclavesim.ExitKind
		console string
		want    bool
	}{
		{enclavesim.ExitPanic, "[    0.656657] Kernel panic - not syncing: Attempted to kill the idle task!", true},
		{enclavesim.ExitPanic, "2026-11-30T13:57:08Z init: nitroinit vmtest starting (pid 1)\n[    3.1] Kernel panic - not syncing: Attempted to kill init!", false},
		{enclavesim.ExitPowerOff, "", false},
	} {
		if got := kernelDiedBeforeInit(enclavesim.Exit{Kind: c.exit}, c.console); got != c.want {
			t.Errorf("kernelDiedBeforeInit(%v, %q) = %v, want %v", c.exit, c.console, got, c.want)
		}
	}
}
