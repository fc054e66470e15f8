package main

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/nitroinit/nitroinit/internal/wire"
)

func (a *app) serviceCmds() []*cobra.Command {
	nameCmd := func(use, short, kind string) *cobra.Command {
		return &cobra.Command{
			Use:   use + " <SERVICE>",
			Short: short,
			Args:  cobra.ExactArgs(1),
			RunE: func(_ *cobra.Command, args []string) error {
				return a.simple(wire.Request{Kind: kind, Name: args[0]})
			},
		}
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "List all services with their current status",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			r, err := a.call(wire.Request{Kind: wire.KindListServices})
			if err != nil {
				return err
			}
			return a.show(r, func(r wire.Response) { printServiceList(a.out, r.Services) })
		},
	}
	status := &cobra.Command{
		Use:   "status <SERVICE>",
		Short: "Show detailed status of a service",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			r, err := a.call(wire.Request{Kind: wire.KindServiceStatus, Name: args[0]})
			if err != nil {
				return err
			}
			return a.show(r, func(r wire.Response) { printServiceStatus(a.out, r.Status) })
		},
	}
	var now bool
	enable := &cobra.Command{
		Use:   "enable [--now] <SERVICE>",
		Short: "Enable a disabled service",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			if err := a.simple(wire.Request{Kind: wire.KindServiceEnable, Name: args[0]}); err != nil || !now {
				return err
			}
			r, err := a.call(wire.Request{Kind: wire.KindServiceStart, Name: args[0]})
			if err != nil {
				return err
			}
			if r.Kind == wire.KindError && !a.jsonOutput() {
				// The reference's words, which scripts may match.
				fmt.Fprintf(a.errw, "✗ Error starting service: %s\n", r.Message)
				return &initError{r.Message}
			}
			return a.show(r, nil)
		},
	}
	enable.Flags().BoolVar(&now, "now", false, "start the service immediately after enabling")

	var lines int
	var follow bool
	logs := &cobra.Command{
		Use:   "logs [-n N] [-f] <SERVICE>",
		Short: "Display logs for a service",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			if lines < 0 {
				return &usageError{fmt.Errorf("--lines %d: must not be negative", lines)}
			}
			if follow {
				return a.followLogs(args[0], lines)
			}
			r, err := a.call(wire.Request{Kind: wire.KindServiceLogs, Name: args[0], Lines: lines})
			if err != nil {
				return err
			}
			return a.show(r, func(r wire.Response) {
				if len(r.Logs) == 0 {
					fmt.Fprintln(a.out, "No logs available")
				}
				for _, l := range r.Logs {
					fmt.Fprintln(a.out, l)
				}
			})
		},
	}
	logs.Flags().IntVarP(&lines, "lines", "n", 50, "number of lines to display")
	logs.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new lines until interrupted (over the control connection)")

	return []*cobra.Command{
		list, status,
		nameCmd("start", "Start a stopped service", wire.KindServiceStart),
		nameCmd("stop", "Stop a running service", wire.KindServiceStop),
		nameCmd("restart", "Restart a service", wire.KindServiceRestart),
		enable,
		nameCmd("disable", "Disable a service", wire.KindServiceDisable),
		logs,
		nameCmd("logs-clear", "Clear all logs for a service", wire.KindServiceLogsClear),
		a.logsStreamCmd(),
	}
}

func (a *app) systemCmds() []*cobra.Command {
	unit := func(use, short, kind string) *cobra.Command {
		return &cobra.Command{
			Use:   use,
			Short: short,
			Args:  cobra.NoArgs,
			RunE: func(*cobra.Command, []string) error {
				return a.simple(wire.Request{Kind: kind})
			},
		}
	}
	sysStatus := &cobra.Command{
		Use:   "system-status",
		Short: "Show overall system status and statistics",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			r, err := a.call(wire.Request{Kind: wire.KindSystemStatus})
			if err != nil {
				return err
			}
			return a.show(r, func(r wire.Response) { printSystemStatus(a.out, r.System) })
		},
	}
	ping := &cobra.Command{
		Use:   "ping",
		Short: "Test connectivity to init",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			r, err := a.call(wire.Request{Kind: wire.KindPing})
			if err != nil {
				return err
			}
			return a.show(r, func(wire.Response) { fmt.Fprintln(a.out, "✓ Pong - init system is responsive") })
		},
	}
	return []*cobra.Command{
		sysStatus,
		unit("reload", "Reload service configurations", wire.KindSystemReload),
		unit("reboot", "Reboot the system", wire.KindSystemReboot),
		unit("shutdown", "Shut the system down", wire.KindSystemShutdown),
		ping,
	}
}

// parsePID reads a PID argument.
func parsePID(s string) (int, error) {
	pid, err := strconv.Atoi(s)
	if err != nil {
		return 0, &usageError{fmt.Errorf("PID %q: not a number", s)}
	}
	return pid, nil
}

