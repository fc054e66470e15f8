package nsm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/nitroinit/nitroinit/internal/nitro"
	"github.com/nitroinit/nitroinit/internal/nsm/frame"
)

// MaxConns bounds the connections Serve handles at once; one more waits.
const MaxConns = 16

// writeTimeout bounds writing one response to a guest that stopped reading.
const writeTimeout = 10 * time.Second

// Serve answers NSM requests, framed as package frame says, on every
// connection ln accepts until ctx ends or ln fails. logf, if not nil, receives one line per failed connection.
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
		req, err := frame.Read(c, nitro.NSMRequestMax)
		if err != nil {
			return err
		}
		resp := m.Handle(req)
		c.SetWriteDeadline(time.Now().Add(writeTimeout))
		if err := frame.Write(c, resp); err != nil {
			return err
		}
	}
}
