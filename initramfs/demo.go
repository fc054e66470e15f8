package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/nitroinit/nitroinit/initramfs/image"
	"github.com/nitroinit/nitroinit/internal/enclavesim"
)

// demoServices are the example services: svc is the project's test service
// program (the image has no shell, so every service is a static binary).
var demoServices = map[string]string{
	"greeter.service": `# Prints a few lines, then stays up: see them with "initctl logs greeter".
ExecStart = "/usr/bin/svc print 3"
Restart = "always"
RestartSec = 1
ServiceEnable = true
`,
	"worker.service": `# Starts after greeter and needs it.
ExecStart = "/usr/bin/svc sleep"
Restart = "on-failure"
After = ["greeter"]
Requires = ["greeter"]
ServiceEnable = true
`,
}

func demoCmd() *cobra.Command {
	var (
		sf                             simFlags
		initBin, ctlBin, svc, nsmcheck string
		keep                           bool
	)
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Build an example enclave, boot it, manage it with initctl from the host, shut it down",
		Long: `demo shows the whole loop on this machine: it builds an image with init, initctl
and two example services, boots it in the simulator, waits for the enclave's
heartbeat, runs initctl on the host through the hybrid vsock socket (ping, list,
ps list, status, logs), then asks init to shut down and waits for the
power-off. The binaries come from bin/ (make build; bin/svc from
go build -o bin/svc ./internal/testprog/svc); ci/demo.sh does all of it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runDemo(ctx, cmd.OutOrStdout(), cmd.ErrOrStderr(), sf, initBin, ctlBin, svc, nsmcheck, keep)
		},
	}
	sf.register(cmd)
	cmd.Flags().StringVar(&initBin, "init", "bin/init", "init binary")
	cmd.Flags().StringVar(&ctlBin, "initctl", "bin/initctl", "initctl binary (put into the image and run on the host)")
	cmd.Flags().StringVar(&svc, "svc", "bin/svc", "the example services' program (internal/testprog/svc)")
	cmd.Flags().BoolVar(&keep, "keep", false, "keep the work directory (image, console.log)")
	cmd.Flags().StringVar(&nsmcheck, "nsmcheck", "bin/nsmcheck", "a github.com/hf/nsm client (internal/testprog/nsmcheck) that asks the simulated /dev/nsm for an attestation document; skipped when absent")
	return cmd
}

func runDemo(ctx context.Context, out, errw io.Writer, sf simFlags, initBin, ctlBin, svc, nsmcheck string, keep bool) error {
	if err := checkBinaries([]demoBinary{
		{"--init", initBin, "make build"},
		{"--initctl", ctlBin, "make build"},
		{"--svc", svc, "go build -o bin/svc ./internal/testprog/svc"},
	}); err != nil {
		return err
	}
	d, err := newDemo(out, errw, sf, "nitrodemo", keep)
	if err != nil {
		return err
	}
	defer d.Close()
	k := d.k
	d.step("Resolving the simulator (kernel %s)", k.Version)
	if err := d.resolve(ctx, "enclave.cpio"); err != nil {
		return err
	}
	o := d.o
	fmt.Fprintf(out, "    accel %s, vsock route %s, guest CID %d, heartbeat to CID %d\n", o.Accel, o.Route, o.GuestCID, enclavesim.HostCIDFor(o.Route))

	d.step("Building the image %s", o.Initrd)
	cfg := filepath.Join(d.work, "init.yaml")
	if err := os.WriteFile(cfg, []byte(enclavesim.InitYAML(enclavesim.HostCIDFor(o.Route), k.Modules, false)), 0o644); err != nil {
		return err
	}
	spec := image.Spec{
		Init: initBin, Initctl: ctlBin, Config: cfg, Modules: k.Modules,
		Files: []image.File{{Src: svc, Dst: "/usr/bin/svc"}},
	}
	for _, name := range []string{"greeter.service", "worker.service"} {
		p := filepath.Join(d.work, name)
		if err := os.WriteFile(p, []byte(demoServices[name]), 0o644); err != nil {
			return err
		}
		spec.Services = append(spec.Services, p)
	}
	withNSM := addDemoNSM(out, &spec, k, nsmcheck)
	if withNSM {
		// The NSM pieces changed the module list: init.yaml must load cuse.
		if err := os.WriteFile(cfg, []byte(enclavesim.InitYAML(enclavesim.HostCIDFor(o.Route), spec.Modules, false)), 0o644); err != nil {
			return err
		}
	}
	if err := spec.WriteFile(o.Initrd); err != nil {
		return err
	}
	fmt.Fprintf(out, "    /init, /usr/bin/initctl, /usr/bin/svc, /etc/init.yaml, /service/greeter.service, /service/worker.service, %d modules\n", len(k.Modules))

	d.step("Booting (the guest console is shown with a 'guest|' prefix)")
	if err := d.boot(ctx, o, ctlBin); err != nil {
		return err
	}
	run := func(args ...string) error { return d.run(ctx, args...) }

	d.step("Managing the enclave from the host with initctl")
	// The control socket opens a moment after the heartbeat: retry ping.
	if err := d.until(ctx, "init's control socket to answer ping", 200*time.Millisecond, func() (bool, string) {
		_, err := d.output(ctx, "ping")
		return err == nil, "init's control socket did not answer"
	}); err != nil {
		return err
	}
	for _, args := range [][]string{{"ping"}, {"list"}, {"ps", "list"}, {"status", "worker"}, {"logs", "-n", "3", "greeter"}} {
		if err := run(args...); err != nil {
			return err
		}
	}

	if withNSM {
		d.step("Asking the simulated /dev/nsm for an attestation document (github.com/hf/nsm in the guest)")
		if err := demoAttestation(out, d.vm, run); err != nil {
			return err
		}
	}

	d.step("Shutting down")
	if err := run("shutdown"); err != nil {
		return err
	}
	return d.waitPowerOff(ctx, "Demo done: the enclave booted, answered initctl over hybrid vsock and powered off.")
}

// prefixWriter prefixes every line written to w.
func prefixWriter(w io.Writer, prefix string) io.Writer {
	return enclavesim.LineWriter(func(format string, args ...any) {
		line := fmt.Sprintf(format, args...)
		fmt.Fprintln(w, prefix+strings.TrimPrefix(line, "console: "))
	})
}
