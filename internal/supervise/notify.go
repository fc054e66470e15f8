package supervise

import (
	"fmt"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/nitroinit/nitroinit/internal/cgroup"
	"github.com/nitroinit/nitroinit/internal/logs"
)

// notifySocket is the sd_notify datagram socket of one Type=notify
// service. Each service gets its own socket, so a message's sender is known
// without SCM_CREDENTIALS.
//
// The socket must be writable by every user (services may run as any), so
// anyone may flood it. Its reader goroutine therefore checks each sender
// itself and drops what does not come from the service's process group or
// cgroup
// before it reaches the supervisor loop, and the drops are summarised in
// init's log, never one line each.
type notifySocket struct {
	path    string
	conn    *net.UnixConn
	pid     atomic.Int64  // the service's main PID, once known
	cgroup  string        // the service's cgroup ("" without one); set with pid
	known   chan struct{} // closed by setPID, which publishes pid and cgroup
	once    sync.Once
	ignored *logs.Throttle
}

// maxNotify is the largest datagram read; sd_notify messages are small.
const maxNotify = 4096

// listenNotify opens the socket at path for service name. deliver receives
// each message from the service's own processes, on the reader goroutine.
func listenNotify(name, path string, deliver func(msg string, pid int), logf func(string, ...any)) (*notifySocket, error) {
	os.Remove(path)
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	// Services may run as another user: let them send to it. Senders are
	// checked by their credentials instead.
	os.Chmod(path, 0o666)
	if raw, err := conn.SyscallConn(); err == nil {
		raw.Control(func(fd uintptr) {
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
		})
	}
	ns := &notifySocket{
		path:    path,
		conn:    conn,
		known:   make(chan struct{}),
		ignored: logs.NewThrottle("notifications to "+name, logs.ThrottleWindow, logf),
	}
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
			// A message can arrive before the start has recorded the
			// PID (the service is quick); it waits in the socket meanwhile.
			<-ns.known
			sender := senderPID(oob[:oobn])
			if !ns.own(sender) {
				ns.ignored.Event(fmt.Sprintf("pid %d", sender),
					"supervise: %s: ignoring a notification from pid %d, which is not the service's (more are summarised every %v)", name, sender, logs.ThrottleWindow)
				continue
			}
			deliver(string(buf[:n]), sender)
		}
	}()
	return ns, nil
}

// setPID records the service's main PID and its cgroup path ("" when it
// has none): processes of that process group or cgroup may notify, as
// with systemd's NotifyAccess=all.
func (ns *notifySocket) setPID(pid int, cgroupPath string) {
	ns.pid.Store(int64(pid))
	ns.once.Do(func() {
		ns.cgroup = cgroupPath
		close(ns.known)
	})
}

// own reports whether sender is one of the service's processes; the
// reader calls it once known is closed.
func (ns *notifySocket) own(sender int) bool {
	main := int(ns.pid.Load())
	switch {
	case sender <= 0 || main <= 0:
		return false
	case sender == main || inGroup(sender, main):
		return true
	}
	return ns.cgroup != "" && cgroup.OfProcess(sender) == ns.cgroup
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

// inGroup reports whether pid is in the process group pgid.
func inGroup(pid, pgid int) bool {
	g, err := syscall.Getpgid(pid)
	return err == nil && g == pgid
}

func (ns *notifySocket) Close() {
	ns.once.Do(func() { close(ns.known) }) // release a reader waiting for the PID
	ns.conn.Close()
	ns.ignored.Stop()
	os.Remove(ns.path)
}
