// Command initramfs builds nitroinit enclave images (reproducible newc
// initramfs archives) and boots them in the enclave simulator (QEMU with a
// virtio-vsock device and the parent's heartbeat listener).
//
//	initramfs build -o out.cpio --init bin/init --initctl bin/initctl --config init.yaml --service x.service ...
//	initramfs boot out.cpio            # then, elsewhere: initctl --vsock-uds PATH list
//	initramfs demo                     # build, boot, manage and shut down an example enclave
//	initramfs build --from-image oci-archive:app.tar --format eif -o app.eif --init bin/init ...
//	initramfs describe-eif app.eif     # nitro-cli describe-eif's JSON
//	initramfs boot app.eif             # boots the EIF's kernel, cmdline and ramdisks
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// exitError carries a process exit status through cobra.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }

func main() {
	if err := newRoot().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "initramfs:", err)
		var ee *exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "initramfs",
		Short: "Build nitroinit enclave images and boot them in the enclave simulator",
		Long: `initramfs builds bootable initramfs images (newc cpio) with nitroinit's init as
/init, and boots them under QEMU with a virtio-vsock device, so that initctl can
manage the enclave from the host through a hybrid vsock socket.

The test kernel comes from ci/fetch-kernel.sh (or NITROINIT_KERNEL).`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(buildCmd(), bootCmd(), demoCmd())
	root.AddCommand(describeEIFCmd(), demoEIFCmd())
	return root
}
