package main

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
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
	for _, b := range []struct{ flag, path string }{{"--init", initBin}, {"--initctl", ctlBin}, {"--svc", svc}} {
		if _, err := os.Stat(b.path); err != nil {
			return fmt.Errorf("%s %s: %w (make build; go build -o bin/svc ./internal/testprog/svc)", b.flag, b.path, err)
		}
	}
	step := func(format string, args ...any) { fmt.Fprintf(out, "\n==> "+format+"\n", args...) }
	work, err := os.MkdirTemp("", "nitrodemo-eif")
	if err != nil {
		return err
	}
	if keep {
		defer fmt.Fprintf(errw, "initramfs: work directory kept: %s\n", work)
	} else {
		defer os.RemoveAll(work)
	}
	o := sf.options(errw)
	if o.Dir == "" {
		o.Dir = filepath.Join(work, "sim")
	}
	k, err := enclavesim.FindKernel()
	if err != nil {
		return err
	}
	placeholder := filepath.Join(work, "placeholder")
	if err := os.WriteFile(placeholder, nil, 0o644); err != nil {
		return err
	}
	o.Initrd = placeholder
	if o, err = o.Resolve(ctx); err != nil {
		return err
	}

	if from == "" {
		step("Writing a container image (OCI layout, /bin/app = %s)", svc)
		if from, err = writeDemoImage(filepath.Join(work, "image"), svc); err != nil {
			return err
		}
	}
	eifPath := filepath.Join(work, "app.eif")
	step("Building %s from %s", eifPath, from)
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

	step("Booting the EIF (its kernel, its measured command line, its ramdisks concatenated)")
	o.Initrd, o.Kernel = eifPath, ""
	o, cleanup, err := prepareEIF(out, o)
	if err != nil {
		return err
	}
	defer cleanup()
	o.Console = prefixWriter(out, "    guest| ")
	vm, err := enclavesim.Start(ctx, o)
	if err != nil {
		return err
	}
	defer vm.Stop()
	hb, err := vm.Heartbeat(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "    heartbeat received %s after QEMU started\n", hb.Sub(vm.Started()).Round(time.Millisecond))

	initctl := initctlArgs(vm)
	if initctl[0], err = filepath.Abs(ctlBin); err != nil {
		return err
	}
	run := func(args ...string) (string, error) {
		full := append(append([]string{}, initctl...), args...)
		c := exec.CommandContext(ctx, full[0], full[1:]...)
		var buf bytes.Buffer
		c.Stdout, c.Stderr = &buf, &buf
		err := c.Run()
		return buf.String(), err
	}
	step("Managing the enclave from the host with initctl")
	deadline := time.Now().Add(60 * time.Second)
	for {
		s, err := run("logs", "app")
		if err == nil && strings.Contains(s, "cwd:") {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("the app's output did not show within 60s (initctl logs app: %v: %s); console:\n%s", err, s, vm.ConsoleTail(20))
		}
		time.Sleep(300 * time.Millisecond)
	}
	for _, args := range [][]string{{"list"}, {"logs", "app"}, {"shutdown"}} {
		fmt.Fprintf(out, "\n$ %s\n", shellJoin(append([]string{"initctl"}, append(initctl[1:], args...)...)))
		s, err := run(args...)
		out.Write([]byte(s))
		if err != nil {
			return fmt.Errorf("initctl %s: %w", strings.Join(args, " "), err)
		}
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	exit, err := vm.Wait(wctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "    VM ended: %s\n", exit)
	if exit.Kind != enclavesim.ExitPowerOff {
		return &exitError{code: 1, err: fmt.Errorf("the enclave did not power off cleanly: %s", exit)}
	}
	fmt.Fprintln(out, "\nDemo done: image -> EIF -> enclave; the PCRs above are what a KMS policy pins (docs/images.md).")
	return nil
}
