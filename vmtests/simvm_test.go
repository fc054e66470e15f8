package vmtests

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hugelgupf/vmtest/qemu"

	"github.com/nitroinit/nitroinit/internal/enclavesim"
)

// simVM is a simulated enclave whose QEMU runs under hugelgupf/vmtest's
// qemu package. The simulator provides the rest: the vsock backend (our
// userspace vhost-user device, or the host's vhost-vsock) and the parent's
// heartbeat listener (enclavesim.StartBackend, embedded here for DialOnce,
// ListenHost, HybridSocket, HeartbeatReceived and Route), the machine,
// memory, accelerator, serial and vsock arguments
// (enclavesim.MachineArgs), the kernel command line
// (enclavesim.KernelCmdline), the accelerator choice (Options.Resolve), the
// console capture (enclavesim.Console, as vmtest's serial output) and the
// verdict on how the VM ended (enclavesim.Classify).
type simVM struct {
	*enclavesim.Backend
	opts    enclavesim.Options
	vm      *qemu.VM
	console *enclavesim.Console
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
	v := &simVM{opts: o, console: enclavesim.NewConsole(logFile, echo), done: make(chan struct{})}
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
		// vmtest adds -nographic, -kernel, -initrd and -append itself.
		qemu.ArbitraryArgs(enclavesim.MachineArgs(o)...),
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

// wait collects QEMU's end through vm.Wait (which drains the console, closes
// it and runs the backend's cleanup) and classifies it.
func (v *simVM) wait() {
	defer close(v.done)
	defer recoverLog(v.opts.Logf, "VM waiter")
	err := v.vm.Wait()
	v.mu.Lock()
	stopping := v.stopping
	v.mu.Unlock()
	e := enclavesim.Classify(err, v.console.Markers(), stopping, lastQEMULine(v.console.String(), v.opts.QEMU))
	e.Uptime = time.Since(v.started)
	v.exit = e
	v.logf("vmtest/qemu: VM ended: %s", e)
}

// kill notes why QEMU is ending and ends it as the simulator does
// (enclavesim.Terminate: SIGTERM, SIGKILL after two seconds).
func (v *simVM) kill(why enclavesim.ExitKind) {
	v.mu.Lock()
	if v.stopping == 0 {
		v.stopping = why
	}
	v.mu.Unlock()
	enclavesim.Terminate(v.vm, v.done)
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
func (v *simVM) Console() string { return v.console.String() }

// ConsoleLines is how many lines the console has printed so far.
func (v *simVM) ConsoleLines() int64 { return v.console.Lines() }

// ConsoleTail returns the last n lines of the console.
func (v *simVM) ConsoleTail(n int) string { return v.console.Tail(n) }

// lastQEMULine is QEMU's last complaint in console: vmtest sends QEMU's
// stderr to the serial outputs too, and QEMU starts its messages with its
// program name ("qemu-system-x86_64: -device ...: ..."), the first word of
// qemuCmd.
func lastQEMULine(console, qemuCmd string) string {
	f := strings.Fields(qemuCmd)
	if len(f) == 0 {
		return ""
	}
	prefix := filepath.Base(f[0]) + ":"
	lines := strings.Split(console, "\n")
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
