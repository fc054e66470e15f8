package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/nitroinit/nitroinit/internal/control/client"
	"github.com/nitroinit/nitroinit/internal/forward"
)

// stdin is what connect reads; tests replace it.
var stdin io.Reader = os.Stdin

// forwardCmds are the commands that carry TCP to and from vsock. They run
// as ordinary processes (services inside the enclave, programs on the
// parent), never inside init.
func (a *app) forwardCmds() []*cobra.Command {
	return []*cobra.Command{a.forwardCmd(), a.connectCmd()}
}

func (a *app) forwardCmd() *cobra.Command {
	var (
		listen, connect, target, allow string
		maxConns                       int
		idle                           time.Duration
	)
	cmd := &cobra.Command{
		Use:   "forward --listen ENDPOINT (--connect ENDPOINT | --allow FILE)",
		Short: "Forward TCP connections to and from vsock (run as a service or on the parent)",
		Long: `Accept connections on --listen and connect each to --connect, copying both
ways until both sides are done. Endpoints are tcp:HOST:PORT, vsock:CID:PORT,
vsock:PORT (listen on any CID) and hvsock:UNIX_SOCKET:PORT (a hybrid vsock
device: connect does the CONNECT handshake, listen takes the guest's
connections to that host port at UNIX_SOCKET_PORT).

  ingress, enclave:  forward --listen vsock:8080 --connect tcp:127.0.0.1:8080
  ingress, parent:   forward --listen tcp:0.0.0.0:8080 --connect vsock:16:8080
  egress, enclave:   forward --listen tcp:127.0.0.1:443 --connect vsock:3:8443 --target kms.us-east-1.amazonaws.com:443
  egress, parent:    forward --listen vsock:8443 --allow allowlist.yaml

With --allow and no --connect, each connection names its target (the
enclave side's --target) and only targets on the allow-list (vsock-proxy's
format: "allowlist:" with {address: HOST, port: PORT} entries) are dialed;
refusals are logged, at most 10 lines per 10 seconds. With both, --connect
must be on the list.`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			cfg, err := forwardConfig(listen, connect, target, allow)
			if err != nil {
				return &usageError{err}
			}
			cfg.MaxConns, cfg.IdleTimeout = maxConns, idle
			cfg.Logf = func(format string, args ...any) { fmt.Fprintf(a.errw, format+"\n", args...) }
			return a.runForward(listen, cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", "", "where to accept connections (ENDPOINT)")
	f.StringVar(&connect, "connect", "", "where to connect each one (ENDPOINT)")
	f.StringVar(&target, "target", "", "HOST:PORT to ask the parent's allow-list forwarder for")
	f.StringVar(&allow, "allow", "", "allow-list file (YAML) of TCP targets")
	f.IntVar(&maxConns, "max-connections", forward.DefaultMaxConns, "connections forwarded at once; more are refused")
	f.DurationVar(&idle, "idle-timeout", forward.DefaultIdleTimeout, "close a connection idle both ways this long")
	return cmd
}

// forwardConfig checks the flags of forward; errors name the flag or the
// allow-list's file and line, and the value.
func forwardConfig(listen, connect, target, allow string) (forward.Config, error) {
	var cfg forward.Config
	if listen == "" {
		return cfg, errors.New("--listen is required")
	}
	if connect == "" && allow == "" {
		return cfg, errors.New("give --connect ENDPOINT, or --allow FILE for targets named per connection")
	}
	if _, err := forward.ParseEndpoint("--listen", listen); err != nil {
		return cfg, err
	}
	if connect != "" {
		e, err := forward.ParseEndpoint("--connect", connect)
		if err != nil {
			return cfg, err
		}
		cfg.Target = &e
	}
	if target != "" {
		if cfg.Target == nil {
			return cfg, errors.New("--target needs --connect (the parent's vsock port)")
		}
		if _, err := forward.ParseEndpoint("--target", "tcp:"+target); err != nil {
			return cfg, err
		}
		cfg.SendTarget = target
	}
	if allow != "" {
		list, err := forward.LoadAllowList(allow)
		if err != nil {
			return cfg, err
		}
		cfg.Allow, cfg.AllowFile = list, allow
	}
	return cfg, nil
}

// runForward listens and serves until SIGTERM or SIGINT.
func (a *app) runForward(listen string, cfg forward.Config) error {
	if os.Getenv("GOMAXPROCS") == "" {
		// A forwarder's work is in the kernel (splice, read, write). With
		// one P, a message's wake-up stays on one thread instead of being
		// handed across threads (docs/benchmarks.md: added round trip on
		// Unix sockets from 1.06 to 0.82 of socat's, same throughput);
		// blocking system calls still get threads of their own.
		runtime.GOMAXPROCS(1)
	}
	e, _ := forward.ParseEndpoint("--listen", listen)
	l, err := forward.Listen(e)
	if err != nil {
		fmt.Fprintf(a.errw, "✗ Error: %v\n", err)
		return &initError{err.Error()}
	}
	cfg.Listener = l
	f, err := forward.New(cfg)
	if err != nil {
		l.Close()
		return &usageError{err}
	}
	to := "targets on " + cfg.AllowFile
	if cfg.Target != nil {
		to = cfg.Target.String()
	}
	fmt.Fprintf(a.errw, "forwarding %s -> %s\n", e, to)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := f.Serve(ctx); err != nil {
		fmt.Fprintf(a.errw, "✗ Error: %v\n", err)
		return &initError{err.Error()}
	}
	return nil
}

func (a *app) connectCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "connect (ENDPOINT | PORT)",
		Short: "Copy stdin and stdout to a vsock port (like socat - VSOCK-CONNECT:CID:PORT)",
		Long: `Connect to ENDPOINT (vsock:CID:PORT, hvsock:UNIX_SOCKET:PORT or tcp:HOST:PORT),
or to PORT of the enclave initctl is set to reach (--vsock-cid, --vsock-uds or
initctl.yaml), and copy stdin to it and it to stdout. The end of stdin is
passed on as a half-close; connect exits when the other side's stream ends.`,
		Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			e, err := a.connectEndpoint(args[0])
			if err != nil {
				return &usageError{err}
			}
			ctx, cancel := context.WithTimeout(context.Background(), forward.DefaultDialTimeout)
			c, err := forward.Dial(ctx, e)
			cancel()
			if err != nil {
				fmt.Fprintf(a.errw, "✗ Error: %v\n", err)
				return &initError{err.Error()}
			}
			defer c.Close()
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				io.Copy(c, stdin)
				if cw, ok := c.(interface{ CloseWrite() error }); ok {
					cw.CloseWrite()
				}
			}()
			_, err = io.Copy(a.out, c)
			if err != nil {
				fmt.Fprintf(a.errw, "✗ Error: %v\n", err)
				return &initError{err.Error()}
			}
			return nil
		},
	}
}

// connectEndpoint reads connect's argument: an endpoint, or a bare port of
// the enclave that the global flags and initctl.yaml point at.
func (a *app) connectEndpoint(arg string) (forward.Endpoint, error) {
	if strings.Contains(arg, ":") {
		return forward.ParseEndpoint("connect", arg)
	}
	port, err := strconv.ParseUint(arg, 10, 32)
	if err != nil {
		return forward.Endpoint{}, fmt.Errorf("connect: %q: want ENDPOINT or a port number", arg)
	}
	t, err := a.target()
	if err != nil {
		return forward.Endpoint{}, err
	}
	switch t.Protocol {
	case client.ProtocolHybrid:
		return forward.Endpoint{Kind: forward.KindHybrid, Addr: t.HybridPath, Port: uint32(port)}, nil
	case client.ProtocolVsock:
		return forward.Endpoint{Kind: forward.KindVsock, CID: t.VsockCID, Port: uint32(port)}, nil
	}
	return forward.Endpoint{}, fmt.Errorf("connect %s: initctl is set to reach init over %s; give --vsock-cid, --vsock-uds or an ENDPOINT", arg, t.Protocol)
}
