// Package enclavesim runs a Nitro-Enclave-like virtual machine for tests and
// demos: QEMU boots a kernel and an initramfs whose /init is PID 1, with a
// virtio-vsock device, the parent's heartbeat listener on port 9000 and the
// console captured.
//
// Two vsock routes exist. "vhost-user" (always available) serves the device
// from this process (internal/vsockdev) through QEMU's vhost-user-vsock-pci;
// host programs reach the guest through a hybrid vsock Unix socket, and the
// guest reaches the host at CID 3 (the Nitro parent's CID). "vhost-vsock"
// uses the host kernel's /dev/vhost-vsock through QEMU's vhost-vsock-pci;
// host programs use AF_VSOCK to the guest CID, and the guest must dial CID 2
// because vhost-vsock only delivers packets addressed to the host's CID 2.
// VM.HostCID says which, so images can put it into init.yaml.
package enclavesim

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hugelgupf/vmtest/qemu"

	"github.com/nitroinit/nitroinit/internal/nitro"
	"github.com/nitroinit/nitroinit/internal/vsockdev"
)

// vsock routes.
const (
	RouteVhostUser  = "vhost-user"
	RouteVhostVsock = "vhost-vsock"
)

// Options configure a VM. The zero value of each field means "choose for me"
// (see Resolve).
type Options struct {
	// QEMU is the QEMU binary, or a command line whose first word is the
	// binary and whose rest are extra arguments. "" means $VMTEST_QEMU, else
	// qemu-system-x86_64.
	QEMU string
	// Kernel is the image for -kernel; "" means FindKernel's BootImage.
	Kernel string
	// Initrd is the initramfs (required).
	Initrd string
	// Append is added to the kernel command line after the simulator's own
	// parameters (console=ttyS0 panic=-1 no_timer_check quiet).
	Append string
	// MemoryMB is the guest memory; 0 means 512.
	MemoryMB int
	// CPUs is the number of vCPUs; 0 means 1.
	CPUs int
	// GuestCID is the guest's CID; 0 means 16 (the first Nitro enclave).
	GuestCID uint32
	// Dir holds the sockets and console.log; "" means a new temporary
	// directory, removed by Stop.
	Dir string
	// Console receives the guest's serial console as it arrives (besides
	// Dir/console.log and ConsoleTail).
	Console io.Writer
	// Accel is "tcg" or "kvm"; "" means detectAccel. A QEMU command line
	// that chooses an accelerator itself (-accel, -enable-kvm) wins.
	Accel string
	// Route is RouteVhostUser or RouteVhostVsock; "" means vhost-vsock when
	// /dev/vhost-vsock is usable, else vhost-user. NITROINIT_VSOCK_ROUTE
	// overrides "".
	Route string
	// Timeout kills QEMU that long after start; 0 means no limit.
	Timeout time.Duration
	// Reboot lets a guest reboot inside the VM instead of ending it (QEMU
	// without -no-reboot), on the same vsock device: for tests of the
	// device across guest reboots. A kernel panic then reboots the guest
	// too, so a guest that keeps panicking runs until Timeout or Stop.
	Reboot bool
	// Device, when not nil, is the userspace vsock device to attach
	// instead of a new one (vhost-user route only). The caller made it
	// with DeviceConfig(Dir), serves it and closes it; it outlives the VM,
	// so a test can boot one QEMU after another on it.
	Device *vsockdev.Device
	// Logf receives the simulator's diagnostics; nil discards them.
	Logf func(format string, args ...any)
	// Cmdline, when set, replaces the simulator's own kernel command line
	// (an EIF's, which is measured; see PrepareEIF). Append follows it.
	Cmdline string
	// Machine is MachineQ35 ("": PCI devices) or MachineMicrovm (virtio-mmio
	// devices only, as in a Nitro enclave).
	Machine string
	// NSM, when not nil, serves the simulated NSM (nsm.go).
	NSM *NSMOptions
}

