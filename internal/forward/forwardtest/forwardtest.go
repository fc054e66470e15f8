// Package forwardtest has the peers that the forwarder tests put at either
// end: accept loops, a hybrid vsock device's host side, and a checksummed
// echo exchange. It exists only for tests.
package forwardtest

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"testing"

	"github.com/nitroinit/nitroinit/internal/hvsock"
)

// Serve accepts on l until the test ends, serving each connection with
// handler on its own goroutine and closing it afterwards.
func Serve(tb testing.TB, l net.Listener, handler func(net.Conn)) {
	tb.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handler(c)
			}()
		}
	}()
}

// TCPServer serves handler on a new 127.0.0.1 port and returns its address.
func TCPServer(tb testing.TB, handler func(net.Conn)) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	Serve(tb, l, handler)
	return l.Addr().String()
}

// Echo sends back everything and half-closes at the client's end of stream.
func Echo(c net.Conn) {
	io.Copy(c, c)
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

// HybridDevice stands in for a VM's hybrid vsock socket: it answers
// "CONNECT <port>" with "OK <port>" and serves the stream that follows with
// handler (r holds what the client sent after its CONNECT line). It
// returns the socket's path.
func HybridDevice(tb testing.TB, handler func(r io.Reader, c *net.UnixConn)) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "vm.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		tb.Fatal(err)
	}
	Serve(tb, l, func(c net.Conn) {
		br := bufio.NewReader(c)
		port, err := hvsock.ReadConnect(br)
		if err != nil {
			return
		}
		fmt.Fprintf(c, "OK %d\n", port)
		handler(br, c.(*net.UnixConn))
	})
	return path
}

// HybridEcho is a HybridDevice whose guest echoes on every port.
func HybridEcho(r io.Reader, c *net.UnixConn) {
	io.Copy(c, r)
	c.CloseWrite()
}

// RoundTrip sends data over c, half-closes, and checks that exactly data
// comes back (by SHA-256) before the end of stream.
func RoundTrip(c net.Conn, data []byte) error {
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.(interface{ CloseWrite() error }).CloseWrite()
		}
		werr <- err
	}()
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil {
		return fmt.Errorf("reading the echo after %d bytes: %w", n, err)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("writing: %w", err)
	}
	want := sha256.Sum256(data)
	if n != int64(len(data)) || !bytes.Equal(h.Sum(nil), want[:]) {
		return fmt.Errorf("echo of %d bytes came back as %d bytes, checksum equal %v", len(data), n, bytes.Equal(h.Sum(nil), want[:]))
	}
	return nil
}
