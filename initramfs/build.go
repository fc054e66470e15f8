package main

import (
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/nitroinit/nitroinit/initramfs/image"
	"github.com/nitroinit/nitroinit/internal/config"
	"github.com/nitroinit/nitroinit/internal/enclavesim"
)

// servicesIntoRootfs moves the --service files into the root given with
// --rootfs, where init reads them after the root switch: the initramfs's
// /service is out of reach by then. The directory is the new root's own
// init.yaml service_dir, or else the initramfs's (initramfsYAML, or the
// --config file). Without a root switch nothing moves.
func servicesIntoRootfs(spec *image.Spec, initramfsYAML []byte, log io.Writer) error {
	if (spec.Rootfs == "" && len(spec.Tree) == 0) || len(spec.Services) == 0 {
		return nil
	}
	boot, where := config.DefaultInit(), "the default init.yaml"
	switch {
	case initramfsYAML != nil:
		boot, _ = config.ParseInit(image.ConfigPath, initramfsYAML)
		where = "--sim-config's init.yaml"
	case spec.Config != "":
		var errs []error
		boot, errs = config.LoadInit(spec.Config)
		for _, err := range errs {
			if !config.IsWarning(err) {
				return fmt.Errorf("--config: %w (fix it before building: it decides where --service files go)", err)
			}
		}
		where = "--config " + spec.Config
	}
	if !boot.PivotRoot {
		return nil // no switch: init reads the initramfs's service_dir
	}
	if path.Clean(boot.PivotRootDir) != image.RootfsDir {
		return fmt.Errorf("--service with --rootfs: %s switches to pivot_root_dir %s, but --rootfs is copied to %s, so init would never read the services; set pivot_root_dir: %s",
			where, boot.PivotRootDir, image.RootfsDir, image.RootfsDir)
	}
	dir := boot.ServiceDir
	newRootYAML := filepath.Join(spec.Rootfs, strings.TrimPrefix(image.ConfigPath, "/"))
	if _, err := os.Stat(newRootYAML); err == nil && spec.Rootfs != "" {
		rt, errs := config.LoadInit(newRootYAML)
		for _, err := range errs {
			if !config.IsWarning(err) {
				return fmt.Errorf("--rootfs: %w (fix it before building: it decides where --service files go)", err)
			}
		}
		dir, where = rt.ServiceDir, newRootYAML
	}
	var kept []string
	for _, svc := range spec.Services {
		if !strings.HasSuffix(svc, ".service") && !strings.HasSuffix(svc, ".service.disabled") {
			kept = append(kept, svc) // image.Spec reports it
			continue
		}
		dst := path.Join(image.RootfsDir, dir, filepath.Base(svc))
		spec.Files = append(spec.Files, image.File{Src: svc, Dst: dst, Mode: 0o644})
		fmt.Fprintf(log, "service %s -> %s (service_dir %s of %s, read after the switch to %s)\n", svc, dst, dir, where, image.RootfsDir)
	}
	spec.Services = kept
	return nil
}

