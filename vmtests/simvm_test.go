package vmtests

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hugelgupf/vmtest/qemu"

	"github.com/nitroinit/nitroinit/internal/enclavesim"
)

// simVM is a simulated enclave whose QEMU runs under hugelgupf/vmtest's
// qemu package. The simulator provides the rest: the vsock backend (our
// userspace vhost-user device, or the host's vhost-vsock) and the parent's
// heartbeat listener (enclavesim.StartBackend, embedded here for DialOnce,
// ListenHost, HybridSocket, HeartbeatReceived and Route), the vsock and
// shared-memory arguments (enclavesim.VsockArgs), the kernel command line
// (enclavesim.KernelCmdline) and the accelerator choice (Options.Resolve).
// On top, simVM keeps the console (for ConsoleTail, the tests' assertions
// and the exit verdict) and tells power-off from reboot the way the
// simulator does: from the kernel's last console lines and QEMU's status.
type simVM struct {
	*enclavesim.Backend
	opts    enclavesim.Options
	vm      *qemu.VM
	console *consoleLog
	started time.Time

	done     chan struct{} // closed when vm.Wait has returned and exit is set
	exit     enclavesim.Exit
	mu       sync.Mutex
	stopping enclavesim.ExitKind // set before we signal QEMU: ExitStopped or ExitTimeout
	stopOnce sync.Once
}

// startVM boots a VM for resolved options whose Dir exists: the backend
// first (QEMU connects to the vhost-user device while it sets the device
// up), then QEMU through qemu.Start. echo, when not nil, receives the
// console's lines as they arrive. The VM runs until the guest powers off or
// reboots, o.Timeout passes or Stop is called.
func startVM(o enclavesim.Options, echo io.Writer) (_ *simVM, err error) {
	logFile, err := os.Create(enclavesim.ConsoleLog(o.Dir))
	if err != nil {
		return nil, fmt.Errorf("console log in %s: %w", o.Dir, err)
	}
	v := &simVM{opts: o, console: newConsoleLog(logFile, echo), done: make(chan struct{})}
	backend, err := enclavesim.StartBackend(o)
	if err != nil {
		logFile.Close()
		return nil, fmt.Errorf("vsock backend: %w", err)
	}
	v.Backend = backend
	fns := []qemu.Fn{
		qemu.WithQEMUCommand(o.QEMU),
		qemu.WithKernel(o.Kernel),
		qemu.WithInitramfs(o.Initrd),
		qemu.WithAppendKernel(enclavesim.KernelCmdline(o.Append)),
		qemu.ArbitraryArgs(qemuArgs(o)...),
		// Wait closes the serial outputs, which closes console.log.
		qemu.WithSerialOutput(v.console),
		// The backend goes once QEMU has exited (QEMU 7.2 does not survive
		// its vhost-user backend going first), before Wait returns: a
		// test that saw the VM end may boot the next one, which needs the
		// machine-wide vsock ports on the vhost-vsock route.
		qemu.WithTask(qemu.Cleanup(func() error { return backend.Close() })),
	}
	v.started = time.Now()
	v.vm, err = qemu.Start(qemu.ArchAMD64, fns...)
	if err != nil {
		backend.Close()
		logFile.Close()
		return nil, fmt.Errorf("starting QEMU %s: %w (install qemu-system-x86 or set VMTEST_QEMU)", o.QEMU, err)
	}
	v.logf("vmtest/qemu: %s", v.vm.CmdlineQuoted())
	// Wait must run from the start, not only when a test asks how the VM
	// ended: it drains the pty that vmtest puts on QEMU's stdout, and
	// without a reader that pty fills up and blocks the guest's console.
	go v.wait()
	if o.Timeout > 0 {
		go func() {
			defer recoverLog(o.Logf, "VM timeout watcher")
			select {
			case <-time.After(o.Timeout):
				v.kill(enclavesim.ExitTimeout)
			case <-v.done:
			}
		}()
	}
	return v, nil
}

