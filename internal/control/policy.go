package control

import (
	"fmt"
	"slices"

	"github.com/nitroinit/nitroinit/internal/config"
	"github.com/nitroinit/nitroinit/internal/unit"
	"github.com/nitroinit/nitroinit/internal/wire"
)

// Class is a permission class; the classes and their defaults have one
// home, internal/config, because init.yaml names them.
type Class = config.Class

// The classes, for the package's own use and its tests.
const (
	ClassRead   = config.ClassRead
	ClassManage = config.ClassManage
	ClassExec   = config.ClassExec
)

// requestClass maps every request variant to its class. A variant missing
// here is refused as exec, so a forgotten row fails closed.
var requestClass = map[string]Class{
	wire.KindPing:                  ClassRead,
	wire.KindListServices:          ClassRead,
	wire.KindServiceStatus:         ClassRead,
	wire.KindServiceLogs:           ClassRead,
	wire.KindServiceLogsFollow:     ClassRead,
	wire.KindProcessList:           ClassRead,
	wire.KindProcessStatus:         ClassRead,
	wire.KindSystemStatus:          ClassRead,
	wire.KindServiceStart:          ClassManage,
	wire.KindServiceStop:           ClassManage,
	wire.KindServiceRestart:        ClassManage,
	wire.KindServiceEnable:         ClassManage,
	wire.KindServiceDisable:        ClassManage,
	wire.KindSystemReload:          ClassManage,
	wire.KindServiceLogsClear:      ClassManage,
	wire.KindServiceLogsStream:     ClassManage,
	wire.KindServiceLogsStreamStop: ClassManage,
	wire.KindProcessStart:          ClassExec,
	wire.KindProcessStop:           ClassExec,
	wire.KindProcessKill:           ClassExec,
	wire.KindProcessRestart:        ClassExec,
	wire.KindSystemReboot:          ClassExec,
	wire.KindSystemShutdown:        ClassExec,
}

// ClassOf returns the class of a request variant.
func ClassOf(kind string) Class {
	if c, ok := requestClass[kind]; ok {
		return c
	}
	return ClassExec
}

// logRequests are the variants that read or change a service's log.
var logRequests = map[string]bool{
	wire.KindServiceLogs: true, wire.KindServiceLogsFollow: true, wire.KindServiceLogsClear: true,
	wire.KindServiceLogsStream: true, wire.KindServiceLogsStreamStop: true,
}

// RequestClass returns the class req needs: its variant's, except that the
// log of ps start/run processes is the output of commands only exec peers
// may run, so it is theirs alone to read or clear.
func RequestClass(req wire.Request) Class {
	if logRequests[req.Kind] && req.Name == unit.AdhocLog {
		return ClassExec
	}
	return ClassOf(req.Kind)
}

// Policy says who may send which class of request.
//
// Over the Unix socket root (uid 0) may do everything; another uid is
// allowed only if it is in UnixUIDs or its primary or a supplementary group
// is in UnixGIDs, and then only UnixClasses. Over vsock a peer CID must be
// in VsockCIDs (empty: any CID) and gets VsockClasses. A nil class list
// means config.DefaultUnixClasses or config.DefaultVsockClasses; an empty
// non-nil list means none.
type Policy struct {
	UnixUIDs     []uint32
	UnixGIDs     []uint32
	UnixClasses  []Class
	VsockCIDs    []uint32
	VsockClasses []Class
}

// Transport says how a connection arrived, which decides how its peer is
// identified and which half of the Policy applies.
type Transport int

const (
	// TransportUnix connections are identified by SO_PEERCRED.
	TransportUnix Transport = iota
	// TransportVsock connections are identified by the peer CID.
	TransportVsock
)

func (t Transport) String() string {
	if t == TransportVsock {
		return "vsock"
	}
	return "unix socket"
}

// Peer is the identity of a connected client.
type Peer struct {
	Transport Transport
	// UID, GID and Groups come from SO_PEERCRED and /proc (Unix only).
	UID, GID uint32
	Groups   []uint32
	PID      int32
	// CID is the vsock peer's context ID; CIDKnown is false when the
	// connection did not carry one (for example a hybrid relay).
	CID      uint32
	CIDKnown bool
}