func buildCmd() *cobra.Command {
	var (
		out           string
		spec          image.Spec
		files         []string
		kernelModules bool
		simConfig     bool
		heartbeatCID  uint32
		ef            eifFlags
		withNSM       bool
	)
	cmd := &cobra.Command{
		Use:   "build -o OUT --init PATH [flags]",
		Short: "Build a reproducible initramfs image",
		Long: `Build a newc initramfs. Where things go:

  --init PATH             /init (required)
  --initctl PATH          /usr/bin/initctl
  --config FILE           /etc/init.yaml
  --initctl-config FILE   /etc/initctl.yaml
  --service FILE          /service/<name>.service (repeatable); with --rootfs, the
                          service directory init reads after switching to it
  --module FILE           /lib/modules/<name> (repeatable; list them in kernel_modules)
  --kernel-modules        the test kernel's vsock and nsm modules, as --module
  --file SRC:/DST         anything else (repeatable)
  --rootfs DIR            /rootfs, the root init switches to (pivot_root_dir)
  --nsm                   the simulated /dev/nsm: the test kernel's cuse.ko (as --module)
                          and a marker that makes init start the device (docs/nsm.md);
                          boot the image with initramfs boot, which answers its requests
  --sim-config            instead of --config: a minimal init.yaml for the simulator
                          (heartbeat to --heartbeat-cid, the modules given, control
                          on vsock port 9001 open to the host, no root switch)

A /dev/console node is included. The same inputs always give the same bytes.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return fmt.Errorf("no output given: use -o FILE")
			}
			for _, f := range files {
				pf, err := image.ParseFile(f)
				if err != nil {
					return err
				}
				spec.Files = append(spec.Files, pf)
			}
			if err := ef.apply(&spec); err != nil {
				return err
			}
			if ef.img != nil {
				defer ef.img.Close()
			}
			if kernelModules {
				k, err := enclavesim.FindKernel()
				if err != nil {
					return fmt.Errorf("--kernel-modules: %w", err)
				}
				spec.Modules = append(spec.Modules, k.Modules...)
			}
			if withNSM {
				if err := addNSM(cmd.ErrOrStderr(), &spec); err != nil {
					return err
				}
			}
			var yaml []byte // the initramfs's init.yaml, when it is made here
			if simConfig {
				if spec.Config != "" {
					return fmt.Errorf("--sim-config and --config %s both give /etc/init.yaml: drop one", spec.Config)
				}
				yaml = []byte(enclavesim.InitYAML(heartbeatCID, spec.Modules, spec.Rootfs != "" || len(spec.Tree) > 0))
				spec.Files = append(spec.Files, image.File{Data: yaml, Dst: image.ConfigPath})
			}
			if err := servicesIntoRootfs(&spec, yaml, cmd.ErrOrStderr()); err != nil {
				return err
			}
			if ef.format == formatEIF {
				return ef.writeEIF(cmd, spec, out)
			}
			if err := spec.WriteFile(out); err != nil {
				return err
			}
			for _, m := range spec.Modules {
				fmt.Fprintf(cmd.ErrOrStderr(), "module %s\n", image.ModulePath(m))
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "wrote %s\n", out)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&out, "output", "o", "", "image file to write")
	f.StringVar(&spec.Init, "init", "", "init binary, installed as /init")
	f.StringVar(&spec.Initctl, "initctl", "", "initctl binary, installed as "+image.InitctlPath)
	f.StringVar(&spec.Config, "config", "", "init.yaml, installed as "+image.ConfigPath)
	f.StringVar(&spec.InitctlConfig, "initctl-config", "", "initctl.yaml, installed as "+image.InitctlConfigPath)
	f.StringArrayVar(&spec.Services, "service", nil, "service file, installed in "+image.ServiceDir+" (repeatable)")
	f.StringArrayVar(&spec.Modules, "module", nil, "kernel module, installed in "+image.ModuleDir+" (repeatable)")
	f.BoolVar(&kernelModules, "kernel-modules", false, "add the test kernel's vsock and nsm modules")
	f.StringArrayVar(&files, "file", nil, "extra file SRC:/DST (repeatable)")
	f.StringVar(&spec.Rootfs, "rootfs", "", "directory copied to "+image.RootfsDir)
	f.BoolVar(&spec.NoConsole, "no-console", false, "leave out /dev/console")
	f.BoolVar(&simConfig, "sim-config", false, "write a minimal simulator init.yaml (see above)")
	ef.register(cmd)
	f.BoolVar(&withNSM, "nsm", false, "add the simulated /dev/nsm (cuse.ko and the marker init looks for)")
	f.Uint32Var(&heartbeatCID, "heartbeat-cid", enclavesim.HostCIDFor(enclavesim.RouteVhostUser), "with --sim-config: the CID the heartbeat goes to (2 on the vhost-vsock route)")
	return cmd
}
