package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/nitroinit/nitroinit/internal/enclavesim"
	"github.com/nitroinit/nitroinit/internal/nitro"
)

// simFlags are the simulator options shared by boot and demo.
type simFlags struct {
	opts    enclavesim.Options
	cid     uint32
	verbose bool
	nsm     enclavesim.NSMOptions
}

func (s *simFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&s.opts.Kernel, "kernel", "", "kernel image (default: the cached test kernel, or $NITROINIT_KERNEL)")
	f.Uint32Var(&s.cid, "cid", 16, "guest CID")
	f.StringVar(&s.opts.Dir, "dir", "", "directory for the sockets and console.log (default: a new temporary one)")
	f.IntVar(&s.opts.MemoryMB, "memory", 512, "guest memory in MiB")
	f.IntVar(&s.opts.CPUs, "cpus", 1, "guest vCPUs")
	f.StringVar(&s.opts.Accel, "accel", "", "tcg or kvm (default: kvm when it really works, else tcg; $VMTEST_ACCEL)")
	f.StringVar(&s.opts.Route, "route", "", "vsock route: vhost-user or vhost-vsock (default: vhost-vsock when /dev/vhost-vsock opens)")
	f.StringVar(&s.opts.Append, "append", "", "extra kernel command line")
	f.StringVar(&s.opts.QEMU, "qemu", "", "QEMU binary or command line (default: $VMTEST_QEMU or qemu-system-x86_64)")
	f.DurationVar(&s.opts.Timeout, "timeout", 0, "kill QEMU after this long (0: no limit)")
	f.BoolVarP(&s.verbose, "verbose", "v", false, "log the simulator's decisions and the vsock device's diagnostics")
	f.StringVar(&s.opts.Machine, "machine", "", "QEMU machine: q35 (default; virtio PCI) or microvm (virtio-mmio, as in Nitro; the kernel needs virtio_mmio)")
	s.registerNSM(cmd)
}

func (s *simFlags) options(stderr io.Writer) enclavesim.Options {
	o := s.opts
	o.GuestCID = s.cid
	o.NSM = &s.nsm
	if s.verbose {
		o.Logf = func(format string, args ...any) { fmt.Fprintf(stderr, "initramfs: "+format+"\n", args...) }
	}
	return o
}

func bootCmd() *cobra.Command {
	var (
		sf        simFlags
		printOnly bool
		ff        fwdFlags
	)
	cmd := &cobra.Command{
		Use:   "boot [flags] IMAGE",
		Short: "Boot an image in the enclave simulator until the guest powers off or Ctrl-C",
		Long: `Boot IMAGE under QEMU with a virtio-vsock device and the parent's heartbeat
listener (vsock port 9000), stream the console here, and run until the guest
powers off (or Ctrl-C, which stops QEMU). While it runs, manage the enclave
from another terminal with the printed initctl command.

The image's init.yaml must send its heartbeat to the CID this prints (3 with
the userspace vhost-user device, 2 with the kernel's vhost-vsock).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			stderr := cmd.ErrOrStderr()
			o := sf.options(stderr)
			o.Initrd = args[0]
			o, cleanup, err := prepareEIF(stderr, o)
			if err != nil {
				return err
			}
			defer cleanup()
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if printOnly {
				r, err := o.Resolve(ctx)
				if err != nil {
					return err
				}
				if r.Dir == "" {
					r.Dir = "DIR"
				}
				argv, err := enclavesim.CommandLine(r)
				if err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), shellJoin(argv))
				return nil
			}
			o.Console = cmd.OutOrStdout()
			fwds, err := ff.plan()
			if err != nil {
				return err
			}
			vm, err := enclavesim.Start(ctx, o)
			if err != nil {
				return err
			}
			if err := startForwarders(ctx, fwds, vm, stderr); err != nil {
				vm.Stop()
				return err
			}
			describe(stderr, vm, args[0])
			exit := runUntilEnd(ctx, stderr, vm)
			if exit.Kind != enclavesim.ExitPowerOff {
				return &exitError{code: 1, err: fmt.Errorf("guest did not power off: %s", exit)}
			}
			return nil
		},
	}
	sf.register(cmd)
	ff.register(cmd)
	cmd.Flags().BoolVar(&printOnly, "print-cmdline", false, "print the QEMU command line and exit (sockets under DIR unless --dir)")
	return cmd
}

// describe tells the user where everything is.
func describe(w io.Writer, vm *enclavesim.VM, img string) {
	o := vm.Options()
	fmt.Fprintf(w, "initramfs: booting %s\n", img)
	fmt.Fprintf(w, "initramfs:   kernel %s, accel %s, vsock route %s, guest CID %d\n", o.Kernel, o.Accel, o.Route, vm.GuestCID())
	fmt.Fprintf(w, "initramfs:   the guest's heartbeat must go to CID %d port %d\n", vm.HostCID(), nitro.HeartbeatPort)
	fmt.Fprintf(w, "initramfs:   console log %s\n", enclavesim.ConsoleLog(vm.Dir()))
	describeNSM(w, vm)
	fmt.Fprintf(w, "initramfs: manage it from another terminal with:\n    %s list\n", shellJoin(initctlArgs(vm)))
}

// initctlArgs is how initctl reaches this VM's init (control port 9001).
func initctlArgs(vm *enclavesim.VM) []string {
	if p := vm.HybridSocket(); p != "" {
		return []string{"initctl", "--vsock-uds", p}
	}
	return []string{"initctl", "--protocol", "vsock", "--vsock-cid", fmt.Sprint(vm.GuestCID())}
}

// runUntilEnd reports the heartbeat and waits for the VM to end; ctx ending
// (Ctrl-C) stops it.
func runUntilEnd(ctx context.Context, w io.Writer, vm *enclavesim.VM) enclavesim.Exit {
	go func() {
		if t, err := vm.Heartbeat(ctx); err == nil {
			fmt.Fprintf(w, "initramfs: heartbeat from the guest %s after start\n", t.Sub(vm.Started()).Round(time.Millisecond))
		}
	}()
	select {
	case <-vm.Done():
	case <-ctx.Done():
		fmt.Fprintln(w, "initramfs: interrupted, stopping QEMU")
	}
	exit := vm.Stop()
	fmt.Fprintf(w, "initramfs: VM ended: %s\n", exit)
	return exit
}

// shellJoin quotes argv for a POSIX shell, for commands users copy.
func shellJoin(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		if a != "" && strings.Trim(a, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:,+@%") == "" {
			q[i] = a
		} else {
			q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(q, " ")
}
