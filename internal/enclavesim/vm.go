package enclavesim

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hugelgupf/vmtest/qemu"

	"github.com/nitroinit/nitroinit/internal/nitro"
)

// ExitKind says how a VM ended.
type ExitKind int

// How a VM can end.
const (
	// ExitPowerOff: the guest powered off (the kernel printed
	// "reboot: Power down").
	ExitPowerOff ExitKind = iota + 1
	// ExitReboot: the guest asked for a reboot ("reboot: Restarting
	// system"); -no-reboot made QEMU exit instead.
	ExitReboot
	// ExitPanic: the kernel panicked (panic=-1 rebooted, QEMU exited).
	ExitPanic
	// ExitTimeout: Options.Timeout passed and QEMU was killed.
	ExitTimeout
	// ExitStopped: Stop ended QEMU.
	ExitStopped
	// ExitFailed: QEMU failed (non-zero status, killed by someone else) or
	// exited without the kernel saying why.
	ExitFailed
)

func (k ExitKind) String() string {
	switch k {
	case ExitPowerOff:
		return "power-off"
	case ExitReboot:
		return "reboot"
	case ExitPanic:
		return "kernel panic"
	case ExitTimeout:
		return "timeout"
	case ExitStopped:
		return "stopped"
	case ExitFailed:
		return "QEMU failed"
	}
	return fmt.Sprintf("ExitKind(%d)", int(k))
}

// Exit describes the end of a VM.
type Exit struct {
	Kind ExitKind
	// Code is QEMU's exit status (-1 when killed by a signal).
	Code int
	// Detail is QEMU's last stderr line or the panic message, if any.
	Detail string
	// Uptime is the time from QEMU's start to its exit.
	Uptime time.Duration
}

func (e Exit) String() string {
	s := fmt.Sprintf("%s after %s (QEMU status %d)", e.Kind, e.Uptime.Round(time.Millisecond), e.Code)
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	return s
}

// VM is a running simulated enclave.
type VM struct {
	*hostSide
	opts    Options
	qemu    *qemu.VM
	console *serialConsole
	started time.Time
	tempDir bool // Dir was created by Start and is removed by Stop

	done     chan struct{} // closed when QEMU has exited and the console is drained
	exit     Exit
	mu       sync.Mutex
	stopping ExitKind // set before we signal QEMU: ExitStopped or ExitTimeout
	stopOnce sync.Once
}

// Start boots a VM: resolves the options, starts the vsock host side and the
// heartbeat listener, then QEMU, through hugelgupf/vmtest's qemu package.
// The VM runs until the guest powers off or reboots, Options.Timeout passes
// or Stop is called; ctx only bounds the start.
//
// vmtest gives QEMU a pty as stdin and merges its stderr into the serial
// console; it cannot put QEMU in a process group of its own, so a terminal's
// Ctrl-C reaches QEMU too. If the caller dies without Stop, QEMU on the
// vhost-user route exits with its vhost-user device; on the vhost-vsock route it runs
// until the guest powers off or Options.Timeout.
func Start(ctx context.Context, o Options) (*VM, error) {
	o, err := o.Resolve(ctx)
	if err != nil {
		return nil, err
	}
	vm := &VM{opts: o, done: make(chan struct{})}
	if o.Dir == "" {
		// Short and under /tmp: Unix socket names are limited to 107 bytes.
		d, err := os.MkdirTemp("", "esim")
		if err != nil {
			return nil, err
		}
		vm.opts.Dir, vm.tempDir = d, true
	} else if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("simulator directory: %w", err)
	}
	o = vm.opts
	fail := func(err error) (*VM, error) {
		if vm.hostSide != nil {
			vm.hostSide.Close()
		}
		if vm.tempDir {
			os.RemoveAll(o.Dir)
		}
		return nil, err
	}
	if _, err := CommandLine(o); err != nil {
		return fail(err)
	}
	logFile, err := os.Create(ConsoleLog(o.Dir))
	if err != nil {
		return fail(fmt.Errorf("console log: %w", err))
	}
	vm.console = newConsole(logFile, o.Console)
	// The host side first: QEMU connects to the vhost-user device while it
	// sets the device up.
	if vm.hostSide, err = startHostSide(o); err != nil {
		vm.console.Close()
		return fail(err)
	}
	host := vm.hostSide
	fns := qemuFns(o,
		// vm.qemu.Wait closes the serial outputs, which closes console.log.
		qemu.WithSerialOutput(vm.console),
		// The host side goes once QEMU has exited (QEMU 7.2 does not survive
		// its vhost-user device going first), before Wait returns: a
		// caller that saw the VM end may boot the next one, which needs
		// the machine-wide vsock ports on the vhost-vsock route.
		qemu.WithTask(qemu.Cleanup(host.Close)),
	)
	vm.started = time.Now()
	vm.qemu, err = qemu.Start(qemu.ArchAMD64, fns...)
	if err != nil {
		vm.console.Close()
		return fail(fmt.Errorf("starting QEMU %s: %w (install qemu-system-x86 or set VMTEST_QEMU)", o.QEMU, err))
	}
	o.logf("enclavesim: %s", vm.qemu.CmdlineQuoted())
	// Wait must run from the start, not only when a caller asks how the VM
	// ended: it drains the pty that vmtest puts on QEMU's stdout, and
	// without a reader that pty fills up and blocks the guest's console.
	go vm.wait()
	if o.Timeout > 0 {
		go func() {
			defer recoverTo(o.Logf, "timeout watcher")
			t := time.NewTimer(o.Timeout)
			defer t.Stop()
			select {
			case <-t.C:
				vm.kill(ExitTimeout)
			case <-vm.done:
			}
		}()
	}
	return vm, nil
}

