// Package forward copies TCP streams to and from vsock, so that apps inside
// an enclave, which has no network card, can reach and be reached by the
// outside through the parent instance.
//
// One Forwarder accepts connections on a listener and, for each, dials a
// target and copies both ways until both sides have finished. It runs on
// either side of the enclave boundary:
//
//   - egress, enclave side: listen on tcp:127.0.0.1:443, connect to vsock:3:8443;
//   - egress, parent side: listen on vsock:8443 (or the hybrid socket's
//     listening path), connect to a TCP target on an allow-list;
//   - ingress, parent side: listen on tcp:0.0.0.0:8080, connect to the enclave's
//     vsock:16:8080 (or hvsock:/path/to/vm.sock:8080);
//   - ingress, enclave side: listen on vsock:8080, connect to tcp:127.0.0.1:8080.
//
// Every connection has bounded buffers, an idle timeout and a slot out of a
// fixed number; a slow or dead peer holds only its own slot.
package forward

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"

	"github.com/nitroinit/nitroinit/internal/hvsock"
	"github.com/nitroinit/nitroinit/internal/nitro"
)

// Kinds of Endpoint.
const (
	KindTCP    = "tcp"    // host:port
	KindVsock  = "vsock"  // AF_VSOCK cid:port
	KindHybrid = "hvsock" // a hybrid vsock Unix socket and a port
)

// Endpoint is one side of a forwarder: where it listens or what it dials.
type Endpoint struct {
	Kind string
	// Addr is host:port for TCP and the Unix socket path for hybrid vsock.
	Addr string
	// CID is the vsock context ID: the peer's when dialing, the local one
	// (VMADDR_CID_ANY by default) when listening.
	CID  uint32
	Port uint32
}

// cidAny is VMADDR_CID_ANY: listen on whatever CID this machine has.
const cidAny = unix.VMADDR_CID_ANY

// String renders e in the syntax ParseEndpoint reads.
func (e Endpoint) String() string {
	switch e.Kind {
	case KindVsock:
		if e.CID == cidAny {
			return fmt.Sprintf("vsock:%d", e.Port)
		}
		return fmt.Sprintf("vsock:%d:%d", e.CID, e.Port)
	case KindHybrid:
		return fmt.Sprintf("hvsock:%s:%d", e.Addr, e.Port)
	}
	return "tcp:" + e.Addr
}

// SpecError is a forwarder specification that cannot be used. It names where
// the specification came from (a flag or file:line), the value and the
// problem.
type SpecError struct {
	Where string // "--listen", "allow.yaml:3"
	Value string
	Msg   string
}

func (e *SpecError) Error() string {
	return fmt.Sprintf("%s: %q: %s", e.Where, e.Value, e.Msg)
}

const endpointSyntax = "use tcp:HOST:PORT, vsock:CID:PORT, vsock:PORT (listen on any CID) or hvsock:UNIX_SOCKET:PORT"

// ParseEndpoint reads an endpoint: "tcp:127.0.0.1:8080" (or just
// "127.0.0.1:8080"), "vsock:16:5000", "vsock:5000" (listening on any CID),
// "hvsock:/run/vm.sock:5000". where names the source of s in errors.
func ParseEndpoint(where, s string) (Endpoint, error) {
	bad := func(msg string) (Endpoint, error) {
		return Endpoint{}, &SpecError{Where: where, Value: s, Msg: msg}
	}
	kind, rest, ok := strings.Cut(s, ":")
	if !ok {
		return bad(endpointSyntax)
	}
	switch kind {
	case KindVsock:
		parts := strings.Split(rest, ":")
		var e Endpoint
		e.Kind, e.CID = KindVsock, cidAny
		switch len(parts) {
		case 1:
		case 2:
			cid, err := parseU32(parts[0])
			if err != nil {
				return bad(fmt.Sprintf("bad CID %q: want a number (%d is the parent)", parts[0], nitro.ParentCID))
			}
			e.CID = cid
		default:
			return bad(endpointSyntax)
		}
		p, err := parsePort(parts[len(parts)-1])
		if err != nil {
			return bad(err.Error())
		}
		e.Port = p
		return e, nil
	case KindHybrid:
		i := strings.LastIndexByte(rest, ':')
		if i <= 0 {
			return bad("want hvsock:UNIX_SOCKET:PORT")
		}
		p, err := parsePort(rest[i+1:])
		if err != nil {
			return bad(err.Error())
		}
		return Endpoint{Kind: KindHybrid, Addr: rest[:i], Port: p}, nil
	case KindTCP:
	default:
		rest = s // a bare host:port is TCP
	}
	host, port, err := net.SplitHostPort(rest)
	if err != nil {
		return bad(endpointSyntax)
	}
	if _, err := parsePort(port); err != nil {
		return bad(err.Error())
	}
	return Endpoint{Kind: KindTCP, Addr: net.JoinHostPort(host, port)}, nil
}

func parseU32(s string) (uint32, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	return uint32(n), err
}

func parsePort(s string) (uint32, error) {
	n, err := parseU32(s)
	if err != nil {
		return 0, fmt.Errorf("bad port %q: want a number", s)
	}
	return n, nil
}

// Listen opens a listener on e. A hybrid endpoint listens where the device
// delivers the guest's connections to host port e.Port (the Unix socket
// "PATH_PORT"); a stale socket file there is replaced. Errors name the
// address and the reason.
func Listen(e Endpoint) (net.Listener, error) {
	var (
		l   net.Listener
		err error
	)
	switch e.Kind {
	case KindTCP:
		l, err = net.Listen("tcp", e.Addr)
	case KindVsock:
		l, err = vsock.ListenContextID(e.CID, e.Port, nil)
	case KindHybrid:
		path := hvsock.ListenPath(e.Addr, e.Port)
		if fi, serr := os.Lstat(path); serr == nil && fi.Mode()&os.ModeSocket != 0 {
			// A socket file left by a forwarder that died is replaced; one
			// that still accepts belongs to a live listener and is kept.
			if c, derr := net.Dial("unix", path); derr == nil {
				c.Close()
				err = fmt.Errorf("%s: another program listens there", path)
				break
			}
			os.Remove(path)
		}
		l, err = net.Listen("unix", path)
	default:
		err = fmt.Errorf("unknown endpoint kind %q", e.Kind)
	}
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", e, err)
	}
	return l, nil
}

// Dial connects to e; a hybrid endpoint performs the CONNECT handshake.
func Dial(ctx context.Context, e Endpoint) (net.Conn, error) {
	var (
		c   net.Conn
		err error
	)
	switch e.Kind {
	case KindTCP:
		var d net.Dialer
		c, err = d.DialContext(ctx, "tcp", e.Addr)
	case KindVsock:
		c, err = vsock.DialContext(ctx, e.CID, e.Port, nil)
	case KindHybrid:
		c, err = hvsock.Dial(ctx, e.Addr, e.Port)
	default:
		err = fmt.Errorf("unknown endpoint kind %q", e.Kind)
	}
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", e, err)
	}
	return c, nil
}
