package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/nitroinit/nitroinit/internal/config"
	"github.com/nitroinit/nitroinit/internal/control/client"
	"github.com/nitroinit/nitroinit/internal/wire"
)

// requestTimeout bounds one request/response exchange. It is long because
// a stop waits for the service to exit (TimeoutStopSec, then SIGKILL).
const requestTimeout = 5 * time.Minute

const defaultConfigPath = "/etc/initctl.yaml"

// strFlag, u32Flag and boolFlag remember whether they were given, so that
// the same value can be registered on the root and on every subcommand
// (see addGlobalFlags) and so that flags can override the environment and
// the config file only when present.
type strFlag struct {
	v   string
	set bool
}

func (f *strFlag) String() string     { return f.v }
func (f *strFlag) Set(s string) error { f.v, f.set = s, true; return nil }
func (f *strFlag) Type() string       { return "string" }

type u32Flag struct {
	v   uint32
	set bool
}

func (f *u32Flag) String() string { return strconv.FormatUint(uint64(f.v), 10) }
func (f *u32Flag) Set(s string) error {
	n, err := strconv.ParseUint(s, 0, 32)
	if err != nil {
		return fmt.Errorf("want a number from 0 to 4294967295")
	}
	f.v, f.set = uint32(n), true
	return nil
}
func (f *u32Flag) Type() string { return "uint32" }

type boolFlag struct{ v bool }

func (f *boolFlag) String() string { return strconv.FormatBool(f.v) }
func (f *boolFlag) Set(s string) error {
	b, err := strconv.ParseBool(s)
	f.v = b
	return err
}
func (f *boolFlag) Type() string { return "bool" }

// globals are the options every command accepts.
type globals struct {
	config, protocol, socket, vsockUDS, format strFlag
	cid, port                                  u32Flag
	json                                       boolFlag
}

type app struct {
	out, errw io.Writer
	g         globals
}

func newApp(out, errw io.Writer) *app { return &app{out: out, errw: errw} }

// addGlobalFlags registers the global options on fs. They are defined on
// the root (as in the reference, "initctl [OPTIONS] <COMMAND>") and again on
// every subcommand so they may also follow it. skip names short forms a
// subcommand uses for its own flags: ps kill -s is the signal and
// logs-stream -o the output file, as in the reference.
func (a *app) addGlobalFlags(fs *pflag.FlagSet, skip ...string) {
	short := func(s string) string {
		for _, k := range skip {
			if k == s {
				return ""
			}
		}
		return s
	}
	g := &a.g
	fs.VarP(&g.config, "config", short("c"), "path to initctl config file (env INITCTL_CONFIG, default "+defaultConfigPath+")")
	fs.VarP(&g.protocol, "protocol", short("p"), "protocol: unix, vsock or hybrid (default from config)")
	fs.VarP(&g.socket, "socket", short("s"), "Unix socket path (env INIT_SOCKET, default from config)")
	fs.Var(&g.cid, "vsock-cid", "VSOCK CID of the enclave (default from config)")
	fs.Var(&g.port, "vsock-port", "VSOCK port of init's control listener (default from config)")
	fs.Var(&g.vsockUDS, "vsock-uds", "reach the enclave through this hybrid vsock Unix socket (Firecracker style)")
	fs.VarP(&g.format, "output-format", short("o"), "output format: table or json")
	fs.VarPF(&g.json, "json", "", "print init's responses as JSON (same as -o json)").NoOptDefVal = "true"
}

// jsonOutput says whether responses are printed as JSON.
func (a *app) jsonOutput() bool { return a.g.json.v || a.g.format.v == "json" }

// checkFormat validates --output-format.
func (a *app) checkFormat() error {
	switch a.g.format.v {
	case "", "table", "json":
		return nil
	}
	return &usageError{fmt.Errorf("--output-format %q: want table or json", a.g.format.v)}
}

// target works out how to reach init: flags, then the environment, then
// initctl.yaml, then the built-in defaults.
func (a *app) target() (client.Target, error) {
	path := defaultConfigPath
	if v := os.Getenv("INITCTL_CONFIG"); v != "" {
		path = v
	}
	if a.g.config.set {
		path = a.g.config.v
	}
	cfg, err := config.LoadInitctl(path)
	if err != nil {
		return client.Target{}, &usageError{fmt.Errorf("%w (fix the file, or point --config/INITCTL_CONFIG elsewhere)", err)}
	}
	for _, w := range cfg.Warnings {
		fmt.Fprintf(a.errw, "initctl: warning: %s\n", w)
	}
	t := client.Target{
		Protocol:   cfg.Protocol,
		UnixPath:   cfg.UnixSocketPath,
		VsockCID:   cfg.VsockCID,
		VsockPort:  cfg.VsockPort,
		HybridPath: cfg.VsockUDSPath,
	}
	if v := os.Getenv("INIT_SOCKET"); v != "" {
		t.UnixPath = v
	}
	if a.g.socket.set {
		t.UnixPath = a.g.socket.v
	}
	if a.g.cid.set {
		t.VsockCID = a.g.cid.v
	}
	if a.g.port.set {
		t.VsockPort = a.g.port.v
	}
	if a.g.vsockUDS.set {
		t.HybridPath = a.g.vsockUDS.v
		if !a.g.protocol.set {
			t.Protocol = client.ProtocolHybrid
		}
	}
	if a.g.protocol.set {
		t.Protocol = a.g.protocol.v
	}
	switch t.Protocol {
	case client.ProtocolUnix:
	case client.ProtocolVsock:
		if t.HybridPath != "" {
			t.Protocol = client.ProtocolHybrid
		}
	case client.ProtocolHybrid:
		if t.HybridPath == "" {
			return t, &usageError{errors.New("protocol hybrid needs --vsock-uds PATH (or vsock_uds_path in initctl.yaml)")}
		}
	default:
		return t, &usageError{fmt.Errorf("--protocol %q: want unix, vsock or hybrid", t.Protocol)}
	}
	return t, nil
}