// wait collects QEMU's end through vmtest's Wait (which drains the console,
// closes it and runs the host side's cleanup) and classifies it.
func (vm *VM) wait() {
	defer close(vm.done)
	defer recoverTo(vm.opts.Logf, "QEMU waiter")
	err := vm.qemu.Wait()
	vm.mu.Lock()
	stopping := vm.stopping
	vm.mu.Unlock()
	e := classify(err, vm.console.Markers(), stopping, lastQEMULine(vm.console.String(), vm.opts.QEMU))
	e.Uptime = time.Since(vm.started)
	vm.exit = e
	vm.opts.logf("enclavesim: VM ended: %s", e)
}

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

// classify decides how a VM ended, once QEMU has exited and its console is
// drained, from:
//   - waitErr, what waiting for QEMU returned (exec.Cmd.Wait, or
//     hugelgupf/vmtest's VM.Wait): nil for status 0, an *exec.ExitError
//     for another status or a signal;
//   - m, the kernel's last words on the console (Console.Markers);
//   - stopping, ExitStopped or ExitTimeout when the caller was ending QEMU
//     itself, else 0;
//   - qemuSaid, QEMU's own last complaint (its last stderr line), or "".
//
// The kernel's words win: a guest that powered off just as a timeout fired
// still powered off. Power-off and reboot count only when QEMU exited 0.
// The Exit has Kind, Code (QEMU's status, -1 after a signal or when waitErr
// is not an *exec.ExitError) and Detail; the caller sets Uptime.
func classify(waitErr error, m markers, stopping ExitKind, qemuSaid string) Exit {
	e := Exit{Kind: ExitFailed}
	var ee *exec.ExitError
	switch {
	case waitErr == nil:
	case errors.As(waitErr, &ee):
		e.Code = ee.ExitCode()
	default:
		e.Code = -1
	}
	switch {
	case m.Panic != "":
		e.Kind, e.Detail = ExitPanic, m.Panic
	case waitErr == nil && m.Reboot:
		e.Kind = ExitReboot
	case waitErr == nil && m.PowerOff:
		e.Kind = ExitPowerOff
	case stopping != 0:
		e.Kind, e.Detail = stopping, qemuSaid
	case qemuSaid != "":
		e.Detail = qemuSaid
	case waitErr != nil:
		e.Detail = waitErr.Error()
	default:
		e.Detail = "QEMU exited without the kernel printing a power-off, reboot or panic line"
	}
	return e
}

// Args is QEMU's argv as started.
func (vm *VM) Args() []string { return vm.qemu.Cmdline() }

// Dir is the directory with the sockets and console.log.
func (vm *VM) Dir() string { return vm.opts.Dir }

// Options returns the resolved options the VM runs with.
func (vm *VM) Options() Options { return vm.opts }

// Started is when QEMU was started.
func (vm *VM) Started() time.Time { return vm.started }

// Done is closed when the VM has ended.
func (vm *VM) Done() <-chan struct{} { return vm.done }

