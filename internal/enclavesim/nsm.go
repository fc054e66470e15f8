package enclavesim

import (
	"context"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"

	"github.com/nitroinit/nitroinit/internal/nitro"
	"github.com/nitroinit/nitroinit/internal/nsm"
)

// NSMOptions turn on the simulated NSM: the host measures the image, keeps
// the PCRs and signing keys, and answers the guest's /dev/nsm (images built
// with `initramfs build --nsm`) on vsock port nitro.NSMSimPort. See
// docs/nsm.md.
type NSMOptions struct {
	// CADir holds the simulator's root and intermediate CA; "" means a new
	// CA for this run. An empty or missing directory is filled.
	CADir string
	// PCR3, PCR4 and PCR8 are measured from the parent's IAM role ARN, the
	// parent's instance ID and the signing certificate file (PEM or DER),
	// as nitro-cli does; "" leaves the register zero.
	ParentRoleARN, ParentInstanceID, SigningCert string
	// Debug reports PCRs 0-15 as zeros, as Nitro does for debug enclaves.
	Debug bool
	// ImagePCRs, when not nil, are the image's own measurements (an EIF's
	// PCR0, 1, 2 and, when signed, 8; PreparedEIF.Apply sets them), used
	// instead of measuring Kernel, the command line and Initrd.
	ImagePCRs map[int]nsm.PCR
}

// NSMDir is where the simulated NSM's root.pem and pcrs.json are in dir.
func NSMDir(dir string) string { return filepath.Join(dir, "nsm") }

// NSM returns the simulated NSM, nil when Options.NSM was nil.
func (b *hostSide) NSM() *nsm.Module { return b.nsm }

// startNSM measures the image, writes <Dir>/nsm/pcrs.json and root.pem, and
// serves the NSM until ctx ends.
func (b *hostSide) startNSM(ctx context.Context) error {
	o := b.opts
	pcrs := map[int]nsm.PCR{}
	if !o.NSM.Debug {
		var err error
		// The measured command line is the image's own; Append and the
		// machine's parameters are not measured, as with an EIF.
		cmdline := o.Cmdline
		if cmdline == "" {
			cmdline = KernelCmdline("")
		}
		if o.NSM.ImagePCRs == nil {
			pcrs, err = nsm.MeasureImage(nsm.Image{Kernel: o.Kernel, Cmdline: cmdline, Ramdisks: []string{o.Initrd}})
			if err != nil {
				return fmt.Errorf("simulated NSM: %w", err)
			}
		}
		if o.NSM.ParentRoleARN != "" {
			pcrs[3] = nsm.Measure([]byte(o.NSM.ParentRoleARN))
		}
		if o.NSM.ParentInstanceID != "" {
			pcrs[4] = nsm.Measure([]byte(o.NSM.ParentInstanceID))
		}
		if o.NSM.SigningCert != "" {
			b, err := os.ReadFile(o.NSM.SigningCert)
			if err != nil {
				return fmt.Errorf("simulated NSM: PCR8 signing certificate: %w", err)
			}
			if blk, _ := pem.Decode(b); blk != nil {
				b = blk.Bytes
			}
			pcrs[8] = nsm.Measure(b)
		}
		for i, v := range o.NSM.ImagePCRs {
			pcrs[i] = v
		}
	}
	var ca *nsm.CA
	var err error
	if o.NSM.CADir != "" {
		ca, err = nsm.LoadOrCreateCA(o.NSM.CADir)
	} else {
		ca, err = nsm.NewCA()
	}
	if err != nil {
		return fmt.Errorf("simulated NSM: %w", err)
	}
	m, err := nsm.New(nsm.Config{CA: ca, PCRs: pcrs})
	if err != nil {
		return fmt.Errorf("simulated NSM: %w", err)
	}
	dir := NSMDir(o.Dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("simulated NSM: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "pcrs.json"), nsm.PCRsJSON(m.PCRs()), 0o644); err != nil {
		return fmt.Errorf("simulated NSM: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, nsm.RootCertFile), ca.RootPEM(), 0o644); err != nil {
		return fmt.Errorf("simulated NSM: %w", err)
	}
	ln, err := b.ListenHost(nitro.NSMSimPort)
	if err != nil {
		return fmt.Errorf("simulated NSM: %w", err)
	}
	b.nsm = m
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		defer recoverTo(o.Logf, "NSM service")
		if err := m.Serve(ctx, ln, o.Logf); err != nil {
			o.logf("enclavesim: %v", err)
		}
	}()
	return nil
}

// CUSEModule returns the kernel's cuse module file, which images with the
// simulated NSM load; kernels without CONFIG_CUSE=m have none.
func (k Kernel) CUSEModule() (string, error) {
	dir := os.Getenv("NITROINIT_MODULES_DIR")
	if k.Dir != "" {
		dir = filepath.Join(k.Dir, "modules")
	}
	if dir != "" {
		if p := findModule(dir, "cuse"); p != "" {
			return p, nil
		}
	}
	return "", fmt.Errorf("the kernel (%s) has no cuse module: the simulated /dev/nsm needs CONFIG_CUSE=m (rerun ci/fetch-kernel.sh, which caches cuse.ko, or use a kernel built with it)", k.Vmlinuz)
}

// nsmOptions returns n with the EIF's measurements as ImagePCRs (a copy:
// the caller's options stay as they were); nil stays nil.
func (p *PreparedEIF) nsmOptions(n *NSMOptions) *NSMOptions {
	if n == nil {
		return nil
	}
	c := *n
	c.ImagePCRs = map[int]nsm.PCR{
		0: nsm.PCR(p.Measurements.PCR0),
		1: nsm.PCR(p.Measurements.PCR1),
		2: nsm.PCR(p.Measurements.PCR2),
	}
	if p.Measurements.PCR8 != nil {
		c.ImagePCRs[8] = nsm.PCR(*p.Measurements.PCR8)
	}
	return &c
}
