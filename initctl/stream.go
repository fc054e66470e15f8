package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/mdlayher/vsock"
	"github.com/spf13/cobra"

	"github.com/nitroinit/nitroinit/internal/control/client"
	"github.com/nitroinit/nitroinit/internal/hvsock"
	"github.com/nitroinit/nitroinit/internal/wire"
)

// quietAfter ends a logs-stream without --follow once no line has arrived
// for this long.
const quietAfter = 2 * time.Second

// connectBackTimeout bounds the wait for init to dial the logs-stream
// listener after it said the stream started.
const connectBackTimeout = 30 * time.Second

// followLogs prints the last n lines and then new ones as they come, over
// the control connection itself (ServiceLogsFollow), until Ctrl-C.
func (a *app) followLogs(name string, n int) error {
	t, err := a.target()
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var initErr error
	err = client.Follow(ctx, t, wire.Request{Kind: wire.KindServiceLogsFollow, Name: name, Lines: n}, func(r wire.Response) error {
		switch {
		case a.jsonOutput():
			a.printJSON(r)
		case r.Kind == wire.KindLogLine:
			if r.Missed > 0 {
				fmt.Fprintf(a.out, "[initctl: %d lines missed]\n", r.Missed)
			}
			fmt.Fprintln(a.out, r.Line)
		case r.Kind == wire.KindError:
			fmt.Fprintf(a.errw, "✗ Error: %s\n", r.Message)
		}
		if r.Kind == wire.KindError {
			initErr = &initError{r.Message}
		}
		return nil
	})
	if err != nil {
		var ue *client.UnreachableError
		if !errors.As(err, &ue) {
			err = &client.UnreachableError{Target: t, Err: err}
		}
		return err
	}
	return initErr
}

func (a *app) logsStreamCmd() *cobra.Command {
	var (
		listenCID  uint32
		listenPort uint32
		output     string
		follow     bool
	)
	c := &cobra.Command{
		Use:   "logs-stream <SERVICE>",
		Short: "Stream a service's logs to a listener on this host (init dials back)",
		Long: `logs-stream opens a listener (AF_VSOCK --listen-cid:--listen-port, or with
--vsock-uds the hybrid socket PATH_<port>), asks init to connect to it and
copies every log line it sends. Ctrl-C stops the stream (ServiceLogsStreamStop).
Without --follow it stops after 2 seconds without a line.
Note: here -o is the output file, as in the reference; use --output-format
or --json for JSON.`,
		Args:        cobra.ExactArgs(1),
		Annotations: map[string]string{"skipShort": "o"},
		RunE: func(_ *cobra.Command, args []string) error {
			return a.logsStream(args[0], listenCID, listenPort, output, follow)
		},
	}
	c.Flags().Uint32Var(&listenCID, "listen-cid", vsock.Host, "VSOCK CID init should connect to (VMADDR_CID_HOST)")
	c.Flags().Uint32Var(&listenPort, "listen-port", 9100, "VSOCK port for receiving logs")
	c.Flags().StringVarP(&output, "output", "o", "", "append the lines to this file instead of stdout")
	c.Flags().BoolVarP(&follow, "follow", "f", false, "keep streaming until interrupted")
	return c
}

func (a *app) logsStream(name string, cid, port uint32, output string, follow bool) error {
	t, err := a.target()
	if err != nil {
		return err
	}
	var l net.Listener
	if t.Protocol == client.ProtocolHybrid {
		path := hvsock.ListenPath(t.HybridPath, port)
		if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
			os.Remove(path) // stale, from an earlier run
		}
		if l, err = net.Listen("unix", path); err != nil {
			return &usageError{fmt.Errorf("listening for init on %s: %w", path, err)}
		}
	} else {
		if l, err = vsock.ListenContextID(cid, port, nil); err != nil {
			return &usageError{fmt.Errorf("listening on vsock %d:%d: %w (is the port in use? try --listen-port)", cid, port, err)}
		}
	}
	defer l.Close()

	out := a.out
	if output != "" {
		f, err := os.OpenFile(output, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return &usageError{fmt.Errorf("--output %s: %w", output, err)}
		}
		defer f.Close()
		out = f
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := l.Accept(); err == nil {
			accepted <- c
		}
	}()

	r, err := a.call(wire.Request{Kind: wire.KindServiceLogsStream, Name: name, VsockCID: cid, VsockPort: port})
	if err != nil {
		return err
	}
	if r.Kind != wire.KindLogsStreamStarted {
		return a.show(r, nil)
	}
	if a.jsonOutput() {
		a.printJSON(r)
	} else {
		fmt.Fprintf(a.errw, "Streaming logs for '%s' (Ctrl-C to stop)...\n", name)
	}
	var conn net.Conn
	select {
	case conn = <-accepted:
	case <-ctx.Done():
		return a.stopStream(name, port)
	case <-time.After(connectBackTimeout):
		a.stopStream(name, port)
		return &client.UnreachableError{Target: t, Err: fmt.Errorf("init said the stream started but never connected to %s", l.Addr())}
	}
	defer conn.Close()

	lines := make(chan string)
	readErr := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(conn)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			lines <- sc.Text()
		}
		readErr <- sc.Err()
	}()
	for {
		var quiet <-chan time.Time
		if !follow {
			quiet = time.After(quietAfter)
		}
		select {
		case line := <-lines:
			if a.jsonOutput() && output == "" {
				a.printJSON(wire.Response{Kind: wire.KindLogLine, Line: line})
			} else {
				fmt.Fprintln(out, line)
			}
		case <-ctx.Done():
			return a.stopStream(name, port)
		case <-quiet:
			return a.stopStream(name, port)
		case err := <-readErr:
			if err != nil && !errors.Is(err, io.EOF) {
				fmt.Fprintf(a.errw, "initctl: log stream ended: %v\n", err)
			}
			return nil // init closed the stream (stopped elsewhere)
		}
	}
}

// stopStream sends ServiceLogsStreamStop after Ctrl-C or the quiet period.
func (a *app) stopStream(name string, port uint32) error {
	// Only this stream: another terminal may stream the same service to
	// another port.
	r, err := a.call(wire.Request{Kind: wire.KindServiceLogsStreamStop, Name: name, VsockPort: port})
	if err != nil {
		return err
	}
	if a.jsonOutput() {
		a.printJSON(r)
		return nil
	}
	if r.Kind == wire.KindSuccess {
		fmt.Fprintf(a.errw, "✓ %s\n", r.Message)
	}
	return nil
}
