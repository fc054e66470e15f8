package enclavesim

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/nitroinit/nitroinit/internal/eif"
	"github.com/nitroinit/nitroinit/internal/nitro"
)

// Machine types.
const (
	// MachineQ35 is QEMU's q35 PC with virtio PCI devices (the default).
	MachineQ35 = "q35"
	// MachineMicrovm is QEMU's microvm: no PCI, devices on virtio-mmio
	// (described by ACPI), as Nitro presents them. The guest kernel needs
	// virtio_mmio (built in, or loaded as a module before the vsock
	// transport).
	MachineMicrovm = "microvm"
)

func checkMachine(m string) error {
	switch m {
	case "", MachineQ35, MachineMicrovm:
		return nil
	}
	return fmt.Errorf("unknown machine %q: want %s or %s", m, MachineQ35, MachineMicrovm)
}

// machineArg is -M's value; both machines take guest memory from the
// memfd backend "mem" (vsockArgs).
func machineArg(m string) string {
	if m == MachineMicrovm {
		// acpi=on: the kernel finds the virtio-mmio devices in ACPI, so it
		// needs no virtio_mmio.device= parameters (and no
		// VIRTIO_MMIO_CMDLINE_DEVICES); rtc=on for the clock.
		return "microvm,memory-backend=mem,acpi=on,rtc=on,isa-serial=on"
	}
	return "q35,memory-backend=mem"
}

// vsockDevice names the vsock device on the machine's bus: BASE-pci on
// q35, BASE-device (virtio-mmio) on microvm.
func vsockDevice(m, base string) string {
	if m == MachineMicrovm {
		return base + "-device"
	}
	return base + "-pci"
}

// kernelCmdline is the kernel command line for o: Cmdline (an EIF's) or
// the simulator's own, then the machine's parameters (microvmParams), then
// Append. Only Cmdline is measured.
func kernelCmdline(o Options) string {
	s := o.Cmdline
	if s == "" {
		s = KernelCmdline("")
	}
	for _, p := range []string{microvmParams(o), o.Append} {
		if p != "" {
			s += " " + p
		}
	}
	return s
}

// microvmParams are kernel parameters microvm needs under TCG: it has
// neither HPET nor an ACPI PM timer, so the kernel calibrates the TSC
// against the PIT alone, which fails on a loaded host ("tsc: Unable to
// calibrate against PIT") and the boot then hangs. Giving the TSC
// frequency (the host's: TCG's guest TSC runs at the host's rate) skips
// the calibration; the clocksource watchdog still corrects a wrong value.
func microvmParams(o Options) string {
	if o.Machine != MachineMicrovm || o.Accel != AccelTCG {
		return ""
	}
	return fmt.Sprintf("tsc_early_khz=%d", hostTSCkHz())
}

// hostTSCkHz reads the host CPU's clock from /proc/cpuinfo, 2 GHz when it
// cannot.
func hostTSCkHz() int {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			k, v, ok := strings.Cut(line, ":")
			if ok && strings.TrimSpace(k) == "cpu MHz" {
				if mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil && mhz > 0 {
					return int(mhz * 1000)
				}
			}
		}
	}
	return 2000000
}

// PreparedEIF is an EIF unpacked for QEMU, as QEMU's nitro-enclave machine
// does it: the kernel in one file, every ramdisk concatenated in another.
type PreparedEIF struct {
	Kernel  string // the kernel section, written to a file
	Initrd  string // the ramdisks in file order, concatenated
	Cmdline string // the cmdline section (measured)
	// Measurements are the EIF's PCRs, what the NSM of an enclave booted
	// from it reports as PCR0-2 (and 8).
	Measurements eif.Measurements
	Header       eif.Header
}

// PrepareEIF validates the EIF at path as QEMU's loader does (version,
// x86_64 flags, section count, section flags and sizes, CRC; internal/eif
// checks offsets and types too) and writes its kernel and ramdisks into
// dir.
func PrepareEIF(path, dir string) (*PreparedEIF, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	ef, err := eif.Open(f, st.Size())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if err := ef.CheckX86(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	m, err := ef.Measure()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	cmdline, err := ef.Cmdline()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	p := &PreparedEIF{
		Kernel:       filepath.Join(dir, "eif-kernel"),
		Initrd:       filepath.Join(dir, "eif-initrd"),
		Cmdline:      strings.TrimSpace(cmdline),
		Measurements: m,
		Header:       ef.Header,
	}
	if err := writeFrom(p.Kernel, ef.Kernel()); err != nil {
		return nil, err
	}
	if err := writeFrom(p.Initrd, ef.Ramdisks()); err != nil {
		return nil, err
	}
	return p, nil
}

// Apply points o at the prepared kernel, initrd and command line, and
// the simulated NSM (if any) at the EIF's measurements.
func (p *PreparedEIF) Apply(o Options) Options {
	o.Kernel, o.Initrd, o.Cmdline = p.Kernel, p.Initrd, p.Cmdline
	o.NSM = p.nsmOptions(o.NSM) // the simulated NSM reports the EIF's PCRs
	return o
}

func writeFrom(path string, r io.Reader) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return f.Close()
}

// IsEIF reports whether the file at path starts with the EIF magic.
func IsEIF(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	b := make([]byte, 4)
	_, err = io.ReadFull(f, b)
	return err == nil && string(b) == nitro.EIFMagic
}
