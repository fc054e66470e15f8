// Package hvsock speaks "hybrid vsock": the Unix-socket front end that
// Firecracker, Cloud Hypervisor, vhost-device-vsock and our own simulator put
// in front of a guest's vsock device.
//
// A host program reaches guest port N by connecting to the Unix socket P and
// writing "CONNECT N\n"; the device answers "OK <number>\n" and from then on
// the socket carries the stream. The number after OK differs between
// implementations (Firecracker sends its host-side port, vhost-device-vsock
// the guest port), so clients accept any number. Connections the guest makes
// to the host on port N arrive on the Unix socket "P_N".
package hvsock

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// maxReply bounds the handshake reply so that a broken peer cannot make the
// client buffer without limit.
const maxReply = 64

// Dial connects to guest port through the hybrid socket at path and performs
// the CONNECT handshake. The returned connection carries the raw stream.
func Dial(ctx context.Context, path string, port uint32) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("hybrid vsock %s: %w", path, err)
	}
	if err := handshake(ctx, c, port); err != nil {
		c.Close()
		return nil, fmt.Errorf("hybrid vsock %s port %d: %w", path, port, err)
	}
	return c, nil
}

func handshake(ctx context.Context, c net.Conn, port uint32) error {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(10 * time.Second)
	}
	c.SetDeadline(deadline)
	defer c.SetDeadline(time.Time{})
	if _, err := fmt.Fprintf(c, "CONNECT %d\n", port); err != nil {
		return err
	}
	// Read byte by byte: anything after the newline already belongs to the
	// stream and must not be swallowed by a buffered reader.
	var line []byte
	buf := make([]byte, 1)
	for {
		if _, err := c.Read(buf); err != nil {
			if len(line) == 0 {
				return fmt.Errorf("no reply to CONNECT (is anything listening on that guest port?): %w", err)
			}
			return fmt.Errorf("reading reply %q: %w", line, err)
		}
		if buf[0] == '\n' {
			break
		}
		line = append(line, buf[0])
		if len(line) > maxReply {
			return fmt.Errorf("reply longer than %d bytes: %q", maxReply, line)
		}
	}
	return parseOK(string(line))
}

// parseOK accepts "OK <number>" and rejects anything else.
func parseOK(line string) error {
	line = strings.TrimSuffix(line, "\r")
	f := strings.Fields(line)
	if len(f) != 2 || f[0] != "OK" {
		return fmt.Errorf("unexpected reply %q, want \"OK <port>\"", line)
	}
	if _, err := strconv.ParseUint(f[1], 10, 32); err != nil {
		return fmt.Errorf("unexpected reply %q: bad number", line)
	}
	return nil
}

// ReadConnect reads a "CONNECT <port>\n" line from r, as a hybrid device does
// for each new host connection. It reads no further than the newline.
func ReadConnect(r *bufio.Reader) (uint32, error) {
	var line []byte
	for len(line) <= maxReply {
		b, err := r.ReadByte()
		if err != nil {
			return 0, err
		}
		if b == '\n' {
			f := strings.Fields(strings.TrimSuffix(string(line), "\r"))
			if len(f) != 2 || f[0] != "CONNECT" {
				return 0, fmt.Errorf("bad hybrid request %q, want \"CONNECT <port>\"", line)
			}
			p, err := strconv.ParseUint(f[1], 10, 32)
			if err != nil {
				return 0, fmt.Errorf("bad port in %q: %w", line, err)
			}
			return uint32(p), nil
		}
		line = append(line, b)
	}
	return 0, fmt.Errorf("hybrid request longer than %d bytes", maxReply)
}

// ListenPath is the Unix socket on which connections from the guest to host
// port arrive, for the hybrid socket at path.
func ListenPath(path string, port uint32) string {
	return fmt.Sprintf("%s_%d", path, port)
}
