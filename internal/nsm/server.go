package nsm

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/nitroinit/nitroinit/internal/nitro"
)

// The guest's simulated /dev/nsm and the host's Module talk over one stream
// connection with length-prefixed frames: a 4-byte big-endian length, then
// that many bytes. Requests are at most nitro.NSMRequestMax bytes, responses
// at most nitro.NSMResponseMax; a connection carries one request at a time.

// MaxConns bounds the connections Serve handles at once; one more waits.
const MaxConns = 16

// writeTimeout bounds writing one response to a guest that stopped reading.
const writeTimeout = 10 * time.Second

// WriteFrame writes one length-prefixed frame.
func WriteFrame(w io.Writer, b []byte) error {
	buf := make([]byte, 4+len(b))
	binary.BigEndian.PutUint32(buf, uint32(len(b)))
	copy(buf[4:], b)
	_, err := w.Write(buf)
	return err
}

// ReadFrame reads one frame of at most max bytes; a longer one is an error
// and the stream is unusable after it.
func ReadFrame(r io.Reader, max int) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > uint32(max) {
		return nil, fmt.Errorf("NSM frame of %d bytes, at most %d", n, max)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, fmt.Errorf("NSM frame of %d bytes: %w", n, err)
	}
	return b, nil
}

// Serve answers NSM requests on every connection ln accepts until ctx ends
// or ln fails. logf, if not nil, receives one line per failed connection.
func (m *Module) Serve(ctx context.Context, ln net.Listener, logf func(string, ...any)) error {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	slots := make(chan struct{}, MaxConns)
	for {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		c, err := ln.Accept()
		if err != nil {
			<-slots
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("NSM listener: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			defer c.Close()
			defer func() {
				if r := recover(); r != nil {
					logf("nsm: panic serving %s: %v", c.RemoteAddr(), r)
				}
			}()
			closeOnCancel := context.AfterFunc(ctx, func() { c.Close() })
			defer closeOnCancel()
			if err := m.serveConn(c); err != nil && !errors.Is(err, io.EOF) && ctx.Err() == nil {
				logf("nsm: connection from %s: %v", c.RemoteAddr(), err)
			}
		}()
	}
}

func (m *Module) serveConn(c net.Conn) error {
	for {
		req, err := ReadFrame(c, nitro.NSMRequestMax)
		if err != nil {
			return err
		}
		resp := m.Handle(req)
		c.SetWriteDeadline(time.Now().Add(writeTimeout))
		if err := WriteFrame(c, resp); err != nil {
			return err
		}
	}
}
