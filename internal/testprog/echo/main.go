// Command echo is a TCP echo server for the network vmtests: it sends back
// every byte a client sends, on any number of connections at once, and
// passes the client's end of stream on as its own (a half-close), so that a
// test can check a checksum of everything that came back.
//
// busybox nc -ll stands in poorly: it drops some of many simultaneous
// connections, and Debian's static busybox has no tcpsvd.
package main

import (
	"fmt"
	"io"
	"net"
	"os"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: echo HOST:PORT")
		os.Exit(2)
	}
	l, err := net.Listen("tcp", os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		os.Exit(1)
	}
	fmt.Println("echo: listening on", l.Addr())
	for {
		c, err := l.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, "echo:", err)
			os.Exit(1)
		}
		go func() {
			defer c.Close()
			io.Copy(c, c)
			c.(*net.TCPConn).CloseWrite()
		}()
	}
}