// qemuArgs are the arguments vmtest's qemu package does not produce itself
// (it adds the binary, -nographic, -kernel, -append and -initrd): the
// machine with the shared memory backend the vhost-user device maps, the
// accelerator, the serial console on stdio, and the vsock device. They are
// what enclavesim.CommandLine gives for the same options, less what vmtest
// adds; -nographic replaces -display none.
func qemuArgs(o enclavesim.Options) []string {
	args := []string{
		"-nodefaults", "-no-user-config",
		// A guest reboot ends QEMU too; the console tells reboot from
		// power-off (see classify).
		"-no-reboot",
		"-M", "q35,memory-backend=mem",
		"-m", strconv.Itoa(o.MemoryMB) + "M",
		"-smp", strconv.Itoa(o.CPUs),
	}
	switch o.Accel {
	case enclavesim.AccelKVM:
		args = append(args, "-accel", "kvm", "-cpu", "host")
	case enclavesim.AccelTCG:
		args = append(args, "-accel", "tcg")
	}
	// signal=off: the pty vmtest gives QEMU as stdin must not turn a
	// stray ^C into the end of the VM.
	args = append(args, "-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con")
	return append(args, enclavesim.VsockArgs(o)...)
}

// wait collects QEMU's end through vm.Wait (which drains the console and
// runs the backend's cleanup) and classifies it.
func (v *simVM) wait() {
	defer close(v.done)
	defer recoverLog(v.opts.Logf, "VM waiter")
	err := v.vm.Wait()
	e := enclavesim.Exit{Uptime: time.Since(v.started)}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		e.Code = ee.ExitCode() // -1 when a signal killed QEMU
	default:
		e.Code = -1
	}
	v.mu.Lock()
	stopping := v.stopping
	v.mu.Unlock()
	e.Kind, e.Detail = classify(err, v.console.marks(), stopping, v.console.lastQEMULine(v.opts.QEMU))
	v.exit = e
	v.logf("vmtest/qemu: VM ended: %s", e)
}

// classify decides how a VM ended, as the simulator does: the kernel's last
// words win (a guest that powered off just as a timeout fired still powered
// off), then whether we were ending it, then QEMU's own complaint.
func classify(waitErr error, m consoleMarks, stopping enclavesim.ExitKind, qemuSaid string) (enclavesim.ExitKind, string) {
	switch {
	case m.panic != "":
		return enclavesim.ExitPanic, m.panic
	case waitErr == nil && m.reboot:
		return enclavesim.ExitReboot, ""
	case waitErr == nil && m.powerOff:
		return enclavesim.ExitPowerOff, ""
	case stopping != 0:
		return stopping, qemuSaid
	case qemuSaid != "":
		return enclavesim.ExitFailed, qemuSaid
	case waitErr != nil:
		return enclavesim.ExitFailed, waitErr.Error()
	}
	return enclavesim.ExitFailed, "QEMU exited without the kernel printing a power-off, reboot or panic line"
}

// kill ends QEMU: SIGTERM (QEMU shuts down and exits), SIGKILL after two
// seconds.
func (v *simVM) kill(why enclavesim.ExitKind) {
	v.mu.Lock()
	if v.stopping == 0 {
		v.stopping = why
	}
	v.mu.Unlock()
	select {
	case <-v.done:
		return
	default:
	}
	v.vm.Signal(syscall.SIGTERM)
	select {
	case <-v.done:
	case <-time.After(2 * time.Second):
		v.vm.Kill()
		<-v.done
	}
}

// Stop ends the VM if it still runs and returns how it ended. It is safe to
// call more than once and after Wait.
func (v *simVM) Stop() enclavesim.Exit {
	v.stopOnce.Do(func() { v.kill(enclavesim.ExitStopped) })
	<-v.done
	return v.exit
}

// Wait waits for the VM to end and says how. It does not stop the VM when
// ctx ends.
func (v *simVM) Wait(ctx context.Context) (enclavesim.Exit, error) {
	select {
	case <-v.done:
		return v.exit, nil
	case <-ctx.Done():
		return enclavesim.Exit{}, fmt.Errorf("VM still running: %w", ctx.Err())
	}
}

func (v *simVM) logf(format string, args ...any) {
	if v.opts.Logf != nil {
		v.opts.Logf(format, args...)
	}
}

// Done is closed when the VM has ended.
func (v *simVM) Done() <-chan struct{} { return v.done }

// Started is when QEMU was started.
func (v *simVM) Started() time.Time { return v.started }

