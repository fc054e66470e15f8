// Package control is init's control plane: it listens on a Unix socket and
// on AF_VSOCK, identifies each peer, checks the permission policy, decodes
// one request per connection and dispatches it to a Handler (the
// supervisor). It also holds the client side that initctl and the vmtests
// use. The protocol is described in docs/protocol.md.
package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	"github.com/mdlayher/vsock"

	"golang.org/x/sys/unix"

	"github.com/nitroinit/nitroinit/internal/logs"
	"github.com/nitroinit/nitroinit/internal/nitro"
	"github.com/nitroinit/nitroinit/internal/procfs"
	"github.com/nitroinit/nitroinit/internal/wire"
)

// Defaults for Config fields left zero.
const (
	DefaultMaxConns   = 64
	DefaultIOTimeout  = 10 * time.Second
	DefaultConfigPath = nitro.ConfigPath
)

// refusedDrain is how much of a request init takes in, without waiting,
// from a peer it refuses, so that the peer's write does not fail before it
// reads the refusal.
const refusedDrain = 4 << 10

// refusedWriteTimeout bounds the write of a refusal; it fits in any socket
// buffer, so only a broken peer meets it.
const refusedWriteTimeout = time.Second

// writeChunk is how much of a response is written per write deadline, so a
// large response to a slow but live reader does not time out while a
// reader that stops reading does. It is also the most of a streamed answer
// (logs) held in memory at once.
const writeChunk = 64 << 10

// ReservedShare is the fraction of MaxConns (1/ReservedShare) kept for
// privileged peers: root on the Unix socket and peers granted manage or
// exec. Others share the rest, so a flood of connections from a local user
// or a read-only peer cannot lock the operator out.
const ReservedShare = 4

// Config configures a Server.
type Config struct {
	// Handler carries out the requests. Required.
	Handler Handler
	// Policy decides who may send what.
	Policy Policy
	// MaxConns bounds the connections served at once on each listener;
	// further clients wait in the listen backlog. Default DefaultMaxConns.
	MaxConns int
	// IOTimeout bounds the wait for a request and each write of a
	// response. Default DefaultIOTimeout.
	IOTimeout time.Duration
	// Logf receives diagnostics; nil discards them.
	Logf func(format string, args ...any)
	// DialVsock connects to a logs-stream listener on the host. Default:
	// AF_VSOCK. Tests and the simulator's hybrid side replace it.
	DialVsock func(ctx context.Context, cid, port uint32) (net.Conn, error)
	// Proc reads process information. Default: /proc.
	Proc procfs.FS
	// ConfigPath is named in permission errors. Default DefaultConfigPath.
	ConfigPath string
}

// Server serves control connections. Create it with NewServer.
type Server struct {
	cfg    Config
	ctx    context.Context
	cancel context.CancelFunc

	work chan job // connections for idle workers

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{}
	streams   map[streamKey]*stream
	wg        sync.WaitGroup

	statuses statusCache // encoded status answers, see statusAnswer

	// refusals summarises refused and turned-away connections in the
	// log instead of one line each.
	refusals *logs.Throttle
}

