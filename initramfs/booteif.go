package main

import (
	"fmt"
	"io"
	"os"

	"github.com/nitroinit/nitroinit/internal/enclavesim"
)

// prepareEIF turns an EIF given to boot into the kernel, initrd and command
// line QEMU gets, as QEMU's nitro-enclave machine does, and prints its
// measurements. Other images pass through. cleanup removes the unpacked
// files unless they went into --dir.
func prepareEIF(w io.Writer, o enclavesim.Options) (enclavesim.Options, func(), error) {
	nothing := func() {}
	if !enclavesim.IsEIF(o.Initrd) {
		return o, nothing, nil
	}
	if o.Kernel != "" {
		return o, nothing, fmt.Errorf("%s is an EIF, which carries its own kernel: drop --kernel %s", o.Initrd, o.Kernel)
	}
	// Under --dir the unpacked files stay, so that the command line
	// --print-cmdline shows can be run; otherwise they go when boot ends.
	dir, cleanup := o.Dir, nothing
	if dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return o, nothing, err
		}
	} else {
		tmp, err := os.MkdirTemp("", "eif-boot-")
		if err != nil {
			return o, nothing, err
		}
		dir, cleanup = tmp, func() { os.RemoveAll(tmp) }
	}
	p, err := enclavesim.PrepareEIF(o.Initrd, dir)
	if err != nil {
		cleanup()
		return o, nothing, err
	}
	m := p.Measurements
	fmt.Fprintf(w, "initramfs: EIF %s: PCR0 %s\n", o.Initrd, m.PCR0)
	fmt.Fprintf(w, "initramfs:   PCR1 %s\n", m.PCR1)
	fmt.Fprintf(w, "initramfs:   PCR2 %s\n", m.PCR2)
	if m.PCR8 != nil {
		fmt.Fprintf(w, "initramfs:   PCR8 %s\n", *m.PCR8)
	}
	fmt.Fprintf(w, "initramfs:   kernel command line (measured): %s\n", p.Cmdline)
	if o.Append != "" {
		fmt.Fprintf(w, "initramfs:   --append %q follows it, not measured\n", o.Append)
	}
	return p.Apply(o), cleanup, nil
}
