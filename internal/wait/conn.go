package wait

import (
	"errors"
	"fmt"
	"net"
	"os"
	"time"
)

// Conn is a connection whose reads and writes follow progress: each Read,
// and each chunk of a Write, may wait Limits.Stall for its bytes, and the
// whole conversation lasts at most Limits.Cap. A peer that is slow but
// still sending or taking bytes keeps the connection alive; one that
// stops answering makes the call fail with a timeout that says so. It is
// the connection counterpart of a fixed SetDeadline.
type Conn struct {
	net.Conn
	l   Limits
	end time.Time
}

// writeChunk is how much of a Write goes out under one stall interval, so
// that a large Write to a slow peer counts each chunk taken as progress.
const writeChunk = 64 << 10

// Conn wraps c; see the Conn type. Both directions may be used at once.
func (l Limits) Conn(c net.Conn) *Conn {
	l = l.withDefaults()
	return &Conn{Conn: c, l: l, end: time.Now().Add(l.Cap)}
}

func (c *Conn) deadline() time.Time {
	d := time.Now().Add(c.l.Stall)
	if d.After(c.end) {
		return c.end
	}
	return d
}

func (c *Conn) stalled(dir string, err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("%s: nothing moved for %s (or the %s cap passed): %w", dir, c.l.Stall, c.l.Cap, err)
	}
	return err
}

// Read reads with a deadline one stall interval away.
func (c *Conn) Read(p []byte) (int, error) {
	c.Conn.SetReadDeadline(c.deadline())
	n, err := c.Conn.Read(p)
	return n, c.stalled("read", err)
}

// Write writes p in chunks, each with a deadline one stall interval away.
func (c *Conn) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k := min(len(p), writeChunk)
		c.Conn.SetWriteDeadline(c.deadline())
		m, err := c.Conn.Write(p[:k])
		n += m
		if err != nil {
			return n, c.stalled("write", err)
		}
		p = p[m:]
	}
	return n, nil
}

// CloseWrite half-closes the connection when it can be (TCP, Unix).
func (c *Conn) CloseWrite() error {
	cw, ok := c.Conn.(interface{ CloseWrite() error })
	if !ok {
		return fmt.Errorf("half-close of a %T: %w", c.Conn, errors.ErrUnsupported)
	}
	return cw.CloseWrite()
}

// NewConn wraps c with the default limits.
func NewConn(c net.Conn) *Conn { return Limits{}.Conn(c) }
