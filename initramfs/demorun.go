package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/nitroinit/nitroinit/internal/enclavesim"
	"github.com/nitroinit/nitroinit/internal/wait"
)

// demoBinary is a program a demo needs on the host, with the flag that
// names it and how to build it.
type demoBinary struct{ flag, path, how string }

// checkBinaries names the first missing binary, its flag and how to build it.
func checkBinaries(bins []demoBinary) error {
	for _, b := range bins {
		if _, err := os.Stat(b.path); err != nil {
			return fmt.Errorf("%s %s: %w (build it with: %s)", b.flag, b.path, err, b.how)
		}
	}
	return nil
}

// demoRun is what the demos (demo, demo-eif) share: a work directory, the
// simulator options and kernel, and, once booted, the VM and initctl on
// the host.
type demoRun struct {
	out, errw io.Writer
	work      string
	keep      bool
	o         enclavesim.Options
	k         enclavesim.Kernel
	vm        *enclavesim.VM
	initctl   []string // argv of initctl on the host, talking to vm
}

// newDemo creates the work directory (named after prefix) and finds the
// kernel. Close removes the directory, or reports it with keep.
func newDemo(out, errw io.Writer, sf simFlags, prefix string, keep bool) (*demoRun, error) {
	work, err := os.MkdirTemp("", prefix)
	if err != nil {
		return nil, err
	}
	d := &demoRun{out: out, errw: errw, work: work, keep: keep, o: sf.options(errw)}
	if d.o.Dir == "" {
		d.o.Dir = filepath.Join(work, "sim")
	}
	if d.k, err = enclavesim.FindKernel(); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// Close stops the VM, if one was booted, and removes or reports the work
// directory.
func (d *demoRun) Close() {
	if d.vm != nil {
		d.vm.Stop()
	}
	if d.keep {
		fmt.Fprintf(d.errw, "initramfs: work directory kept: %s\n", d.work)
	} else {
		os.RemoveAll(d.work)
	}
}

// step announces a stage of the demo.
func (d *demoRun) step(format string, args ...any) {
	fmt.Fprintf(d.out, "\n==> "+format+"\n", args...)
}

// resolve resolves the simulator options with initrd (in the work
// directory) as the image; Resolve checks that it exists, so an empty one
// is written until the real image is. The route decides which CID the
// guest's heartbeat goes to, so this comes before init.yaml is written.
func (d *demoRun) resolve(ctx context.Context, initrd string) error {
	d.o.Initrd = filepath.Join(d.work, initrd)
	if err := os.WriteFile(d.o.Initrd, nil, 0o644); err != nil {
		return err
	}
	o, err := d.o.Resolve(ctx)
	if err != nil {
		return err
	}
	d.o = o
	return nil
}

// boot starts the VM with o, its console shown with a "guest|" prefix,
// waits for its heartbeat and sets up initctl (ctlBin) to talk to it.
func (d *demoRun) boot(ctx context.Context, o enclavesim.Options, ctlBin string) error {
	o.Console = prefixWriter(d.out, "    guest| ")
	vm, err := enclavesim.Start(ctx, o)
	if err != nil {
		return err
	}
	d.vm = vm
	hb, err := vm.Heartbeat(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(d.out, "    heartbeat received %s after QEMU started\n", hb.Sub(vm.Started()).Round(time.Millisecond))
	d.initctl = initctlArgs(vm)
	d.initctl[0], err = filepath.Abs(ctlBin)
	return err
}

// output runs initctl with args and returns what it printed.
func (d *demoRun) output(ctx context.Context, args ...string) (string, error) {
	full := append(append([]string{}, d.initctl...), args...)
	c := exec.CommandContext(ctx, full[0], full[1:]...)
	var buf bytes.Buffer
	c.Stdout, c.Stderr = &buf, &buf
	err := c.Run()
	return buf.String(), err
}

// run shows initctl with args as a shell command, runs it and shows what it
// printed.
func (d *demoRun) run(ctx context.Context, args ...string) error {
	fmt.Fprintf(d.out, "\n$ %s\n", shellJoin(append([]string{"initctl"}, append(d.initctl[1:], args...)...)))
	s, err := d.output(ctx, args...)
	io.WriteString(d.out, s)
	if err != nil {
		return fmt.Errorf("initctl %s: %w", strings.Join(args, " "), err)
	}
	return nil
}

// demoStall is how long a demo step may see nothing move, neither what it
// waits for nor the guest's console, before the demo gives up: a busy
// machine (a guest under TCG beside other work) makes the demo slower, not
// failed, and a guest that hangs still fails it.
const demoStall = time.Minute

// until polls ok, at most every interval, until it reports true, following
// progress as the tests do (internal/wait): what ok describes and the
// guest's console both count. A failure names what did not happen and
// shows the console's end.
func (d *demoRun) until(ctx context.Context, what string, every time.Duration, ok func() (bool, string)) error {
	lim := wait.Limits{Stall: demoStall, Poll: every, Progress: d.vm.ConsoleLines}
	if err := lim.Until(ctx, what, ok); err != nil {
		return fmt.Errorf("%w; console:\n%s", err, d.vm.ConsoleTail(20))
	}
	return nil
}

// waitPowerOff waits for the VM to end (after a shutdown request) for as
// long as its console keeps moving, and fails unless it powered off
// cleanly; then it prints done.
func (d *demoRun) waitPowerOff(ctx context.Context, done string) error {
	wctx, cancel := wait.Limits{Stall: demoStall, Progress: d.vm.ConsoleLines}.Context(ctx, "the enclave to power off")
	defer cancel()
	exit, err := d.vm.Wait(wctx)
	if err != nil {
		if ctx.Err() == nil {
			err = context.Cause(wctx) // the wait's *wait.Error: nothing moved
		}
		return err
	}
	fmt.Fprintf(d.out, "    VM ended: %s\n", exit)
	if exit.Kind != enclavesim.ExitPowerOff {
		return &exitError{code: 1, err: fmt.Errorf("the enclave did not power off cleanly: %s", exit)}
	}
	fmt.Fprintln(d.out, "\n"+done)
	return nil
}