// Resolve fills in every choice Start would make, so a caller can show the
// exact command line (initramfs boot --print-cmdline) or reuse it. Creating
// a temporary Dir is left to Start.
func (o Options) Resolve(ctx context.Context) (Options, error) {
	if o.Initrd == "" {
		return o, fmt.Errorf("no initramfs given: build one with `initramfs build`")
	}
	if _, err := os.Stat(o.Initrd); err != nil {
		return o, fmt.Errorf("initramfs: %w", err)
	}
	if o.QEMU == "" {
		o.QEMU = os.Getenv("VMTEST_QEMU")
	}
	if o.QEMU == "" {
		o.QEMU = "qemu-system-x86_64"
	}
	qemu := strings.Fields(o.QEMU)
	if len(qemu) == 0 {
		return o, fmt.Errorf("QEMU command %q is empty", o.QEMU)
	}
	if o.Kernel == "" {
		k, err := FindKernel()
		if err != nil {
			return o, err
		}
		o.Kernel = k.BootImage()
	} else if _, err := os.Stat(o.Kernel); err != nil {
		return o, fmt.Errorf("kernel: %w", err)
	}
	if o.MemoryMB == 0 {
		o.MemoryMB = 512
	}
	if o.CPUs == 0 {
		o.CPUs = 1
	}
	if o.GuestCID == 0 {
		o.GuestCID = nitro.DefaultEnclaveCID
	}
	if o.GuestCID <= 2 || o.GuestCID == 0xffffffff {
		return o, fmt.Errorf("guest CID %d is reserved: use 3 or more (Nitro enclaves get 4 and up, 16 first)", o.GuestCID)
	}
	if o.Route == "" {
		o.Route = os.Getenv("NITROINIT_VSOCK_ROUTE")
	}
	switch o.Route {
	case "":
		o.Route = RouteVhostUser
		if vhostVsockUsable() == nil {
			o.Route = RouteVhostVsock
		}
	case RouteVhostUser:
	case RouteVhostVsock:
		if err := vhostVsockUsable(); err != nil {
			return o, fmt.Errorf("route %s: %w", RouteVhostVsock, err)
		}
	default:
		return o, fmt.Errorf("unknown vsock route %q: want %s or %s", o.Route, RouteVhostUser, RouteVhostVsock)
	}
	if o.Route == RouteVhostUser && o.GuestCID == nitro.ParentCID {
		return o, fmt.Errorf("guest CID 3 is the parent's CID on the %s route: pick another", o.Route)
	}
	if err := checkMachine(o.Machine); err != nil {
		return o, err
	}
	if o.Accel == "" && !choosesAccel(qemu) {
		accel, why := detectAccel(ctx, qemu, o.Kernel)
		o.logf("accelerator %s: %s", accel, why)
		o.Accel = accel
	}
	switch o.Accel {
	case "", AccelTCG, AccelKVM:
	default:
		return o, fmt.Errorf("unknown accelerator %q: want %s or %s", o.Accel, AccelTCG, AccelKVM)
	}
	return o, nil
}

func (o Options) logf(format string, args ...any) {
	if o.Logf != nil {
		o.Logf(format, args...)
	}
}

// choosesAccel reports whether extra QEMU arguments already pick an
// accelerator.
func choosesAccel(qemu []string) bool {
	for _, a := range qemu[1:] {
		if a == "-enable-kvm" || a == "-accel" || a == "--accel" || strings.Contains(a, "accel=") {
			return true
		}
	}
	return false
}

// DeviceConfig is the configuration of the vsock device a VM in dir
// attaches to (its vhost-user and hybrid sockets), for Options.Device.
func DeviceConfig(dir string) vsockdev.Config {
	return vsockdev.Config{VhostUserSocket: vhostUserSocket(dir), HybridSocket: hybridSocketPath(dir)}
}

// vhostUserSocket is where the vhost-user device listens for QEMU in dir.
func vhostUserSocket(dir string) string { return filepath.Join(dir, "vhost-user.sock") }

// hybridSocketPath is the hybrid vsock socket in dir: `initctl --vsock-uds` and
// hvsock.Dial take it.
func hybridSocketPath(dir string) string { return filepath.Join(dir, "vsock.sock") }

// ConsoleLog is where the console is written in dir.
func ConsoleLog(dir string) string { return filepath.Join(dir, "console.log") }

// maxSocketPath is sun_path's size less the terminating NUL.
const maxSocketPath = 107

