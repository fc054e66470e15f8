package supervise

import (
	"fmt"
	"net"
	"os"
	"runtime/debug"
)

// notifySocket is the sd_notify datagram socket of one Type=notify
// service. Each service gets its own socket, so a message's sender is known
// without SCM_CREDENTIALS.
type notifySocket struct {
	path string
	conn *net.UnixConn
}

// maxNotify is the largest datagram read; sd_notify messages are small.
const maxNotify = 4096

func listenNotify(path string, deliver func(string), logf func(string, ...any)) (*notifySocket, error) {
	os.Remove(path)
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	// Services may run as another user: let them send to it.
	os.Chmod(path, 0o666)
	ns := &notifySocket{path: path, conn: conn}
	go func() {
		defer func() {
			if v := recover(); v != nil {
				logf("supervise: notify reader panic: %v\n%s", v, debug.Stack())
			}
		}()
		buf := make([]byte, maxNotify)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			deliver(string(buf[:n]))
		}
	}()
	return ns, nil
}

func (ns *notifySocket) Close() {
	ns.conn.Close()
	os.Remove(ns.path)
}
