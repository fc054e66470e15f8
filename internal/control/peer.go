package control

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"
)

// CIDConn is implemented by connections that know their vsock peer's CID
// without being *vsock.Conn, for example a relay from a hybrid vsock device.
type CIDConn interface {
	PeerCID() uint32
}

// identify works out who is on the other end of c.
func identify(c net.Conn, t Transport) (Peer, error) {
	p := Peer{Transport: t}
	if t == TransportVsock {
		if a, ok := c.RemoteAddr().(*vsock.Addr); ok {
			p.CID, p.CIDKnown = a.ContextID, true
		} else if cc, ok := c.(CIDConn); ok {
			p.CID, p.CIDKnown = cc.PeerCID(), true
		}
		return p, nil
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return p, fmt.Errorf("connection %T has no file descriptor to read SO_PEERCRED from", c)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return p, fmt.Errorf("SO_PEERCRED: %w", err)
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return p, fmt.Errorf("SO_PEERCRED: %w", err)
	}
	if credErr != nil {
		return p, fmt.Errorf("SO_PEERCRED: %w", credErr)
	}
	p.UID, p.GID, p.PID = cred.Uid, cred.Gid, cred.Pid
	// SO_PEERCRED carries only the primary group; supplementary groups are
	// read from /proc so that control.permissions.unix.gids works as
	// operators expect. A peer that has already exited simply has none.
	if p.UID != 0 {
		p.Groups = supplementaryGroups(p.PID)
	}
	return p, nil
}

func supplementaryGroups(pid int32) []uint32 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(int(pid)) + "/status")
	if err != nil {
		return nil
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Groups:"); ok {
			var out []uint32
			for _, f := range strings.Fields(v) {
				if g, err := strconv.ParseUint(f, 10, 32); err == nil {
					out = append(out, uint32(g))
				}
			}
			return out
		}
	}
	return nil
}
