// Package client is the client side of init's control protocol: it reaches
// init over a Unix socket, AF_VSOCK or a hybrid vsock socket, sends one
// request and reads the answer or a stream of them. initctl, the tests and
// the simulator use it without pulling in the server.
package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/mdlayher/vsock"

	"github.com/nitroinit/nitroinit/internal/hvsock"
	"github.com/nitroinit/nitroinit/internal/wire"
)

// Protocols a Target can use.
const (
	ProtocolUnix   = "unix"
	ProtocolVsock  = "vsock"
	ProtocolHybrid = "hybrid" // vsock through a Firecracker-style Unix socket
)

// Target says how a client reaches init.
type Target struct {
	// Protocol is ProtocolUnix, ProtocolVsock or ProtocolHybrid.
	Protocol string
	// UnixPath is the control socket (ProtocolUnix).
	UnixPath string
	// VsockCID and VsockPort address init's vsock listener (ProtocolVsock;
	// ProtocolHybrid uses only the port).
	VsockCID  uint32
	VsockPort uint32
	// HybridPath is the hybrid vsock Unix socket (ProtocolHybrid).
	HybridPath string
}

func (t Target) String() string {
	switch t.Protocol {
	case ProtocolVsock:
		return fmt.Sprintf("vsock %d:%d", t.VsockCID, t.VsockPort)
	case ProtocolHybrid:
		return fmt.Sprintf("hybrid vsock %s port %d", t.HybridPath, t.VsockPort)
	}
	return "unix socket " + t.UnixPath
}

// UnreachableError means init could not be reached at all, as opposed to
// init answering with an error. initctl exits 3 for it.
type UnreachableError struct {
	Target Target
	Err    error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("cannot reach init over %s: %v", e.Target, e.Err)
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// Dial connects to init.
func Dial(ctx context.Context, t Target) (net.Conn, error) {
	var c net.Conn
	var err error
	switch t.Protocol {
	case ProtocolUnix, "":
		var d net.Dialer
		c, err = d.DialContext(ctx, "unix", t.UnixPath)
	case ProtocolVsock:
		c, err = vsock.DialContext(ctx, t.VsockCID, t.VsockPort, nil)
	case ProtocolHybrid:
		c, err = hvsock.Dial(ctx, t.HybridPath, t.VsockPort)
	default:
		return nil, fmt.Errorf("unknown protocol %q: want unix, vsock or hybrid", t.Protocol)
	}
	if err != nil {
		return nil, &UnreachableError{Target: t, Err: err}
	}
	return c, nil
}

// send writes req on a new connection. Like the reference client it does
// not half-close, so servers must not wait for EOF.
func send(ctx context.Context, t Target, req wire.Request) (net.Conn, error) {
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	c, err := Dial(ctx, t)
	if err != nil {
		return nil, err
	}
	if d, ok := ctx.Deadline(); ok {
		c.SetDeadline(d)
	}
	if _, err := c.Write(b); err != nil {
		// init may have answered (a refusal, say) and closed before the
		// request was all written: the answer is then still readable.
		var resp wire.Response
		c.SetReadDeadline(time.Now().Add(time.Second))
		if derr := json.NewDecoder(c).Decode(&resp); derr == nil && resp.Kind != "" {
			return &answered{Conn: c, resp: resp}, nil
		}
		c.Close()
		return nil, &UnreachableError{Target: t, Err: fmt.Errorf("sending request: %w", err)}
	}
	return c, nil
}

// answered is a connection on which init's response arrived while the
// request was still being written.
type answered struct {
	net.Conn
	resp wire.Response
}

// Do sends one request and returns init's response. An Error response is
// returned as a response, not as an error; err is for transport failures.
func Do(ctx context.Context, t Target, req wire.Request) (wire.Response, error) {
	c, err := send(ctx, t, req)
	if err != nil {
		return wire.Response{}, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if a, ok := c.(*answered); ok {
		return a.resp, nil
	}
	var resp wire.Response
	if err := json.NewDecoder(c).Decode(&resp); err != nil {
		if errors.Is(err, io.EOF) {
			return resp, &UnreachableError{Target: t, Err: fmt.Errorf("init closed the connection without answering")}
		}
		return resp, fmt.Errorf("reading the response from %s: %w", t, err)
	}
	return resp, nil
}

// Follow sends a streaming request (ServiceLogsFollow) and calls fn for
// every value that comes back until ctx ends, init closes the stream, or fn
// returns an error. An Error value ends the stream and is passed to fn too.
func Follow(ctx context.Context, t Target, req wire.Request, fn func(wire.Response) error) error {
	c, err := send(ctx, t, req)
	if err != nil {
		return err
	}
	defer c.Close()
	if a, ok := c.(*answered); ok {
		return fn(a.resp)
	}
	c.SetDeadline(time.Time{})
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	dec := json.NewDecoder(c)
	for {
		var resp wire.Response
		if err := dec.Decode(&resp); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("reading the stream from %s: %w", t, err)
		}
		if err := fn(resp); err != nil {
			return err
		}
		if resp.Kind == wire.KindError {
			return nil
		}
	}
}
