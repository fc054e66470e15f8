package main

import (
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
	for _, b := range []struct{ flag, path, how string }{
		{"--init", initBin, "make build"},
		{"--initctl", ctlBin, "make build"},
		{"--svc", svc, "go build -o bin/svc ./internal/testprog/svc"},
	} {
		if _, err := os.Stat(b.path); err != nil {
			return fmt.Errorf("%s %s: %w (build it with: %s)", b.flag, b.path, err, b.how)
		}
	}
	step := func(format string, args ...any) { fmt.Fprintf(out, "\n==> "+format+"\n", args...) }

	work, err := os.MkdirTemp("", "nitrodemo")
	if err != nil {
		return err
	}
	if keep {
		defer fmt.Fprintf(errw, "initramfs: work directory kept: %s\n", work)
	} else {
		defer os.RemoveAll(work)
	}

	// The route decides which CID the guest's heartbeat goes to, so resolve
	// the simulator options before writing init.yaml.
	o := sf.options(errw)
	if o.Dir == "" {
		o.Dir = filepath.Join(work, "sim")
	}
	o.Initrd = filepath.Join(work, "enclave.cpio")
	k, err := enclavesim.FindKernel()
	if err != nil {
		return err
	}
	step("Resolving the simulator (kernel %s)", k.Version)
	if err := os.WriteFile(o.Initrd, nil, 0o644); err != nil { // Resolve checks it exists
		return err
	}
	o, err = o.Resolve(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "    accel %s, vsock route %s, guest CID %d, heartbeat to CID %d\n", o.Accel, o.Route, o.GuestCID, enclavesim.HostCIDFor(o.Route))

	step("Building the image %s", o.Initrd)
	cfg := filepath.Join(work, "init.yaml")
	if err := os.WriteFile(cfg, []byte(enclavesim.InitYAML(enclavesim.HostCIDFor(o.Route), k.Modules, false)), 0o644); err != nil {
		return err
	}
	spec := image.Spec{
		Init: initBin, Initctl: ctlBin, Config: cfg, Modules: k.Modules,
		Files: []image.File{{Src: svc, Dst: "/usr/bin/svc"}},
	}
	for _, name := range []string{"greeter.service", "worker.service"} {
		p := filepath.Join(work, name)
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

	step("Booting (the guest console is shown with a 'guest|' prefix)")
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
	initctl[0] = ctlBin
	run := func(args ...string) error {
		full := append(append([]string{}, initctl...), args...)
		fmt.Fprintf(out, "\n$ %s\n", shellJoin(append([]string{"initctl"}, full[1:]...)))
		c := exec.CommandContext(ctx, full[0], full[1:]...)
		var buf bytes.Buffer
		c.Stdout, c.Stderr = &buf, &buf
		err := c.Run()
		out.Write(buf.Bytes())
		if err != nil {
			return fmt.Errorf("initctl %s: %w", strings.Join(args, " "), err)
		}
		return nil
	}

	step("Managing the enclave from the host with initctl")
	// The control socket opens a moment after the heartbeat: retry ping.
	deadline := time.Now().Add(30 * time.Second)
	for {
		c := exec.CommandContext(ctx, initctl[0], append(initctl[1:], "ping")...)
		if c.Run() == nil {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("init's control socket did not answer within 30s; console:\n%s", vm.ConsoleTail(20))
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, args := range [][]string{{"ping"}, {"list"}, {"ps", "list"}, {"status", "worker"}, {"logs", "-n", "3", "greeter"}} {
		if err := run(args...); err != nil {
			return err
		}
	}

	if withNSM {
		step("Asking the simulated /dev/nsm for an attestation document (github.com/hf/nsm in the guest)")
		if err := demoAttestation(out, vm, run); err != nil {
			return err
		}
	}

	step("Shutting down")
	if err := run("shutdown"); err != nil {
		return err
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
	fmt.Fprintln(out, "\nDemo done: the enclave booted, answered initctl over hybrid vsock and powered off.")
	return nil
}

// prefixWriter prefixes every line written to w.
func prefixWriter(w io.Writer, prefix string) io.Writer {
	return enclavesim.LineWriter(func(format string, args ...any) {
		line := fmt.Sprintf(format, args...)
		fmt.Fprintln(w, prefix+strings.TrimPrefix(line, "console: "))
	})
}
