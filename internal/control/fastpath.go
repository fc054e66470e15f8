package control

import (
	"bytes"
	"net"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/nitroinit/nitroinit/internal/wire"
)

// firstReadMax is how much of a request the accept loop reads without
// waiting. Status requests are far smaller; a longer request is read on
// by a worker, from where the accept loop stopped.
const firstReadMax = 512

// answerAtOnce serves, in the accept loop itself, a connection whose
// request is a ServiceStatus already complete in the socket buffer
// (initctl writes its request right after connecting, so it usually is)
// and whose encoded answer is in the cache and current. The accept loop
// never waits, neither on the peer (it reads and writes only what the
// socket takes at once, so no deadline is needed) nor on the handler
// (StatusVersioner answers at once). What it saves is the hand-off to a
// worker: waking another thread, which on a busy machine is most of what
// separates a round trip from the floor's. It reports whether it
// answered; if not, j carries on to a worker what it found out (the peer,
// what it read of the request, what is left of the answer), so that
// nothing is repeated or lost.
func (s *Server) answerAtOnce(j *job) (answered bool) {
	defer s.recoverPanic("connection", &answered)
	raw := rawConn(j.c)
	if raw == nil {
		return false
	}
	peer, err := identify(j.c, raw, j.t)
	if err != nil {
		return false // the worker refuses it
	}
	j.peer, j.identified = peer, true
	granted := s.cfg.Policy.Granted(peer)
	if len(granted) == 0 {
		return false // the worker refuses it
	}
	if !Privileged(granted) {
		select {
		case j.sl.shared <- struct{}{}:
			defer func() { <-j.sl.shared }()
		default:
			return false // the worker turns it away
		}
	}
	buf := make([]byte, firstReadMax)
	n := tryRead(raw, buf)
	if n == 0 {
		return false // nothing yet, or EOF or an error the worker meets again
	}
	j.pre = buf[:n]
	// The value is complete if framing it needs nothing beyond what was read.
	v, err := wire.ReadValue(bytes.NewReader(j.pre), wire.MaxRequestSize)
	if err != nil {
		return false
	}
	req, early := decodeRequest(v)
	if early != nil || req.Kind != wire.KindServiceStatus || s.cfg.Policy.Check(peer, req, s.cfg.ConfigPath) != nil {
		return false // answered, logged or refused by the worker as usual
	}
	b := s.cachedAnswer(req.Name)
	if b == nil {
		return false // a worker asks the handler, which may wait
	}
	if n := tryWrite(raw, b); n < len(b) {
		j.answer = b[n:] // the socket buffer is full: a worker waits to write the rest
		return false
	}
	return true
}

// rawConn returns c's descriptor, or nil if it has none.
func rawConn(c net.Conn) syscall.RawConn {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return raw
}

// tryRead reads into buf what is in raw's receive buffer, without
// waiting, and returns how much: 0 when nothing is there yet, at EOF or
// on an error (which a later read meets again).
func tryRead(raw syscall.RawConn, buf []byte) int {
	op := &nbio{buf: buf}
	if raw.Read(op.read) != nil || op.n < 0 {
		return 0
	}
	return op.n
}

// tryWrite writes what of b fits in raw's socket buffer, without waiting,
// and returns how much.
func tryWrite(raw syscall.RawConn, b []byte) int {
	op := &nbio{buf: b}
	if raw.Write(op.write) != nil || op.n < 0 {
		return 0
	}
	return op.n
}

// nbio is one read or write on a descriptor without waiting (Go's sockets
// are non-blocking): a RawConn callback, in one value so that the
// callback allocates once.
type nbio struct {
	buf []byte
	n   int // bytes moved; 0 or -1 when none
}

func (o *nbio) read(fd uintptr) bool {
	o.n, _ = unix.Read(int(fd), o.buf)
	return true // never wait
}

func (o *nbio) write(fd uintptr) bool {
	o.n, _ = unix.Write(int(fd), o.buf)
	return true // never wait
}
