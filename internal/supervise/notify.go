package supervise

import (
	"fmt"

	"golang.org/x/sys/unix"
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

// deliver receives each message with the PID of its sender (0 when the
// kernel sent no credentials).
func listenNotify(path string, deliver func(msg string, pid int), logf func(string, ...any)) (*notifySocket, error) {
	os.Remove(path)
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	// Services may run as another user: let them send to it. Senders are
	// checked by their credentials instead (see onNotify).
	os.Chmod(path, 0o666)
	if raw, err := conn.SyscallConn(); err == nil {
		raw.Control(func(fd uintptr) {
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
		})
	}
	ns := &notifySocket{path: path, conn: conn}
	go func() {
		defer func() {
			if v := recover(); v != nil {
				logf("supervise: notify reader panic: %v\n%s", v, debug.Stack())
			}
		}()
		buf := make([]byte, maxNotify)
		oob := make([]byte, unix.CmsgSpace(unix.SizeofUcred))
		for {
			n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
			if err != nil {
				return
			}
			deliver(string(buf[:n]), senderPID(oob[:oobn]))
		}
	}()
	return ns, nil
}

// senderPID returns the PID in an SCM_CREDENTIALS message, or 0.
func senderPID(oob []byte) int {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return 0
	}
	for _, m := range msgs {
		if cred, err := unix.ParseUnixCredentials(&m); err == nil {
			return int(cred.Pid)
		}
	}
	return 0
}

func (ns *notifySocket) Close() {
	ns.conn.Close()
	os.Remove(ns.path)
}