// Heartbeat waits for the guest's first heartbeat and returns when it came.
func (v *simVM) Heartbeat(ctx context.Context) (time.Time, error) {
	for {
		if at, ok := v.HeartbeatReceived(); ok {
			return at, nil
		}
		select {
		case <-v.done:
			if at, ok := v.HeartbeatReceived(); ok {
				return at, nil
			}
			return time.Time{}, fmt.Errorf("VM ended (%s) without a heartbeat on port %d; console:\n%s", v.exit, enclavesim.HeartbeatPort, v.ConsoleTail(20))
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("no heartbeat on port %d: %w; console:\n%s", enclavesim.HeartbeatPort, ctx.Err(), v.ConsoleTail(20))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Console returns everything the console printed so far (up to the last
// 1 MiB), QEMU's own stderr lines included.
func (v *simVM) Console() string { return v.console.all() }

// ConsoleTail returns the last n lines of the console.
func (v *simVM) ConsoleTail(n int) string { return v.console.tail(n) }

// Kernel lines that say how a guest ended. They are printed at KERN_EMERG,
// so "quiet" does not hide them.
const (
	linePowerOff = "reboot: Power down"
	lineReboot   = "reboot: Restarting system"
	linePanic    = "Kernel panic - not syncing"
)

// consoleKeep bounds the console kept in memory; console.log has all of it.
const consoleKeep = 1 << 20

// consoleLog is the serial output writer given to qemu.WithSerialOutput:
// it splits the console into lines, drops the serial \r, writes them to
// console.log and an optional echo, keeps a bounded copy and notes the
// kernel's power-off, reboot and panic lines. QEMU's stdout and stderr
// reach it from two goroutines.
type consoleLog struct {
	file io.WriteCloser
	echo io.Writer

	mu      sync.Mutex
	partial []byte
	buf     []byte
	m       consoleMarks
}

type consoleMarks struct {
	powerOff, reboot bool
	panic            string // the panic line
}

func newConsoleLog(file io.WriteCloser, echo io.Writer) *consoleLog {
	return &consoleLog{file: file, echo: echo}
}

func (c *consoleLog) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.partial = append(c.partial, p...)
	for {
		i := bytes.IndexByte(c.partial, '\n')
		if i < 0 {
			break
		}
		c.addLocked(c.partial[:i+1])
		c.partial = c.partial[i+1:]
	}
	return len(p), nil
}

// Close flushes a last line without a newline and closes console.log.
func (c *consoleLog) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.partial) > 0 {
		c.addLocked(append(c.partial, '\n'))
		c.partial = nil
	}
	return c.file.Close()
}

func (c *consoleLog) addLocked(line []byte) {
	clean := bytes.ReplaceAll(line, []byte("\r"), nil)
	c.file.Write(clean)
	if c.echo != nil {
		c.echo.Write(clean)
	}
	c.buf = append(c.buf, clean...)
	if len(c.buf) > consoleKeep {
		c.buf = append([]byte(nil), c.buf[len(c.buf)-consoleKeep/2:]...)
	}
	s := string(clean)
	switch {
	case strings.Contains(s, linePowerOff):
		c.m.powerOff = true
	case strings.Contains(s, lineReboot):
		c.m.reboot = true
	case c.m.panic == "" && strings.Contains(s, linePanic):
		c.m.panic = strings.TrimSpace(s[strings.Index(s, linePanic):])
	}
}

func (c *consoleLog) marks() consoleMarks {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m
}

func (c *consoleLog) all() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return string(c.buf)
}

func (c *consoleLog) tail(n int) string {
	s := strings.TrimRight(c.all(), "\n")
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '\n' {
			n--
			if n == 0 {
				return s[i+1:]
			}
		}
	}
	return s
}

// lastQEMULine is QEMU's last complaint: vmtest sends QEMU's stderr to the
// serial outputs too, and QEMU starts its messages with its program name
// ("qemu-system-x86_64: -device ...: ...").
func (c *consoleLog) lastQEMULine(qemuCmd string) string {
	f := strings.Fields(qemuCmd)
	if len(f) == 0 {
		return ""
	}
	prefix := filepath.Base(f[0]) + ":"
	lines := strings.Split(c.all(), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(lines[i], prefix) {
			return strings.TrimSpace(lines[i])
		}
	}
	return ""
}

// recoverLog logs a panic of a background goroutine instead of crashing the
// test binary with a VM half stopped.
func recoverLog(logf func(string, ...any), what string) {
	if r := recover(); r != nil && logf != nil {
		logf("vmtests: %s panicked: %v", what, r)
	}
}