func (a *app) psCmd() *cobra.Command {
	ps := &cobra.Command{
		Use:   "ps",
		Short: "Process management",
		Args:  cobra.ArbitraryArgs,
		RunE:  needSubcommand,
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "List all processes in the system",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			r, err := a.call(wire.Request{Kind: wire.KindProcessList})
			if err != nil {
				return err
			}
			return a.show(r, func(r wire.Response) { printProcessList(a.out, r.Processes) })
		},
	}
	status := &cobra.Command{
		Use:   "status <PID>",
		Short: "Show status of a specific process",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			pid, err := parsePID(args[0])
			if err != nil {
				return err
			}
			r, err := a.call(wire.Request{Kind: wire.KindProcessStatus, PID: pid})
			if err != nil {
				return err
			}
			return a.show(r, func(r wire.Response) { printProcessStatus(a.out, r.Process) })
		},
	}
	pidCmd := func(use, short, kind string) *cobra.Command {
		return &cobra.Command{
			Use:   use + " <PID>",
			Short: short,
			Args:  cobra.ExactArgs(1),
			RunE: func(_ *cobra.Command, args []string) error {
				pid, err := parsePID(args[0])
				if err != nil {
					return err
				}
				return a.simple(wire.Request{Kind: kind, PID: pid})
			},
		}
	}
	var sig string
	kill := &cobra.Command{
		Use:         "kill <PID> [-s SIGNAL]",
		Short:       "Send a signal (number or name, default 15) to a process",
		Args:        cobra.ExactArgs(1),
		Annotations: map[string]string{"skipShort": "s"},
		RunE: func(_ *cobra.Command, args []string) error {
			pid, err := parsePID(args[0])
			if err != nil {
				return err
			}
			n, err := parseSignal(sig)
			if err != nil {
				return &usageError{err}
			}
			return a.simple(wire.Request{Kind: wire.KindProcessKill, PID: pid, Signal: n})
		},
	}
	kill.Flags().StringVarP(&sig, "signal", "s", "15", "signal number (1-64) or name (KILL, SIGHUP, RTMIN+2)")

	ps.AddCommand(list, status, a.psStartCmd(),
		pidCmd("stop", "Stop a process (SIGTERM; stops the service for a service's PID)", wire.KindProcessStop),
		pidCmd("restart", "Restart a managed service by PID", wire.KindProcessRestart),
		kill)
	return ps
}

// psStartCmd parses its own arguments: everything after the command is
// passed to it, except -e/--env KEY=VALUE, which the reference accepts
// anywhere ("ps start /usr/bin/myapp -e LOG_LEVEL=debug"); "--" ends that.
func (a *app) psStartCmd() *cobra.Command {
	c := &cobra.Command{
		Use:                "start <COMMAND> [ARGS...] [-e KEY=VALUE]...",
		Aliases:            []string{"run"},
		Short:              "Start a new ad-hoc process",
		DisableFlagParsing: true,
		RunE: func(c *cobra.Command, args []string) error {
			req := wire.Request{Kind: wire.KindProcessStart}
			literal := false
			for i := 0; i < len(args); i++ {
				arg := args[i]
				if literal {
					req.Args = append(req.Args, arg)
					continue
				}
				value := func(flag string) (string, error) {
					if i+1 >= len(args) {
						return "", &usageError{fmt.Errorf("%s needs a value", flag)}
					}
					i++
					return args[i], nil
				}
				switch {
				case arg == "--":
					if req.Command == "" && i+1 < len(args) {
						i++
						req.Command = args[i]
					}
					literal = true
				case arg == "-e" || arg == "--env":
					v, err := value(arg)
					if err != nil {
						return err
					}
					req.Env = append(req.Env, v)
				case strings.HasPrefix(arg, "--env="):
					req.Env = append(req.Env, strings.TrimPrefix(arg, "--env="))
				case strings.HasPrefix(arg, "-e") && len(arg) > 2 && req.Command == "":
					req.Env = append(req.Env, arg[2:])
				case req.Command != "":
					req.Args = append(req.Args, arg)
				case arg == "-h" || arg == "--help":
					return c.Help()
				case arg == "--json":
					a.g.json.v = true
				case arg == "-o" || arg == "--output-format":
					v, err := value(arg)
					if err != nil {
						return err
					}
					a.g.format.Set(v)
				case strings.HasPrefix(arg, "--output-format="):
					a.g.format.Set(strings.TrimPrefix(arg, "--output-format="))
				case strings.HasPrefix(arg, "-"):
					return &usageError{fmt.Errorf("unknown flag %q before the command (only -e/--env, --json and -o/--output-format are allowed there)", arg)}
				default:
					req.Command = arg
				}
			}
			if err := a.checkFormat(); err != nil {
				return err
			}
			if req.Command == "" {
				return &usageError{fmt.Errorf("ps start needs a command")}
			}
			r, err := a.call(req)
			if err != nil {
				return err
			}
			return a.show(r, func(r wire.Response) {
				fmt.Fprintf(a.out, "✓ %s (PID: %d)\n", r.Message, r.PID)
			})
		},
	}
	return c
}