// CommandLine returns QEMU's argv (argv[0] is the binary) for resolved
// options, with sockets in o.Dir, exactly as Start runs it: the QEMU
// command, vmtest's -nographic, -kernel, -initrd and -append, and
// machineArgs.
func CommandLine(o Options) ([]string, error) {
	if o.Route == "" || o.MemoryMB == 0 || o.Kernel == "" || o.Dir == "" {
		return nil, fmt.Errorf("options not resolved (route %q, memory %d, kernel %q, dir %q): call Resolve and set Dir", o.Route, o.MemoryMB, o.Kernel, o.Dir)
	}
	qo, err := qemu.OptionsFor(qemu.ArchAMD64, qemuFns(o)...)
	if err != nil {
		return nil, fmt.Errorf("QEMU options: %w", err)
	}
	return qo.Cmdline()
}

// qemuFns are the vmtest options that make o's QEMU: the command, kernel,
// initramfs and kernel command line, and as arbitrary arguments
// machineArgs (vmtest has no option for vsock or memory backends).
func qemuFns(o Options, more ...qemu.Fn) []qemu.Fn {
	return append([]qemu.Fn{
		qemu.WithQEMUCommand(o.QEMU),
		qemu.WithKernel(o.Kernel),
		qemu.WithInitramfs(o.Initrd),
		qemu.WithAppendKernel(kernelCmdline(o)),
		qemu.ArbitraryArgs(machineArgs(o)...),
	}, more...)
}

// machineArgs returns the QEMU arguments for resolved options other than
// the binary, the display and the boot files (-kernel, -initrd, -append,
// which vmtest adds): no default devices or user config, -no-reboot
// (unless o.Reboot), the q35 machine with o's memory and vCPUs, the accelerator (none when o.Accel
// is "": the QEMU command chooses), the serial console on QEMU's stdio, and
// the guest memory backend and vsock device (vsockArgs).
func machineArgs(o Options) []string {
	args := []string{
		"-nodefaults", "-no-user-config",
		"-M", machineArg(o.Machine),
		"-m", strconv.Itoa(o.MemoryMB) + "M",
		"-smp", strconv.Itoa(o.CPUs),
	}
	if !o.Reboot {
		// A guest reboot ends QEMU too; the console tells reboot from
		// power-off (see classify).
		args = append(args, "-no-reboot")
	}
	switch o.Accel {
	case AccelKVM:
		args = append(args, "-accel", "kvm", "-cpu", "host")
	case AccelTCG:
		args = append(args, "-accel", "tcg")
	}
	// signal=off: a terminal's ^C, or a stray one on the pty vmtest gives
	// QEMU as stdin, must not end the VM; Stop does that.
	args = append(args, "-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con")
	return append(args, vsockArgs(o)...)
}

// KernelCmdline is the simulator's own kernel command line plus extra (an
// EIF built for the simulator stores it; see kernelCmdline for a VM's).
func KernelCmdline(extra string) string {
	// panic=-1 turns a kernel panic into an immediate reboot, which
	// -no-reboot turns into QEMU's exit: a crashed guest never hangs a test.
	// no_timer_check: under TCG on a loaded host the kernel's IO-APIC timer
	// check can miss its ticks and panic ("IO-APIC + timer doesn't work!")
	// in the first 0.1 s of boot; seen here at load average 600.
	s := "console=ttyS0 panic=-1 no_timer_check quiet"
	if extra != "" {
		s += " " + extra
	}
	return s
}

// vsockArgs returns the QEMU arguments for guest memory and the vsock
// device: memory must be a shared memfd backend for vhost-user, since the
// backend maps guest memory; -M q35,memory-backend=mem (machineArgs) uses
// it.
func vsockArgs(o Options) []string {
	mem := fmt.Sprintf("memory-backend-memfd,id=mem,size=%dM,share=on", o.MemoryMB)
	switch o.Route {
	case RouteVhostVsock:
		return []string{"-object", mem,
			"-device", fmt.Sprintf("%s,guest-cid=%d", vsockDevice(o.Machine, "vhost-vsock"), o.GuestCID)}
	default:
		return []string{"-object", mem,
			"-chardev", "socket,id=vsock0,path=" + vhostUserSocket(o.Dir),
			"-device", vsockDevice(o.Machine, "vhost-user-vsock") + ",chardev=vsock0"}
	}
}

// checkSocketPaths fails early when dir is too deep for Unix socket names.
func checkSocketPaths(dir string) error {
	longest := hybridSocketPath(dir) + "_4294967295"
	if len(longest) > maxSocketPath {
		return fmt.Errorf("directory %s is too deep for Unix socket names (%d bytes > %d): use a shorter Dir", dir, len(longest), maxSocketPath)
	}
	return nil
}
