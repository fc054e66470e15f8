package control

import (
	"fmt"
	"net"
	"syscall"
	"unsafe"

	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"
)

// CIDConn is implemented by connections that know their vsock peer's CID
// without being *vsock.Conn, for example a relay from a hybrid vsock device.
type CIDConn interface {
	PeerCID() uint32
}

// identify works out who is on the other end of c; raw is c's descriptor
// if the caller has it at hand, or nil.
func identify(c net.Conn, raw syscall.RawConn, t Transport) (Peer, error) {
	p := Peer{Transport: t}
	if t == TransportVsock {
		if a, ok := c.RemoteAddr().(*vsock.Addr); ok {
			p.CID, p.CIDKnown = a.ContextID, true
		} else if cc, ok := c.(CIDConn); ok {
			p.CID, p.CIDKnown = cc.PeerCID(), true
		}
		return p, nil
	}
	if raw == nil {
		sc, ok := c.(syscall.Conn)
		if !ok {
			return p, fmt.Errorf("connection %T has no file descriptor to read SO_PEERCRED from", c)
		}
		var err error
		if raw, err = sc.SyscallConn(); err != nil {
			return p, fmt.Errorf("SO_PEERCRED: %w", err)
		}
	}
	// One value for what the callback finds: each variable it captured
	// would be a heap allocation of its own, per connection.
	var r peerCred
	if err := raw.Control(r.read); err != nil {
		return p, fmt.Errorf("SO_PEERCRED: %w", err)
	}
	if r.credErr != nil {
		return p, fmt.Errorf("SO_PEERCRED: %w", r.credErr)
	}
	p.UID, p.GID, p.PID = r.cred.Uid, r.cred.Gid, r.cred.Pid
	// SO_PEERCRED carries only the primary group; the supplementary ones
	// come from SO_PEERGROUPS, which like SO_PEERCRED the kernel records at
	// connect time (reading /proc/<pid> later could read a recycled PID).
	// Without it the peer simply has no supplementary groups: fail closed.
	if r.groupErr == nil {
		p.Groups = r.groups
	}
	return p, nil
}

// peerCred is what identify reads from a Unix socket.
type peerCred struct {
	cred              unix.Ucred
	groups            []uint32
	credErr, groupErr error
}

// read reads SO_PEERCRED and, for a peer other than root, SO_PEERGROUPS.
func (r *peerCred) read(fd uintptr) {
	n := uint32(unsafe.Sizeof(r.cred))
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_SOCKET, unix.SO_PEERCRED,
		uintptr(unsafe.Pointer(&r.cred)), uintptr(unsafe.Pointer(&n)), 0)
	if e != 0 {
		r.credErr = e
		return
	}
	if r.cred.Uid != 0 {
		r.groups, r.groupErr = peerGroups(int(fd))
	}
}

// peerGroups reads SO_PEERGROUPS: the peer's supplementary groups at
// connect time, as an array of gid_t.
func peerGroups(fd int) ([]uint32, error) {
	buf := make([]uint32, 64)
	for {
		n := uint32(len(buf) * 4)
		_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
		switch {
		case e == unix.ERANGE && int(n/4) > len(buf):
			buf = make([]uint32, n/4)
			continue
		case e != 0:
			return nil, e
		}
		return buf[:n/4], nil
	}
}
