package forward

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for Config fields left zero.
const (
	DefaultMaxConns      = 256
	DefaultIdleTimeout   = 5 * time.Minute
	DefaultHeaderTimeout = 10 * time.Second
	DefaultDialTimeout   = 10 * time.Second
)

// bufSize is the copy buffer of a direction that cannot splice. Two per
// connection, so a forwarder holds at most 2*MaxConns of them.
const bufSize = 64 << 10

// chunk is how much a spliced direction copies between reports of
// progress to the idle watchdog (a buffered direction reports every read):
// a stream slower than chunk per IdleTimeout counts as idle.
const chunk = 64 << 10

// maxHeader bounds the target line a header-mode connection sends.
const maxHeader = 300

// Config describes one forwarder.
type Config struct {
	// Listener accepts the connections to forward. The forwarder closes it
	// when Serve returns.
	Listener net.Listener
	// Target is what each accepted connection is connected to. When nil,
	// each connection names its target first ("CONNECT host:port\n"), which
	// must be a TCP target on Allow: the parent side of egress.
	Target *Endpoint
	// Allow, when set, restricts TCP targets: a fixed Target must be on it
	// (New refuses otherwise), and header targets not on it are refused.
	Allow *AllowList
	// AllowFile names the allow-list in messages.
	AllowFile string
	// SendTarget, when set, is sent as "CONNECT SendTarget\n" on each new
	// connection to Target before any data: the enclave side of egress
	// naming the outside service to a header-mode parent.
	SendTarget string
	// MaxConns bounds concurrent connections; more are accepted and closed
	// at once (and logged), so that clients fail fast instead of hanging.
	MaxConns int
	// IdleTimeout closes a connection on which neither direction moved
	// data for this long: a peer that neither sends nor takes what it is
	// sent holds its connection no longer than this.
	IdleTimeout time.Duration
	// Logf receives refusals and failures, at most a few lines per second.
	Logf func(format string, args ...any)
	// Dial overrides Dial (for tests).
	Dial func(ctx context.Context, e Endpoint) (net.Conn, error)
}

// Forwarder accepts connections and copies each to its target.
type Forwarder struct {
	cfg  Config
	log  *rateLog
	sem  chan struct{}
	wg   sync.WaitGroup
	bufs sync.Pool

	active, total, refused atomic.Int64
}

// New checks cfg and fills in defaults.
func New(cfg Config) (*Forwarder, error) {
	if cfg.Listener == nil {
		return nil, errors.New("forward: no listener")
	}
	if cfg.Target == nil && cfg.Allow == nil {
		return nil, errors.New("forward: no target and no allow-list: give a target to connect to, or an allow-list for targets named per connection")
	}
	if t := cfg.Target; t != nil && cfg.Allow != nil {
		if t.Kind != KindTCP {
			return nil, fmt.Errorf("forward: an allow-list applies to TCP targets, not %s", t)
		}
		if !cfg.Allow.Allowed(t.Addr) {
			return nil, fmt.Errorf("forward: target %s is not on the allow-list %s", t.Addr, cfg.AllowFile)
		}
	}
	if len(cfg.SendTarget) > maxHeader-len("CONNECT \n") || strings.ContainsAny(cfg.SendTarget, "\r\n") {
		return nil, fmt.Errorf("forward: target name %q is too long or has a line break", cfg.SendTarget)
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	if cfg.Dial == nil {
		cfg.Dial = Dial
	}
	f := &Forwarder{cfg: cfg, log: newRateLog(cfg.Logf, 10, 10*time.Second), sem: make(chan struct{}, cfg.MaxConns)}
	f.bufs.New = func() any { b := make([]byte, bufSize); return &b }
	return f, nil
}

// Stats counts connections: being forwarded now, forwarded in all, and
// refused (connection limit, allow-list, bad header, failed dial).
type Stats struct{ Active, Total, Refused int64 }

// Stats returns the current counters.
func (f *Forwarder) Stats() Stats {
	return Stats{Active: f.active.Load(), Total: f.total.Load(), Refused: f.refused.Load()}
}

// Serve accepts connections until ctx ends or the listener fails, then
// closes the listener and every connection and waits for them.
func (f *Forwarder) Serve(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	l := f.cfg.Listener
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	defer f.wg.Wait()
	defer l.Close()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded) || isTemporary(err) {
				// Out of descriptors or a transient error: back off rather
				// than spin, and keep serving the connections already open.
				f.log.printf("accept on %s: %v; retrying", l.Addr(), err)
				select {
				case <-time.After(100 * time.Millisecond):
				case <-ctx.Done():
					return nil
				}
				continue
			}
			return fmt.Errorf("accept on %s: %w", l.Addr(), err)
		}
		select {
		case f.sem <- struct{}{}:
		default:
			f.refused.Add(1)
			f.log.printf("refusing a connection from %s: %d connections already forwarded (the limit)", c.RemoteAddr(), f.cfg.MaxConns)
			c.Close()
			continue
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer func() { <-f.sem }()
			defer func() {
				if v := recover(); v != nil {
					f.cfg.Logf("forward: panic serving %s: %v\n%s", c.RemoteAddr(), v, debug.Stack())
				}
			}()
			f.handle(ctx, c)
		}()
	}
}

