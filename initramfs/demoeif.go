package main

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/spf13/cobra"

	"github.com/nitroinit/nitroinit/initramfs/image"
	"github.com/nitroinit/nitroinit/internal/enclavesim"
)

func demoEIFCmd() *cobra.Command {
	var (
		sf                   simFlags
		initBin, ctlBin, svc string
		from                 string
		keep                 bool
	)
	cmd := &cobra.Command{
		Use:   "demo-eif",
		Short: "Container image to EIF to a booted enclave managed with initctl, with its PCRs",
		Long: `demo-eif goes from a container image to a running enclave: it writes a small
OCI image (one layer with the example program as /bin/app; or takes
--from-image), builds an EIF from it with init, initctl and the kernel's
modules as the boot ramdisk, prints the measurements, boots the EIF in the
simulator as QEMU's nitro-enclave machine would, shows the app's output and
the services with initctl over vsock, and shuts the enclave down.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runDemoEIF(ctx, cmd, sf, initBin, ctlBin, svc, from, keep)
		},
	}
	sf.register(cmd)
	cmd.Flags().StringVar(&initBin, "init", "bin/init", "init binary")
	cmd.Flags().StringVar(&ctlBin, "initctl", "bin/initctl", "initctl binary (put into the EIF and run on the host)")
	cmd.Flags().StringVar(&svc, "svc", "bin/svc", "the example app (internal/testprog/svc), /bin/app of the demo image")
	cmd.Flags().StringVar(&from, "from-image", "", "use this image instead of the demo's (docker-archive:, oci-archive:, oci:)")
	cmd.Flags().BoolVar(&keep, "keep", false, "keep the work directory (image, EIF, console.log)")
	return cmd
}

// writeDemoImage writes an OCI layout with one layer holding app as
// /bin/app, and a config with Entrypoint, Cmd, Env and WorkingDir.
func writeDemoImage(dir, app string) (string, error) {
	data, err := os.ReadFile(app)
	if err != nil {
		return "", err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range []*tar.Header{
		{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "srv/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "bin/app", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(data))},
	} {
		if err := tw.WriteHeader(h); err != nil {
			return "", err
		}
	}
	tw.Write(data)
	if err := tw.Close(); err != nil {
		return "", err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	if err != nil {
		return "", err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return "", err
	}
	img, err = mutate.Config(img, v1.Config{
		Entrypoint: []string{"/bin/app", "argv"},
		Cmd:        []string{"hello from the image"},
		Env:        []string{"GREETING=hello", "PATH=/bin"},
		WorkingDir: "/srv",
	})
	if err != nil {
		return "", err
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return "", err
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "demo"})); err != nil {
		return "", err
	}
	return "oci:" + dir + ":demo", nil
}

func runDemoEIF(ctx context.Context, cmd *cobra.Command, sf simFlags, initBin, ctlBin, svc, from string, keep bool) error {
	out, errw := cmd.OutOrStdout(), cmd.ErrOrStderr()
	const how = "make build; go build -o bin/svc ./internal/testprog/svc"
	if err := checkBinaries([]demoBinary{{"--init", initBin, how}, {"--initctl", ctlBin, how}, {"--svc", svc, how}}); err != nil {
		return err
	}
	d, err := newDemo(out, errw, sf, "nitrodemo-eif", keep)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.resolve(ctx, "placeholder"); err != nil {
		return err
	}
	o, k := d.o, d.k

	if from == "" {
		d.step("Writing a container image (OCI layout, /bin/app = %s)", svc)
		if from, err = writeDemoImage(filepath.Join(d.work, "image"), svc); err != nil {
			return err
		}
	}
	eifPath := filepath.Join(d.work, "app.eif")
	d.step("Building %s from %s", eifPath, from)
	ef := eifFlags{format: formatEIF, fromImage: from, cmdline: enclavesim.KernelCmdline("")}
	spec := image.Spec{Init: initBin, Initctl: ctlBin, Modules: k.Modules}
	if err := ef.apply(&spec); err != nil {
		return err
	}
	if ef.img != nil {
		defer ef.img.Close()
	}
	spec.Files = append(spec.Files, image.File{Data: []byte(enclavesim.InitYAML(enclavesim.HostCIDFor(o.Route), k.Modules, true)), Dst: image.ConfigPath})
	if err := ef.writeEIF(cmd, spec, eifPath); err != nil {
		return err
	}

	d.step("Booting the EIF (its kernel, its measured command line, its ramdisks concatenated)")
	o.Initrd, o.Kernel = eifPath, ""
	o, cleanup, err := prepareEIF(out, o)
	if err != nil {
		return err
	}
	defer cleanup()
	if err := d.boot(ctx, o, ctlBin); err != nil {
		return err
	}
	d.step("Managing the enclave from the host with initctl")
	if err := d.until(ctx, "the app's output in its log", 300*time.Millisecond, func() (bool, string) {
		s, err := d.output(ctx, "logs", "app")
		return err == nil && strings.Contains(s, "cwd:"), fmt.Sprintf("the app's output did not show (initctl logs app: %v: %s)", err, s)
	}); err != nil {
		return err
	}
	for _, args := range [][]string{{"list"}, {"logs", "app"}, {"shutdown"}} {
		if err := d.run(ctx, args...); err != nil {
			return err
		}
	}
	return d.waitPowerOff(ctx, "Demo done: image -> EIF -> enclave; the PCRs above are what a KMS policy pins (docs/images.md).")
}