// NewServer returns a server; call Serve, ServeUnix or ServeVsock to use it.
func NewServer(cfg Config) *Server {
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	if cfg.IOTimeout <= 0 {
		cfg.IOTimeout = DefaultIOTimeout
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	if cfg.DialVsock == nil {
		cfg.DialVsock = func(ctx context.Context, cid, port uint32) (net.Conn, error) {
			return vsock.DialContext(ctx, cid, port, nil)
		}
	}
	if cfg.ConfigPath == "" {
		cfg.ConfigPath = DefaultConfigPath
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		cfg:       cfg,
		ctx:       ctx,
		cancel:    cancel,
		work:      make(chan job),
		listeners: map[net.Listener]struct{}{},
		conns:     map[net.Conn]struct{}{},
		streams:   map[streamKey]*stream{},
		refusals:  logs.NewThrottle("refused connections", logs.ThrottleWindow, cfg.Logf),
	}
}

// slots are one listener's connection slots.
type slots struct {
	all     chan struct{} // every connection being served; Accept waits when full
	shared  chan struct{} // those unprivileged peers may hold
	follows chan struct{} // those logs -f may hold
}

func newSlots(maxConns int) *slots {
	reserved := maxConns / ReservedShare
	return &slots{
		all:     make(chan struct{}, maxConns),
		shared:  make(chan struct{}, maxConns-reserved),
		follows: make(chan struct{}, max(1, maxConns/4)),
	}
}

// ServeUnix listens on a Unix socket at path and serves it until ctx ends
// or Close is called. The directory is created if missing and a stale
// socket left by an earlier run is replaced; a live one is an error. The
// socket is mode 0600 unless the policy lets other uids or gids in, in which
// case it is 0666 and every request is checked against SO_PEERCRED.
func (s *Server) ServeUnix(ctx context.Context, path string) error {
	l, err := ListenUnix(path, len(s.cfg.Policy.UnixUIDs)+len(s.cfg.Policy.UnixGIDs) > 0)
	if err != nil {
		return err
	}
	return s.Serve(ctx, l, TransportUnix)
}

// ListenUnix creates the control socket at path (see ServeUnix). shared
// selects mode 0666 instead of 0600.
func ListenUnix(path string, shared bool) (*net.UnixListener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("control socket %s: create directory: %w (check control.unix_socket_path)", path, err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("control socket %s: a %s is in the way; remove it or change control.unix_socket_path", path, fi.Mode().Type())
		}
		if c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"}); err == nil {
			c.Close()
			return nil, fmt.Errorf("control socket %s: another server is listening there (is init already running?)", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("control socket %s: remove stale socket: %w", path, err)
		}
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	mode := os.FileMode(0o600)
	if shared {
		mode = 0o666
	}
	// The socket exists with the umask's mode for a moment before this;
	// requests are checked against SO_PEERCRED regardless, so a client that
	// slips in meanwhile gains nothing.
	if err := os.Chmod(path, mode); err != nil {
		l.Close()
		return nil, fmt.Errorf("control socket %s: chmod %o: %w", path, mode, err)
	}
	return l, nil
}

// ServeVsock listens on AF_VSOCK cid:port (vsock.CIDAny, 4294967295, for
// any) and serves it until ctx ends or Close is called.
func (s *Server) ServeVsock(ctx context.Context, cid, port uint32) error {
	l, err := vsock.ListenContextID(cid, port, nil)
	if err != nil {
		return fmt.Errorf("control vsock %d:%d: %w (check control.vsock_cid and control.vsock_port; is the vsock driver loaded?)", cid, port, err)
	}
	return s.Serve(ctx, l, TransportVsock)
}

// Serve accepts connections from l until ctx ends, Close is called or l
// fails, and closes l. Connections are served concurrently, at most
// MaxConns at once, by worker goroutines that are reused while busy.
func (s *Server) Serve(ctx context.Context, l net.Listener, t Transport) error {
	s.mu.Lock()
	if s.ctx.Err() != nil {
		s.mu.Unlock()
		l.Close()
		return net.ErrClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	defer l.Close()

	// Each listener has its own connection slots, so that clients on one
	// transport (the parent over vsock) cannot use up those of another
	// (root on the Unix socket).
	sl := newSlots(s.cfg.MaxConns)
	sem := sl.all
	var backoff time.Duration
	for {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		case <-s.ctx.Done():
			return nil
		}
		c, err := l.Accept()
		if err != nil {
			<-sem
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if s.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			// Out of file descriptors and the like: wait and retry rather
			// than spin or give up the control plane for good.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.cfg.Logf("control: accept on %s: %v; retrying in %v", l.Addr(), err, backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		if !s.track(c) {
			c.Close()
			<-sem
			return nil
		}
		j := job{c: c, t: t, sl: sl}
		if s.answerAtOnce(&j) {
			s.untrack(c)
			<-sem
			continue
		}
		select {
		case s.work <- j: // an idle worker took it
		default:
			s.wg.Add(1)
			go s.worker(j)
		}
	}
}

// job is one accepted connection waiting to be served, with what the
// accept loop found out about it (see answerAtOnce).
type job struct {
	c  net.Conn
	t  Transport
	sl *slots // the listener's; one of sl.all is released when done

	peer       Peer // valid if identified
	identified bool
	pre        []byte // the start of the request, already read
	answer     []byte // the rest of an answer whose start is written
}

// workerIdle is how long a worker goroutine waits for the next connection
// before it exits. Reusing workers saves a goroutine start and, above all,
// the stack growth that encoding a response causes in a fresh goroutine.
const workerIdle = 10 * time.Second

// worker serves j, then any connection handed to it while it is idle.
func (s *Server) worker(j job) {
	defer s.wg.Done()
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	for ok := true; ok; j, ok = s.next(idle, time.Now()) {
		s.serveConn(j)
	}
}

// next waits for a worker's next connection; it reports false when the
// worker has been idle for workerIdle since its last one, which ended at
// last. The idle timer is not re-armed per connection, which would be a
// timer update (and, with no other timer pending, a wake-up of the
// thread in epoll) per request: it fires workerIdle after it was last
// armed and is armed again for what is left.
func (s *Server) next(idle *time.Timer, last time.Time) (job, bool) {
	for {
		select {
		case j := <-s.work:
			return j, true
		case <-idle.C:
			d := time.Since(last)
			if d >= workerIdle {
				return job{}, false
			}
			idle.Reset(workerIdle - d)
		case <-s.ctx.Done():
			return job{}, false
		}
	}
}

func (s *Server) serveConn(j job) {
	defer func() { <-j.sl.all }()
	defer s.untrack(j.c)
	defer s.recoverPanic("connection", nil)
	if j.answer != nil {
		s.writeBytes(j.c, j.answer)
		return
	}
	s.handle(&j)
}

// track registers a connection so that Close can cut it; it reports false
// once the server is closed.
func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ctx.Err() != nil {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) untrack(c net.Conn) {
	c.Close()
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// Close stops every listener, log stream and follow, closes the open
// connections (so that a silent client cannot delay a shutdown by the I/O
// timeout) and waits for their goroutines to finish.
func (s *Server) Close() error {
	s.mu.Lock()
	s.cancel()
	for l := range s.listeners {
		l.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	for k, st := range s.streams {
		st.cancel()
		delete(s.streams, k)
	}
	s.mu.Unlock()
	s.wg.Wait()
	s.refusals.Stop()
	return nil
}

// recoverPanic, deferred, logs a panic and ends it; it sets *panicked,
// if not nil, when there was one.
func (s *Server) recoverPanic(what string, panicked *bool) {
	if r := recover(); r != nil {
		s.cfg.Logf("control: panic in %s: %v\n%s", what, r, debug.Stack())
		if panicked != nil {
			*panicked = true
		}
	}
}

// readRequest reads one JSON value without waiting for EOF: reference
// clients never half-close, so the value's end is the request's end. pre
// is what was already read of it.
func (s *Server) readRequest(c net.Conn, pre []byte) (wire.Request, *wire.Response, error) {
	var r io.Reader = c
	if len(pre) > 0 {
		r = io.MultiReader(bytes.NewReader(pre), c)
	}
	c.SetReadDeadline(time.Now().Add(s.cfg.IOTimeout))
	raw, err := wire.ReadValue(r, wire.MaxRequestSize)
	if err != nil {
		if errors.Is(err, wire.ErrTooLarge) {
			r := wire.Errorf("request larger than %d bytes refused", wire.MaxRequestSize)
			return wire.Request{}, &r, nil
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			r := wire.Errorf("Invalid request: no complete request within %v", s.cfg.IOTimeout)
			return wire.Request{}, &r, nil
		}
		if len(raw) == 0 {
			return wire.Request{}, nil, err // connected and left: nothing to answer
		}
		r := wire.Errorf("Invalid request: incomplete JSON value (%v)", err)
		return wire.Request{}, &r, nil
	}
	req, early := decodeRequest(raw)
	return req, early, nil
}

// decodeRequest decodes a framed request, or returns the answer to a bad
// one.
func decodeRequest(raw []byte) (wire.Request, *wire.Response) {
	var req wire.Request
	// Calling the decoder directly skips encoding/json's extra validation
	// pass over the whole request; the decoder validates what it reads.
	if err := req.UnmarshalJSON(raw); err != nil {
		var ue *wire.UnknownRequestError
		if errors.As(err, &ue) {
			// The reference's prefix, which scripts may match.
			r := wire.Errorf("Invalid request: %v", ue)
			return req, &r
		}
		r := wire.Errorf("Invalid request: %v", err)
		return req, &r
	}
	return req, nil
}

func (s *Server) handle(j *job) {
	c, sl, peer := j.c, j.sl, j.peer
	var err error
	if !j.identified {
		peer, err = identify(c, nil, j.t)
	}
	if err != nil {
		s.refusals.Event("unidentified peers", "control: %v", err)
		s.refuse(c, wire.Errorf("cannot identify the peer: %v", err))
		return
	}
	// A peer with no grant at all is answered and closed at once, before
	// init reads (and decodes) up to a megabyte from it or lets it hold a
	// slot.
	granted := s.cfg.Policy.Granted(peer)
	if len(granted) == 0 {
		err := s.cfg.Policy.Check(peer, wire.Request{Kind: wire.KindPing}, s.cfg.ConfigPath)
		s.refusals.Event(describePeer(peer), "control: connection from %s refused: %v (further refusals are summarised every %v)", describe(peer), err, logs.ThrottleWindow)
		s.refuse(c, wire.Errorf("%v", err))
		return
	}
	if !Privileged(granted) {
		select {
		case sl.shared <- struct{}{}:
			defer func() { <-sl.shared }()
		default:
			s.refusals.Event(describePeer(peer), "control: connection from %s turned away: the %d slots for read-only peers are in use", describe(peer), cap(sl.shared))
			s.refuse(c, wire.Errorf("too many connections (%d) from read-only peers are open; try again later", cap(sl.shared)))
			return
		}
	}
	req, early, err := s.readRequest(c, j.pre)
	if err != nil {
		return
	}
	if early != nil {
		s.write(c, *early)
		return
	}
	if err := s.cfg.Policy.Check(peer, req, s.cfg.ConfigPath); err != nil {
		s.refusals.Event(describePeer(peer), "control: %s from %s refused: %v", req.Kind, describe(peer), err)
		s.write(c, wire.Errorf("%v", err))
		return
	}
	switch req.Kind {
	case wire.KindServiceLogsFollow:
		// A follow holds its connection slot for as long as the client
		// likes: only a quarter of the slots may be held that way, so
		// that followers cannot lock other requests out.
		select {
		case sl.follows <- struct{}{}:
			defer func() { <-sl.follows }()
		default:
			s.write(c, wire.Errorf("too many logs -f streams (%d) are open on this socket; close one first", cap(sl.follows)))
			return
		}
		s.follow(c, req)
	case wire.KindServiceLogs:
		s.logs(c, req)
	case wire.KindServiceStatus:
		if b := s.statusAnswer(req.Name); b != nil {
			s.writeBytes(c, b)
			return
		}
		s.write(c, s.dispatch(req, peer))
	default:
		s.write(c, s.dispatch(req, peer))
	}
}

// refuse answers a peer that will not be served and closes at once: it
// takes in what the peer has already sent, without waiting for more, so
// that the peer reads the answer rather than a failed write.
func (s *Server) refuse(c net.Conn, r wire.Response) {
	if sc, ok := c.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			var buf [refusedDrain]byte
			raw.Read(func(fd uintptr) bool {
				unix.Recvfrom(int(fd), buf[:], unix.MSG_DONTWAIT)
				return true
			})
		}
	}
	b, _ := r.MarshalJSON()
	c.SetWriteDeadline(time.Now().Add(refusedWriteTimeout))
	c.Write(b)
}

// describePeer names a peer for summaries: by uid or CID, not PID, so that
// a flood from many processes of one user counts as one sender.
func describePeer(p Peer) string {
	if p.Transport == TransportUnix {
		return fmt.Sprintf("uid %d", p.UID)
	}
	if p.CIDKnown {
		return fmt.Sprintf("vsock CID %d", p.CID)
	}
	return "vsock peer"
}

func describe(p Peer) string {
	if p.Transport == TransportUnix {
		return fmt.Sprintf("uid %d pid %d", p.UID, p.PID)
	}
	if p.CIDKnown {
		return fmt.Sprintf("vsock CID %d", p.CID)
	}
	return "vsock peer"
}

// write sends one response, with no trailing newline, as the reference
// does. A chunked deadline lets big responses reach slow readers.
func (s *Server) write(c net.Conn, r wire.Response) error {
	return s.writeBytes(c, encode(r))
}

// encode encodes one response.
func encode(r wire.Response) []byte {
	// MarshalJSON directly: json.Marshal would re-scan and compact its
	// output, a second pass over every response.
	b, err := r.MarshalJSON()
	if err != nil {
		b, _ = json.Marshal(wire.Errorf("internal error encoding the response: %v", err))
	}
	return b
}

// logs answers ServiceLogs as the reference does, one JSON value, but
// streamed: the lines are encoded and written in writeChunk pieces as they
// are read from the log, so the answer's size never sizes init's memory.
// An error found after the first bytes went out cannot become an Error
// answer; the list then ends early and the error is logged.
func (s *Server) logs(c net.Conn, req wire.Request) {
	if req.Lines < 0 {
		s.write(c, wire.Errorf("lines must not be negative, got %d", req.Lines))
		return
	}
	tail, err := s.cfg.Handler.ServiceLogs(req.Name, req.Lines)
	if err != nil {
		s.write(c, wire.Errorf("%v", err))
		return
	}
	defer tail.Close()
	buf := make([]byte, 0, writeChunk+1024)
	buf = append(buf, `{"`+wire.KindServiceLogs+`":{"logs":[`...)
	first := true
	err = tail.Each(func(line []byte) error {
		if !first {
			buf = append(buf, ',')
		}
		first = false
		buf = wire.AppendString(buf, line)
		if len(buf) < writeChunk {
			return nil
		}
		werr := s.writeBytes(c, buf)
		buf = buf[:0]
		return werr
	})
	var ne net.Error
	if err != nil && !errors.As(err, &ne) && !errors.Is(err, syscall.EPIPE) && !errors.Is(err, syscall.ECONNRESET) {
		s.cfg.Logf("control: logs of %s ended early: %v", req.Name, err)
	}
	s.writeBytes(c, append(buf, "]}}"...))
}

func (s *Server) writeBytes(c net.Conn, b []byte) error {
	// What fits in the socket buffer (a whole answer, usually) is written
	// first without waiting, so without a deadline to arm.
	if raw := rawConn(c); raw != nil {
		b = b[tryWrite(raw, b):]
	}
	for len(b) > 0 {
		n := min(len(b), writeChunk)
		c.SetWriteDeadline(time.Now().Add(s.cfg.IOTimeout))
		if _, err := c.Write(b[:n]); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}