// NewPolicy returns the policy init.yaml's control.permissions describe.
func NewPolicy(p config.Permissions) Policy {
	return Policy{
		UnixUIDs: p.Unix.UIDs, UnixGIDs: p.Unix.GIDs, UnixClasses: p.Unix.Classes,
		VsockCIDs: p.Vsock.CIDs, VsockClasses: p.Vsock.Classes,
	}
}

func classesOrDefault(c, def []Class) []Class {
	if c == nil {
		return def
	}
	return c
}

// Privileged reports whether granted includes a class beyond read: such
// peers (root, and those init.yaml gives manage or exec) may use the
// connection slots kept back from everyone else.
func Privileged(granted []Class) bool {
	return slices.Contains(granted, ClassManage) || slices.Contains(granted, ClassExec)
}

// Granted returns the classes the policy grants to peer.
func (p Policy) Granted(peer Peer) []Class {
	switch peer.Transport {
	case TransportUnix:
		if peer.UID == 0 {
			return config.AllClasses
		}
		if p.unixListed(peer) {
			return classesOrDefault(p.UnixClasses, config.DefaultUnixClasses)
		}
		return nil
	default:
		if !p.cidAllowed(peer) {
			return nil
		}
		return classesOrDefault(p.VsockClasses, config.DefaultVsockClasses)
	}
}

func (p Policy) cidAllowed(peer Peer) bool {
	return len(p.VsockCIDs) == 0 || peer.CIDKnown && slices.Contains(p.VsockCIDs, peer.CID)
}

func (p Policy) unixListed(peer Peer) bool {
	if slices.Contains(p.UnixUIDs, peer.UID) || slices.Contains(p.UnixGIDs, peer.GID) {
		return true
	}
	for _, g := range peer.Groups {
		if slices.Contains(p.UnixGIDs, g) {
			return true
		}
	}
	return false
}

// Check returns nil if peer may send a request of the given kind, or an
// error that names the class and the configuration key that would allow it.
func (p Policy) Check(peer Peer, req wire.Request, configPath string) error {
	class := RequestClass(req)
	granted := p.Granted(peer)
	if slices.Contains(granted, class) {
		return nil
	}
	switch {
	case peer.Transport == TransportUnix && !p.unixListed(peer):
		return fmt.Errorf("permission denied: uid %d (gid %d) may not use the control socket; add it to control.permissions.unix.uids (or its group to control.permissions.unix.gids) in %s", peer.UID, peer.GID, configPath)
	case peer.Transport == TransportUnix:
		return fmt.Errorf("permission denied: %q requests over the unix socket need control.permissions.unix.classes to include %s in %s", class, class, configPath)
	case !p.cidAllowed(peer):
		cid := "unknown"
		if peer.CIDKnown {
			cid = fmt.Sprint(peer.CID)
		}
		return fmt.Errorf("permission denied: vsock peer CID %s is not in control.permissions.vsock.cids in %s", cid, configPath)
	default:
		return fmt.Errorf("permission denied: %q requests over vsock need control.permissions.vsock.classes to include %s in %s", class, class, configPath)
	}
}

// Info reports the policy for system-status, with the classes granted to
// the asking peer.
func (p Policy) Info(peer Peer) *wire.PolicyInfo {
	names := func(cs []Class) []string {
		out := make([]string, 0, len(cs))
		for _, c := range cs {
			out = append(out, string(c))
		}
		return out
	}
	nonNil := func(s []uint32) []uint32 {
		if s == nil {
			return []uint32{}
		}
		return s
	}
	return &wire.PolicyInfo{
		UnixUIDs:     nonNil(p.UnixUIDs),
		UnixGIDs:     nonNil(p.UnixGIDs),
		UnixClasses:  names(classesOrDefault(p.UnixClasses, config.DefaultUnixClasses)),
		VsockCIDs:    nonNil(p.VsockCIDs),
		VsockClasses: names(classesOrDefault(p.VsockClasses, config.DefaultVsockClasses)),
		Caller:       names(p.Granted(peer)),
	}
}
