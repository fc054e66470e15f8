package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/nitroinit/nitroinit/initramfs/image"
	"github.com/nitroinit/nitroinit/internal/enclavesim"
	"github.com/nitroinit/nitroinit/internal/nitro"
	"github.com/nitroinit/nitroinit/internal/nsm"
	"github.com/nitroinit/nitroinit/internal/testprog/nsmcheck/report"
)

// addNSM puts the simulated NSM's pieces into an image: the test kernel's
// cuse.ko after the other modules, and the marker that makes init start the
// device. The device itself is the init binary under another name.
func addNSM(w io.Writer, spec *image.Spec) error {
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
	if spec.Config != "" {
		fmt.Fprintf(w, "--nsm: make sure %s lists %s in kernel_modules\n", spec.Config, image.ModulePath(cuse))
	}
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

// demoReportPort is where the demo's nsmcheck sends its attestation document.
const demoReportPort = 9102

// addDemoNSM gives the demo image the simulated NSM and nsmcheck (a
// github.com/hf/nsm client) when nsmcheck was built; it reports whether it
// did.
func addDemoNSM(out io.Writer, spec *image.Spec, k enclavesim.Kernel, nsmcheck string) bool {
	if _, err := os.Stat(nsmcheck); err != nil {
		fmt.Fprintf(out, "    (no %s: skipping the NSM attestation; build it with go build -o %s ./internal/testprog/nsmcheck)\n", nsmcheck, nsmcheck)
		return false
	}
	cuse, err := k.CUSEModule()
	if err != nil {
		fmt.Fprintf(out, "    (skipping the NSM attestation: %v)\n", err)
		return false
	}
	spec.Modules = append(spec.Modules, cuse)
	spec.Files = append(spec.Files,
		image.File{Data: []byte("# initramfs demo: start the simulated /dev/nsm.\n"), Dst: nitro.NSMSimMarker},
		image.File{Src: nsmcheck, Dst: "/usr/bin/nsmcheck", Mode: 0o755})
	return true
}

// demoAttestation has nsmcheck ask /dev/nsm for a document, receives it here
// and verifies it against the simulator's root.
func demoAttestation(out io.Writer, vm *enclavesim.VM, run func(...string) error) error {
	ln, err := vm.ListenHost(demoReportPort)
	if err != nil {
		return err
	}
	defer ln.Close()
	if err := run("ps", "start", "/usr/bin/nsmcheck", "--attest-only", "--port", fmt.Sprint(demoReportPort)); err != nil {
		return err
	}
	rep, err := report.Receive(ln, time.Minute)
	if err != nil {
		return fmt.Errorf("%w; console:\n%s", err, vm.ConsoleTail(20))
	}
	if len(rep.Failures) > 0 {
		return fmt.Errorf("nsmcheck failed: %q", rep.Failures)
	}
	root := filepath.Join(enclavesim.NSMDir(vm.Dir()), "root.pem")
	doc, err := nsm.Verify(rep.Document, vm.NSM().CA().Root, time.Now())
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "    attestation document: %d bytes, COSE_Sign1 ES384, verified against %s\n", len(rep.Document), root)
	fmt.Fprintf(out, "    module_id %s, digest %s, timestamp %s\n", doc.ModuleID, doc.Digest, time.UnixMilli(int64(doc.Timestamp)).UTC().Format(time.RFC3339))
	for _, i := range []uint16{0, 1, 2} {
		fmt.Fprintf(out, "    PCR%d %x\n", i, doc.PCRs[i])
	}
	fmt.Fprintf(out, "    (the same values are in %s; a document from the simulator proves nothing about real hardware: docs/nsm.md)\n",
		filepath.Join(enclavesim.NSMDir(vm.Dir()), "pcrs.json"))
	return nil
}