// call sends one request and returns the response.
func (a *app) call(req wire.Request) (wire.Response, error) {
	t, err := a.target()
	if err != nil {
		return wire.Response{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	resp, err := client.Do(ctx, t, req)
	if err != nil {
		var ue *client.UnreachableError
		if !errors.As(err, &ue) {
			err = &client.UnreachableError{Target: t, Err: err}
		}
		return resp, err
	}
	return resp, nil
}

// printJSON writes one response as a line of JSON.
func (a *app) printJSON(r wire.Response) {
	b, err := json.Marshal(r)
	if err != nil {
		fmt.Fprintf(a.errw, "initctl: encoding response: %v\n", err)
		return
	}
	fmt.Fprintf(a.out, "%s\n", b)
}

// show prints a response: as JSON with -o json, else with table for the
// expected kind. An Error response becomes "✗ Error: ..." on stderr and
// exit code 1.
func (a *app) show(r wire.Response, table func(wire.Response)) error {
	if a.jsonOutput() {
		a.printJSON(r)
		if r.Kind == wire.KindError {
			return &initError{r.Message}
		}
		return nil
	}
	switch r.Kind {
	case wire.KindError:
		fmt.Fprintf(a.errw, "✗ Error: %s\n", r.Message)
		return &initError{r.Message}
	case wire.KindSuccess:
		fmt.Fprintf(a.out, "✓ %s\n", r.Message)
		return nil
	}
	if table == nil {
		a.printJSON(r)
		return nil
	}
	table(r)
	return nil
}

// simple runs a request whose answer is Success or Error.
func (a *app) simple(req wire.Request) error {
	r, err := a.call(req)
	if err != nil {
		return err
	}
	return a.show(r, nil)
}

// rootCmd builds the command tree.
func (a *app) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "initctl",
		Short: "Control the enclave init system",
		Long: `initctl talks to init over its Unix socket (default /run/init.sock), over
AF_VSOCK from the parent instance, or through a hybrid vsock Unix socket
(--vsock-uds) as Firecracker and the enclave simulator provide.

Exit codes: 0 ok, 1 init reported an error, 2 usage or configuration error,
3 init could not be reached.`,
		Version:          version,
		SilenceErrors:    true,
		SilenceUsage:     true,
		TraverseChildren: true,
		PersistentPreRunE: func(*cobra.Command, []string) error {
			return a.checkFormat()
		},
		Args: cobra.ArbitraryArgs,
		RunE: needSubcommand,
	}
	root.Flags().BoolP("version", "V", false, "print the version")
	root.SetVersionTemplate("initctl {{.Version}}\n")
	a.addGlobalFlags(root.Flags())
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageError{err} })
	for _, c := range a.serviceCmds() {
		root.AddCommand(c)
	}
	root.AddCommand(a.psCmd())
	root.AddCommand(a.forwardCmds()...)
	for _, c := range a.systemCmds() {
		root.AddCommand(c)
	}
	for _, c := range root.Commands() {
		a.withGlobals(c)
	}
	return root
}

// withGlobals adds the global flags to c and its subcommands, except where
// DisableFlagParsing means c parses its own.
func (a *app) withGlobals(c *cobra.Command) {
	if !c.DisableFlagParsing {
		var skip []string
		if c.Annotations != nil {
			if s := c.Annotations["skipShort"]; s != "" {
				skip = append(skip, s)
			}
		}
		a.addGlobalFlags(c.Flags(), skip...)
	}
	for _, sub := range c.Commands() {
		a.withGlobals(sub)
	}
}

// needSubcommand is the action of commands that only group others: as with
// the reference, a missing or unknown subcommand is a usage error.
func needSubcommand(c *cobra.Command, args []string) error {
	if len(args) > 0 {
		return &usageError{fmt.Errorf("unknown command %q for %q; see '%s --help'", args[0], c.CommandPath(), c.CommandPath())}
	}
	c.SetOut(c.ErrOrStderr())
	c.Help()
	return &usageError{fmt.Errorf("%s needs a command", c.CommandPath())}
}
