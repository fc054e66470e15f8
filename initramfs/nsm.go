package main

import (
	"fmt"
	"io"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/nitroinit/nitroinit/initramfs/image"
	"github.com/nitroinit/nitroinit/internal/enclavesim"
	"github.com/nitroinit/nitroinit/internal/nitro"
)

// addNSM puts the simulated NSM's pieces into an image: the test kernel's
// cuse.ko after the other modules, and the marker that makes init start the
// device. The device itself is the init binary under another name.
func addNSM(spec *image.Spec) error {
	k, err := enclavesim.FindKernel()
	if err != nil {
		return fmt.Errorf("--nsm: %w", err)
	}
	cuse, err := k.CUSEModule()
	if err != nil {
		return fmt.Errorf("--nsm: %w", err)
	}
	spec.Modules = append(spec.Modules, cuse)
	spec.Files = append(spec.Files, image.File{
		Data: []byte("# Written by initramfs build --nsm: init starts the simulated /dev/nsm.\n"),
		Dst:  nitro.NSMSimMarker,
	})
	return nil
}

// registerNSM adds the simulated NSM's flags to boot and demo.
func (s *simFlags) registerNSM(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&s.nsm.CADir, "nsm-ca", "", "simulated NSM: directory with the root and intermediate CA (filled when empty; default: a new CA per run)")
	f.StringVar(&s.nsm.ParentRoleARN, "parent-role-arn", "", "simulated NSM: PCR3, the parent instance's IAM role ARN")
	f.StringVar(&s.nsm.ParentInstanceID, "parent-instance-id", "", "simulated NSM: PCR4, the parent instance's ID")
	f.StringVar(&s.nsm.SigningCert, "signing-certificate", "", "simulated NSM: PCR8, the image's signing certificate (PEM or DER)")
	f.BoolVar(&s.nsm.Debug, "debug-mode", false, "simulated NSM: report PCRs 0-15 as zeros, as Nitro does for debug enclaves")
}

// describeNSM says where the simulated NSM's trust anchor and PCRs are.
func describeNSM(w io.Writer, vm *enclavesim.VM) {
	if vm.NSM() == nil {
		return
	}
	d := enclavesim.NSMDir(vm.Dir())
	fmt.Fprintf(w, "initramfs:   simulated NSM on host port %d: root CA %s, PCRs %s\n", nitro.NSMSimPort, filepath.Join(d, "root.pem"), filepath.Join(d, "pcrs.json"))
}
