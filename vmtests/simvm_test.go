package vmtests

import (
	"context"
	"io"

	"github.com/nitroinit/nitroinit/internal/enclavesim"
)

// simVM is a simulated enclave: the simulator's own VM, whose QEMU runs
// under hugelgupf/vmtest's qemu package (enclavesim.Start). The vmtests, the
// simulator's tests and the initramfs command all boot guests this one way.
type simVM = enclavesim.VM

// startVM boots a VM for resolved options whose Dir exists. echo, when not
// nil, receives the console's lines as they arrive. The VM runs until the
// guest powers off or reboots, o.Timeout passes or Stop is called.
func startVM(o enclavesim.Options, echo io.Writer) (*simVM, error) {
	o.Console = echo
	return enclavesim.Start(context.Background(), o)
}