func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// handle connects c to its target and copies until both directions end.
func (f *Forwarder) handle(ctx context.Context, c net.Conn) {
	stopC := context.AfterFunc(ctx, func() { c.Close() })
	defer stopC()
	defer c.Close()
	target, pending, ok := f.target(c)
	if !ok {
		f.refused.Add(1)
		return
	}
	dctx, cancel := context.WithTimeout(ctx, DefaultDialTimeout)
	t, err := f.cfg.Dial(dctx, target)
	cancel()
	if err != nil {
		f.refused.Add(1)
		f.log.printf("forward %s -> %s: %v", c.RemoteAddr(), target, err)
		return
	}
	stopT := context.AfterFunc(ctx, func() { t.Close() })
	defer stopT()
	defer t.Close()
	if f.cfg.SendTarget != "" {
		t.SetWriteDeadline(time.Now().Add(DefaultHeaderTimeout))
		if _, err := io.WriteString(t, "CONNECT "+f.cfg.SendTarget+"\n"); err != nil {
			f.log.printf("forward %s -> %s: sending the target name: %v", c.RemoteAddr(), target, err)
			return
		}
	}
	if len(pending) > 0 {
		// Bytes the client sent right after its header line.
		t.SetWriteDeadline(time.Now().Add(f.cfg.IdleTimeout))
		if _, err := t.Write(pending); err != nil {
			return
		}
	}
	t.SetWriteDeadline(time.Time{}) // from here on the idle watchdog bounds it
	f.active.Add(1)
	f.total.Add(1)
	defer f.active.Add(-1)
	if err := f.pipe(c, t); err != nil && ctx.Err() == nil {
		f.log.printf("forward %s -> %s: %v", c.RemoteAddr(), target, err)
	}
}

// target works out where c goes: the fixed target, or the one its header
// names, checked against the allow-list. pending holds bytes read past the
// header.
func (f *Forwarder) target(c net.Conn) (Endpoint, []byte, bool) {
	if f.cfg.Target != nil {
		return *f.cfg.Target, nil, true
	}
	c.SetReadDeadline(time.Now().Add(DefaultHeaderTimeout))
	br := bufio.NewReaderSize(io.LimitReader(c, maxHeader), maxHeader)
	line, err := br.ReadSlice('\n')
	c.SetReadDeadline(time.Time{})
	if err != nil {
		f.log.printf("refused %s: no \"CONNECT host:port\" line within %d bytes and %v: %v", c.RemoteAddr(), maxHeader, DefaultHeaderTimeout, err)
		return Endpoint{}, nil, false
	}
	word, addr, _ := strings.Cut(strings.TrimRight(string(line), "\r\n"), " ")
	if word != "CONNECT" {
		f.log.printf("refused %s: bad request %q, want \"CONNECT host:port\"", c.RemoteAddr(), line)
		return Endpoint{}, nil, false
	}
	if !f.cfg.Allow.Allowed(addr) {
		f.log.printf("refused %s: target %q is not on the allow-list %s", c.RemoteAddr(), addr, f.cfg.AllowFile)
		return Endpoint{}, nil, false
	}
	pending, _ := br.Peek(br.Buffered())
	return Endpoint{Kind: KindTCP, Addr: addr}, append([]byte(nil), pending...), true
}

// pipe copies a to b and b to a. Each direction ends at its end of stream,
// which becomes a half-close on the other side; an error in either closes
// both. A watchdog closes both when neither direction has made progress
// for IdleTimeout; the copies themselves never time out, since a timed-out
// write could drop bytes already read. The result is the first error,
// which ended the connection.
func (f *Forwarder) pipe(a, b net.Conn) error {
	idle := f.cfg.IdleTimeout
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	closeBoth := func() { a.Close(); b.Close() }
	var timedOut atomic.Bool
	var watchdog *time.Timer
	watchdog = time.AfterFunc(idle, func() {
		if since := time.Since(time.Unix(0, last.Load())); since < idle {
			watchdog.Reset(idle - since)
			return
		}
		timedOut.Store(true)
		closeBoth()
	})
	defer watchdog.Stop()
	errc := make(chan error, 2)
	go func() { errc <- f.copy(b, a, &last) }()
	go func() { errc <- f.copy(a, b, &last) }()
	var first error
	for range 2 {
		if err := <-errc; err != nil {
			if first == nil {
				first = err
			}
			closeBoth()
		}
	}
	if timedOut.Load() {
		return fmt.Errorf("idle for %v", idle)
	}
	return first
}

type closeWriter interface{ CloseWrite() error }

// copy moves src to dst until src's end of stream (then half-closes dst)
// or an error, and stores the time of each progress in last.
func (f *Forwarder) copy(dst, src net.Conn, last *atomic.Int64) error {
	// splice(2) needs a socket on both ends that the runtime knows:
	// TCPConn.ReadFrom splices from TCP and Unix sockets. Everything else
	// goes through one bounded buffer.
	tcpDst, splice := dst.(*net.TCPConn)
	switch src.(type) {
	case *net.TCPConn, *net.UnixConn:
	default:
		splice = false
	}
	if !splice {
		buf := f.bufs.Get().(*[]byte)
		defer f.bufs.Put(buf)
		_, err := io.CopyBuffer(writerOnly{dst}, progressReader{src, last}, *buf)
		if err != nil {
			return err
		}
		closeWrite(dst)
		return nil
	}
	for {
		lr := &io.LimitedReader{R: src, N: chunk}
		n, err := tcpDst.ReadFrom(lr)
		if n > 0 {
			last.Store(time.Now().UnixNano())
		}
		switch {
		case err != nil:
			return err
		case lr.N > 0:
			// End of stream: pass the half-close on.
			closeWrite(dst)
			return nil
		}
	}
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(closeWriter); ok {
		cw.CloseWrite()
	}
}

// progressReader records the time of every read that returned data.
type progressReader struct {
	r    io.Reader
	last *atomic.Int64
}

func (p progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if n > 0 {
		p.last.Store(time.Now().UnixNano())
	}
	return n, err
}

// writerOnly hides a ReadFrom method so that io.CopyBuffer uses our buffer.
type writerOnly struct{ io.Writer }