// Heartbeat waits for the guest's heartbeat and returns when it arrived.
func (vm *VM) Heartbeat(ctx context.Context) (time.Time, error) {
	select {
	case <-vm.hbDone:
		return vm.hbTime, nil
	case <-vm.done:
		if t, ok := vm.HeartbeatReceived(); ok {
			return t, nil
		}
		return time.Time{}, fmt.Errorf("VM ended (%s) without a heartbeat; console:\n%s", vm.exit, vm.ConsoleTail(20))
	case <-ctx.Done():
		return time.Time{}, fmt.Errorf("no heartbeat on port %d: %w; console:\n%s", nitro.HeartbeatPort, ctx.Err(), vm.ConsoleTail(20))
	}
}

// Dial connects to a guest port, retrying until ctx ends: a connection
// attempt before the guest listens is reset, so the first tries after boot
// are expected to fail.
func (vm *VM) Dial(ctx context.Context, port uint32) (net.Conn, error) {
	var last error
	for {
		attempt, cancel := context.WithTimeout(ctx, 5*time.Second)
		c, err := vm.DialOnce(attempt, port)
		cancel()
		if err == nil {
			return c, nil
		}
		last = err
		select {
		case <-vm.done:
			return nil, fmt.Errorf("guest port %d: VM ended (%s): %w", port, vm.exit, last)
		case <-ctx.Done():
			return nil, fmt.Errorf("guest port %d: %w (last try: %v)", port, ctx.Err(), last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Wait waits for the VM to end and says how. It does not stop the VM when
// ctx ends.
func (vm *VM) Wait(ctx context.Context) (Exit, error) {
	select {
	case <-vm.done:
		vm.hostSide.Close()
		return vm.exit, nil
	case <-ctx.Done():
		return Exit{}, fmt.Errorf("VM still running: %w", ctx.Err())
	}
}

// kill notes why QEMU is ending and ends it (terminate).
func (vm *VM) kill(why ExitKind) {
	vm.mu.Lock()
	if vm.stopping == 0 {
		vm.stopping = why
	}
	vm.mu.Unlock()
	terminate(vm.qemu, vm.done)
}

// A signaler is a running QEMU: *os.Process, or hugelgupf/vmtest's *qemu.VM.
type signaler interface {
	Signal(os.Signal) error
	Kill() error
}

// terminate ends a QEMU the way Stop does and returns once done (closed when
// the caller has seen QEMU exit) is closed: SIGTERM, on which QEMU stops the
// guest and exits, then SIGKILL if it is still there two seconds later.
// Nothing is sent when done is already closed. Callers note that they were
// stopping QEMU before calling it, for classify.
func terminate(p signaler, done <-chan struct{}) {
	select {
	case <-done:
		return
	default:
	}
	p.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		p.Kill()
		<-done
	}
}

// Stop ends the VM if it is still running, closes the host side and removes a
// temporary Dir. It returns how the VM ended. It is safe to call more than
// once and after Wait.
func (vm *VM) Stop() Exit {
	vm.stopOnce.Do(func() {
		vm.kill(ExitStopped)
		vm.hostSide.Close()
		if vm.tempDir {
			os.RemoveAll(vm.opts.Dir)
		}
	})
	<-vm.done
	return vm.exit
}

// ConsoleTail returns the last n lines of the console.
func (vm *VM) ConsoleTail(n int) string { return vm.console.Tail(n) }

// Console returns everything the console printed so far (up to the last
// 1 MiB).
func (vm *VM) Console() string { return vm.console.String() }

// ConsoleLines is how many lines the console has printed so far: the
// guest's sign of life for waits that follow progress rather than the
// clock (internal/wait's Limits.Progress).
func (vm *VM) ConsoleLines() int64 { return vm.console.Lines() }

// WaitConsole waits until the console has printed s, the VM ends or ctx
// ends.
func (vm *VM) WaitConsole(ctx context.Context, s string) error {
	for {
		if strings.Contains(vm.console.String(), s) {
			return nil
		}
		select {
		case <-vm.done:
			if strings.Contains(vm.console.String(), s) {
				return nil
			}
			return fmt.Errorf("VM ended (%s) before the console printed %q; console:\n%s", vm.exit, s, vm.ConsoleTail(20))
		case <-ctx.Done():
			return fmt.Errorf("console never printed %q: %w; console:\n%s", s, ctx.Err(), vm.ConsoleTail(20))
		case <-vm.console.Changed():
		}
	}
}
