package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/nitroinit/nitroinit/initramfs/image"
	"github.com/nitroinit/nitroinit/internal/enclavesim"
)

func buildCmd() *cobra.Command {
	var (
		out           string
		spec          image.Spec
		files         []string
		kernelModules bool
		simConfig     bool
		heartbeatCID  uint32
	)
	cmd := &cobra.Command{
		Use:   "build -o OUT --init PATH [flags]",
		Short: "Build a reproducible initramfs image",
		Long: `Build a newc initramfs. Where things go:

  --init PATH             /init (required)
  --initctl PATH          /usr/bin/initctl
  --config FILE           /etc/init.yaml
  --initctl-config FILE   /etc/initctl.yaml
  --service FILE          /service/<name>.service (repeatable)
  --module FILE           /lib/modules/<name> (repeatable; list them in kernel_modules)
  --kernel-modules        the test kernel's vsock and nsm modules, as --module
  --file SRC:/DST         anything else (repeatable)
  --rootfs DIR            /rootfs, the root init switches to (pivot_root_dir)
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
			if kernelModules {
				k, err := enclavesim.FindKernel()
				if err != nil {
					return fmt.Errorf("--kernel-modules: %w", err)
				}
				spec.Modules = append(spec.Modules, k.Modules...)
			}
			if simConfig {
				if spec.Config != "" {
					return fmt.Errorf("--sim-config and --config %s both give /etc/init.yaml: drop one", spec.Config)
				}
				yaml := enclavesim.InitYAML(heartbeatCID, spec.Modules, spec.Rootfs != "")
				spec.Files = append(spec.Files, image.File{Data: []byte(yaml), Dst: image.ConfigPath})
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
	f.Uint32Var(&heartbeatCID, "heartbeat-cid", enclavesim.HostCIDFor(enclavesim.RouteVhostUser), "with --sim-config: the CID the heartbeat goes to (2 on the vhost-vsock route)")
	return cmd
}
