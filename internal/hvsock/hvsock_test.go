package hvsock

import (
	"bufio"
	"context"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nitroinit/nitroinit/internal/wait"
)

func TestReadConnect(t *testing.T) {
	tests := []struct {
		in       string
		want     uint32
		wantErr  string
		wantRest string
	}{
		{in: "CONNECT 5000\n", want: 5000},
		{in: "CONNECT 5000\r\n", want: 5000},
		{in: "CONNECT 9000\nstream bytes", want: 9000, wantRest: "stream bytes"},
		{in: "CONNECT 4294967295\n", want: 4294967295},
		{in: "CONNECT 4294967296\n", wantErr: "bad port"},
		{in: "CONNECT\n", wantErr: "bad hybrid request"},
		{in: "HELLO 1\n", wantErr: "bad hybrid request"},
		{in: "CONNECT -1\n", wantErr: "bad port"},
		{in: "CONNECT 5000", wantErr: "EOF"},
		{in: "CONNECT " + strings.Repeat("1", 100) + "\n", wantErr: "longer than"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			r := bufio.NewReader(strings.NewReader(tc.in))
			port, err := ReadConnect(r)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ReadConnect = %d, %v; want error containing %q", port, err, tc.wantErr)
				}
				return
			}
			if err != nil || port != tc.want {
				t.Fatalf("ReadConnect = %d, %v; want %d", port, err, tc.want)
			}
			rest, _ := io.ReadAll(r)
			if string(rest) != tc.wantRest {
				t.Fatalf("bytes after the line: %q, want %q", rest, tc.wantRest)
			}
		})
	}
}

// TestDial runs the client against a real Unix socket server answering
// the handshake in various ways.
func TestDial(t *testing.T) {
	tests := []struct {
		name     string
		reply    string // what the server writes after reading CONNECT
		wantErr  string
		wantData string // read by the client after the handshake
	}{
		{name: "firecracker style", reply: "OK 1073741824\n", wantData: ""},
		{name: "stream right behind OK", reply: "OK 5000\nhello", wantData: "hello"},
		{name: "CRLF", reply: "OK 5000\r\n"},
		{name: "closed without reply", reply: "", wantErr: "no reply to CONNECT"},
		{name: "error reply", reply: "ERR no listener\n", wantErr: "unexpected reply"},
		{name: "OK without number", reply: "OK\n", wantErr: "unexpected reply"},
		{name: "endless reply", reply: strings.Repeat("O", 200), wantErr: "longer than"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "h.sock")
			ln, err := net.Listen("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			gotPort := make(chan uint32, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				p, err := ReadConnect(bufio.NewReader(c))
				if err != nil {
					return
				}
				gotPort <- p
				io.WriteString(c, tc.reply)
			}()
			// The handshake shows nothing until it is done: one stall interval.
			ctx, cancel := wait.Limits{}.Context(context.Background(), "the CONNECT handshake")
			defer cancel()
			c, err := Dial(ctx, path, 5000)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Dial = %v, want error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if p := <-gotPort; p != 5000 {
				t.Fatalf("server read port %d", p)
			}
			data, _ := io.ReadAll(c)
			if string(data) != tc.wantData {
				t.Fatalf("stream data %q, want %q", data, tc.wantData)
			}
		})
	}
}

func TestListenPath(t *testing.T) {
	if got := ListenPath("/run/vsock.sock", 9000); got != "/run/vsock.sock_9000" {
		t.Fatalf("ListenPath = %q", got)
	}
}
