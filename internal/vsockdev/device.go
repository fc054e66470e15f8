// Package vsockdev is a virtio-vsock device served to QEMU through
// vhost-user, with the "hybrid vsock" host side of Firecracker and Cloud
// Hypervisor: host programs reach guest ports through one Unix socket, and
// guest connections to the host arrive on per-port Unix sockets.
//
// All stream state lives in one goroutine (the device loop); host sockets
// are served by a reader and a writer goroutine per stream that talk to the
// loop through channels. Guest memory is touched only by the loop, and only
// between the vhost-user server's Start and Stop.
package vsockdev

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nitroinit/nitroinit/internal/hvsock"
	"github.com/nitroinit/nitroinit/internal/vhostuser"
)

// Well-known CIDs.
const (
	// DefaultGuestCID is the CID of the first Nitro enclave.
	DefaultGuestCID = 16
	// ParentCID is the CID of the Nitro parent instance; host-initiated
	// streams come from it by default.
	ParentCID = 3
)

// Config describes a device.
type Config struct {
	// VhostUserSocket is the path of the vhost-user socket the backend
	// listens on; QEMU's -chardev socket,path= connects to it.
	VhostUserSocket string
	// HybridSocket is the hybrid vsock socket P: host clients connect to it
	// and write "CONNECT <port>\n"; guest connections to host port N go to
	// P_N.
	HybridSocket string
	// GuestCID is the guest's CID (device config space); 0 means 16.
	GuestCID uint32
	// HostCID is the CID host-initiated streams appear to come from in the
	// guest; 0 means 3, the Nitro parent.
	HostCID uint32
	// ConnectTimeout bounds the wait for the guest to accept a host
	// connection, and for the hybrid client to send its CONNECT line; 0
	// means 10 s.
	ConnectTimeout time.Duration
	// Logf receives diagnostics (never one line per packet); nil discards.
	Logf func(format string, args ...any)
}

// Stats are cumulative counters, for benchmarks and tests.
type Stats struct {
	// HostConnections counts streams opened from the host side.
	HostConnections uint64
	// GuestConnections counts streams the guest opened to the host.
	GuestConnections uint64
	// Active is the number of streams in the table now.
	Active int64
	// BytesToGuest and BytesFromGuest count stream payload.
	BytesToGuest   uint64
	BytesFromGuest uint64
	// Resets counts transport resets (driver stop, guest reboot, QEMU
	// gone).
	Resets uint64
	// Overruns counts guest packets refused with RST because they claimed
	// more than maxPacketLen (64 KiB) of payload or more than the stream's
	// credit (256 KiB less what still waits for the host socket).
	Overruns uint64
}

// maxPacketLen bounds the payload of one guest packet: Linux's
// VIRTIO_VSOCK_MAX_PKT_BUF_SIZE, the most any driver puts in one. A longer
// claim resets the stream whatever the descriptors hold.
const maxPacketLen = 64 << 10

// bufAlloc is the receive buffer each stream advertises to the guest: the
// guest never has more than this in flight towards one host socket, which
// bounds the memory a slow host client can pin.
const bufAlloc = 256 << 10

// ctrlLimit bounds queued control packets; past it the loop stops taking
// guest packets until the guest posts receive buffers (backpressure, like
// Linux vhost-vsock).
const ctrlLimit = 1024

// maxStreams bounds the stream table, and with it the goroutines and
// buffers a guest or host clients can make the device hold.
const maxStreams = 4096

// firstHostPort is where host-side port numbers for host-initiated streams
// start, as in Firecracker.
const firstHostPort = 1 << 30

// Device is a virtio-vsock device with a hybrid-vsock host side.
type Device struct {
	cfg     Config
	logf    func(string, ...any)
	vu      *vhostuser.Server
	hybrid  *net.UnixListener
	events  chan event
	ctl     chan ctlReq
	quit    chan struct{} // closed by Close
	loopEnd chan struct{} // closed when the loop has exited
	once    sync.Once
	served  atomic.Bool

	hostConns, guestConns, toGuest, fromGuest, resets, overruns atomic.Uint64
	active                                                      atomic.Int64

	// Loop state.
	rxq, txq *vhostuser.Queue
	conns    map[connKey]*conn
	ctrl     []ctrlPkt
	ready    []*conn
	nextPort uint32
	chain    vhostuser.Chain
	panics   int // consecutive loop turns that panicked
	hdrBuf   [hdrSize]byte
	warned   map[string]bool

	// spawn starts the loop's helper goroutines (dial, reader, writer);
	// the fuzz test replaces it to keep runs deterministic.
	spawn func(func())
}

type ctrlPkt struct {
	c   *conn // for buf_alloc/fwd_cnt; nil for replies to unknown streams
	hdr header
}

type ctlReq struct {
	start []*vhostuser.Queue // nil: stop
	done  chan struct{}
}

type evKind int

const (
	evHostConnect evKind = iota
	evDialDone
	evHostData
	evHostEOF
	evHostReadErr
	evWritten
	evWriteErr
	evConnectTimeout
)

type event struct {
	kind evKind
	c    *conn
	uc   net.Conn
	br   *bufio.Reader
	port uint32
	data []byte
	n    int
	err  error
}

// New creates the vhost-user socket and the hybrid socket, so QEMU and host
// clients can connect as soon as it returns. Serve must run for either to
// be answered.
func New(cfg Config) (*Device, error) {
	if cfg.VhostUserSocket == "" || cfg.HybridSocket == "" {
		return nil, errors.New("vsockdev: Config.VhostUserSocket and Config.HybridSocket are required")
	}
	d, err := newDevice(cfg)
	if err != nil {
		return nil, err
	}
	cfg = d.cfg
	if fi, err := os.Lstat(cfg.HybridSocket); err == nil && fi.Mode()&os.ModeSocket != 0 {
		os.Remove(cfg.HybridSocket)
	}
	hl, err := net.ListenUnix("unix", &net.UnixAddr{Name: cfg.HybridSocket, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("vsockdev: hybrid socket %s: %w", cfg.HybridSocket, err)
	}
	hl.SetUnlinkOnClose(true)
	d.hybrid = hl
	vu, err := vhostuser.Listen(cfg.VhostUserSocket, backend{d}, d.logf)
	if err != nil {
		hl.Close()
		return nil, fmt.Errorf("vsockdev: %w", err)
	}
	d.vu = vu
	return d, nil
}

// newDevice checks cfg, fills in defaults and builds the device's state,
// without sockets: New adds them; the fuzz test drives the loop's packet
// handling directly.
func newDevice(cfg Config) (*Device, error) {
	if cfg.GuestCID == 0 {
		cfg.GuestCID = DefaultGuestCID
	}
	if cfg.HostCID == 0 {
		cfg.HostCID = ParentCID
	}
	if cfg.GuestCID <= 2 || cfg.GuestCID == cfg.HostCID || cfg.GuestCID >= 0xffffffff {
		return nil, fmt.Errorf("vsockdev: guest CID %d is reserved or equals the host CID %d; use 3 or more, different from the host's", cfg.GuestCID, cfg.HostCID)
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	d := &Device{
		cfg:      cfg,
		logf:     cfg.Logf,
		events:   make(chan event, 256),
		ctl:      make(chan ctlReq),
		quit:     make(chan struct{}),
		loopEnd:  make(chan struct{}),
		conns:    make(map[connKey]*conn),
		nextPort: firstHostPort,
		warned:   make(map[string]bool),
		spawn:    func(f func()) { go f() },
	}
	if d.logf == nil {
		d.logf = func(string, ...any) {}
	}
	return d, nil
}

// Stats returns the counters.
func (d *Device) Stats() Stats {
	return Stats{
		HostConnections:  d.hostConns.Load(),
		GuestConnections: d.guestConns.Load(),
		Active:           d.active.Load(),
		BytesToGuest:     d.toGuest.Load(),
		BytesFromGuest:   d.fromGuest.Load(),
		Resets:           d.resets.Load(),
		Overruns:         d.overruns.Load(),
	}
}

// Serve runs the device until ctx ends or Close is called: it serves QEMU
// (one at a time; when one disconnects every stream is reset and the next
// is accepted) and the hybrid socket. It may be called once.
func (d *Device) Serve(ctx context.Context) error {
	if !d.served.CompareAndSwap(false, true) {
		return errors.New("vsockdev: Serve called twice")
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		d.loop()
	}()
	go func() {
		defer wg.Done()
		d.acceptHybrid()
	}()
	vuErr := make(chan error, 1)
	go func() {
		defer d.recoverGo("vhost-user server")
		vuErr <- d.vu.Serve(context.Background())
	}()
	var err error
	select {
	case <-ctx.Done():
	case <-d.quit:
	case err = <-vuErr:
		vuErr <- err
	}
	d.Close()
	if e := <-vuErr; e != nil && err == nil {
		err = e
	}
	wg.Wait()
	return err
}

// Close shuts the device down: QEMU's connection and every stream are
// closed and both socket files removed.
func (d *Device) Close() error {
	d.once.Do(func() {
		close(d.quit)
		d.hybrid.Close()
		d.vu.Close()
		if !d.served.Load() {
			close(d.loopEnd)
		}
	})
	return nil
}

func (d *Device) recoverGo(what string) {
	if r := recover(); r != nil {
		d.logf("vsockdev: %s panic: %v\n%s", what, r, debug.Stack())
	}
}

// post hands an event to the loop; it gives up once the loop is gone.
func (d *Device) post(ev event) {
	select {
	case d.events <- ev:
	case <-d.loopEnd:
		if ev.kind == evHostConnect || ev.kind == evDialDone {
			if ev.uc != nil {
				ev.uc.Close()
			}
		}
	}
}

// warnOnce logs a guest misbehaviour the first time it is seen per kind,
// so that a broken guest cannot flood the log.
func (d *Device) warnOnce(kind, format string, args ...any) {
	if d.warned[kind] {
		return
	}
	d.warned[kind] = true
	d.logf("vsockdev: "+format+" (further %s messages suppressed)", append(args, kind)...)
}

// backend adapts the device to vhostuser.Backend.
type backend struct{ d *Device }

func (b backend) Features() uint64 { return 0 }
func (b backend) NumQueues() int   { return 2 }
func (b backend) Config() []byte {
	cfg := make([]byte, 8)
	binary.LittleEndian.PutUint64(cfg, uint64(b.d.cfg.GuestCID))
	return cfg
}
func (b backend) Start(qs []*vhostuser.Queue) { b.d.control(qs) }
func (b backend) Stop()                       { b.d.control(nil) }

func (d *Device) control(qs []*vhostuser.Queue) {
	req := ctlReq{start: qs, done: make(chan struct{})}
	select {
	case d.ctl <- req:
		<-req.done
	case <-d.loopEnd:
	}
}

// acceptHybrid accepts host clients on P and reads their CONNECT line.
func (d *Device) acceptHybrid() {
	defer d.recoverGo("hybrid accept")
	for {
		uc, err := d.hybrid.Accept()
		if err != nil {
			select {
			case <-d.quit:
				return
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			d.logf("vsockdev: hybrid socket %s: accept: %v", d.cfg.HybridSocket, err)
			// Out of fds and the like: back off instead of spinning.
			select {
			case <-time.After(100 * time.Millisecond):
			case <-d.quit:
				return
			}
			continue
		}
		go d.handshake(uc)
	}
}

func (d *Device) handshake(uc net.Conn) {
	defer d.recoverGo("hybrid handshake")
	// Close must not wait for a slow client's CONNECT line.
	read := make(chan struct{})
	defer close(read)
	go func() {
		defer d.recoverGo("hybrid handshake watcher")
		select {
		case <-d.quit:
			uc.SetReadDeadline(time.Unix(1, 0))
		case <-read:
		}
	}()
	uc.SetReadDeadline(time.Now().Add(d.cfg.ConnectTimeout))
	br := bufio.NewReaderSize(uc, readChunk)
	port, err := hvsock.ReadConnect(br)
	if err != nil {
		d.logf("vsockdev: hybrid client on %s: %v", d.cfg.HybridSocket, err)
		uc.Close()
		return
	}
	uc.SetReadDeadline(time.Time{})
	d.post(event{kind: evHostConnect, uc: uc, br: br, port: port})
}

// dial connects a guest stream to P_port on the host.
func (d *Device) dial(c *conn, port uint32) {
	defer d.recoverGo("dial")
	path := hvsock.ListenPath(d.cfg.HybridSocket, port)
	uc, err := net.DialTimeout("unix", path, d.cfg.ConnectTimeout)
	d.post(event{kind: evDialDone, c: c, uc: uc, err: err})
}

// loop owns all stream state and the queues.
func (d *Device) loop() {
	defer close(d.loopEnd)
	// A fault on guest memory (a mapping QEMU truncated) becomes a panic
	// that step recovers from, instead of killing the process.
	debug.SetPanicOnFault(true)
	defer d.reset(false)
	for {
		if !d.step() {
			return
		}
	}
}

// step waits for one thing to happen and handles it, then serves the
// queues. A panic resets every stream instead of killing the device.
func (d *Device) step() (cont bool) {
	defer func() {
		if r := recover(); r != nil {
			d.logf("vsockdev: device loop panic (all streams reset): %v\n%s", r, debug.Stack())
			d.reset(true)
			d.panics++
			if d.panics >= 3 && d.rxq != nil {
				// Panicking on every turn (a fault on guest memory):
				// leave the queues alone until the driver restarts.
				d.logf("vsockdev: device loop keeps panicking: queues detached until the guest driver restarts")
				d.rxq, d.txq = nil, nil
			}
			cont = true
			return
		}
		d.panics = 0
	}()
	var rxKick, txKick <-chan struct{}
	if d.rxq != nil {
		rxKick, txKick = d.rxq.Kick(), d.txq.Kick()
	}
	select {
	case <-d.quit:
		return false
	case req := <-d.ctl:
		d.startStop(req)
	case <-rxKick:
	case <-txKick:
	case ev := <-d.events:
		d.handleEvent(ev)
		// Take what else is waiting before touching the rings again.
		for i := 0; i < 64; i++ {
			select {
			case ev := <-d.events:
				d.handleEvent(ev)
				continue
			default:
			}
			break
		}
	}
	d.serviceQueues()
	return true
}

// startStop takes or gives back the queues. The vhost-user server waits on
// req.done, so it is closed even if this panics.
func (d *Device) startStop(req ctlReq) {
	defer close(req.done)
	n := len(d.conns)
	d.rxq, d.txq = nil, nil
	d.reset(true)
	if len(req.start) == 2 {
		d.rxq, d.txq = req.start[0], req.start[1]
		d.logf("vsockdev: guest driver started (CID %d)", d.cfg.GuestCID)
	} else {
		d.logf("vsockdev: guest driver stopped, %d streams reset", n)
	}
}

// reset drops every stream: a transport reset (guest driver stopped, guest
// rebooted, QEMU gone) or shutdown. Nothing is sent to the guest.
func (d *Device) reset(count bool) {
	if count && len(d.conns) > 0 {
		d.resets.Add(1)
	}
	for _, c := range d.conns {
		d.abort(c)
	}
	d.ctrl = d.ctrl[:0]
	d.ready = d.ready[:0]
}

// abort forgets c and closes its host socket at once.
func (d *Device) abort(c *conn) {
	if c.state == stClosed {
		return
	}
	d.forget(c)
	if c.uc != nil {
		c.uc.Close()
	}
}

// closeGracefully forgets c but lets its writer flush what the guest sent
// before closing the host socket.
func (d *Device) closeGracefully(c *conn) {
	if c.state == stClosed {
		return
	}
	wasConnected := c.state == stConnected
	d.forget(c)
	if c.uc == nil {
		return
	}
	if !wasConnected {
		c.uc.Close()
		return
	}
	c.wbuf.mu.Lock()
	c.wbuf.closeAll = true
	c.wbuf.mu.Unlock()
	// A client that stopped reading must not pin the writer (and the
	// buffer) forever: a write already blocked is bounded too.
	c.uc.SetWriteDeadline(time.Now().Add(flushTimeout))
	c.wbuf.signal()
}

func (d *Device) forget(c *conn) {
	c.state = stClosed
	delete(d.conns, c.key)
	d.active.Add(-1)
	if c.timer != nil {
		c.timer.Stop()
	}
	close(c.done)
}

func (d *Device) newConn(key connKey, st connState, uc net.Conn, br *bufio.Reader) *conn {
	c := &conn{key: key, state: st, uc: uc, br: br, resume: make(chan struct{}, 1), done: make(chan struct{})}
	c.wbuf.wake = make(chan struct{}, 1)
	d.conns[key] = c
	d.active.Add(1)
	return c
}

// established starts the goroutines of a stream that just connected.
func (d *Device) established(c *conn, preamble []byte) {
	c.state = stConnected
	if c.timer != nil {
		c.timer.Stop()
	}
	d.spawn(func() { d.writer(c, preamble) })
	d.spawn(func() { d.reader(c) })
}

func (d *Device) handleEvent(ev event) {
	c := ev.c
	if ev.kind == evHostConnect {
		d.hostConnect(ev)
		return
	}
	if ev.kind == evDialDone {
		if c.state != stDialing {
			if ev.uc != nil {
				ev.uc.Close()
			}
			return
		}
		if ev.err != nil {
			d.queueRST(c)
			d.abort(c)
			return
		}
		c.uc = ev.uc
		d.guestConns.Add(1)
		d.established(c, nil)
		d.queueCtrl(c, opResponse, 0)
		return
	}
	if c.state == stClosed {
		// The reader waits on c.done, which is closed; nothing to do.
		return
	}
	switch ev.kind {
	case evHostData:
		if c.guestNoRecv {
			c.resume <- struct{}{}
			return
		}
		c.pending = ev.data
		d.markReady(c)
	case evHostEOF:
		c.hostEOF = true
		d.markReady(c)
	case evHostReadErr:
		if !isQuietNetErr(ev.err) {
			d.logf("vsockdev: %v: reading host socket: %v", c.key, ev.err)
		}
		d.queueRST(c)
		d.abort(c)
	case evWritten:
		c.fwdCnt += uint64(ev.n)
		d.maybeCreditUpdate(c)
	case evWriteErr:
		if !isQuietNetErr(ev.err) {
			d.logf("vsockdev: %v: writing host socket: %v", c.key, ev.err)
		}
		d.queueRST(c)
		d.abort(c)
	case evConnectTimeout:
		if c.state == stConnecting {
			d.logf("vsockdev: guest did not answer a connection to port %d within %v", c.key.guestPort, d.cfg.ConnectTimeout)
			d.queueRST(c)
			d.abort(c)
		}
	}
}

func (d *Device) hostConnect(ev event) {
	if d.rxq == nil {
		// No driver: nobody can accept. The client sees EOF without OK.
		ev.uc.Close()
		return
	}
	if len(d.conns) >= maxStreams {
		d.warnOnce("streams", "%d streams open: refusing new ones", maxStreams)
		ev.uc.Close()
		return
	}
	key := connKey{hostCID: uint64(d.cfg.HostCID), guestPort: ev.port}
	for i := 0; ; i++ {
		key.hostPort = d.nextPort
		d.nextPort++
		if d.nextPort == 0 {
			d.nextPort = firstHostPort
		}
		if _, busy := d.conns[key]; !busy {
			break
		}
		if i > 1<<20 {
			ev.uc.Close()
			return
		}
	}
	c := d.newConn(key, stConnecting, ev.uc, ev.br)
	d.hostConns.Add(1)
	c.timer = time.AfterFunc(d.cfg.ConnectTimeout, func() { d.post(event{kind: evConnectTimeout, c: c}) })
	d.queueCtrl(c, opRequest, 0)
}

func (d *Device) markReady(c *conn) {
	if !c.inReady && c.sendable() {
		c.inReady = true
		d.ready = append(d.ready, c)
	}
}

// maybeCreditUpdate tells the guest about freed buffer space once the
// guest's own view of it runs low: when the bytes it believes still in
// flight (received minus the fwd_cnt it last heard) reach half the
// buffer. Every packet to the guest carries fwd_cnt too, so request/reply
// traffic needs no extra packets, while a one-way stream gets an update
// about every half buffer and can never stall: a guest out of credit has
// a full buffer in flight, and the next write completion reports it.
func (d *Device) maybeCreditUpdate(c *conn) {
	if c.creditQueued || c.guestNoSend || c.fwdCnt == c.lastFwdSent {
		return
	}
	if c.rxCnt-c.lastFwdSent >= bufAlloc/2 {
		c.creditQueued = true
		d.queueCtrl(c, opCreditUpdate, 0)
	}
}

func (d *Device) queueCtrl(c *conn, op uint16, flags uint32) {
	d.ctrl = append(d.ctrl, ctrlPkt{c: c, hdr: header{
		SrcCID: c.key.hostCID, DstCID: uint64(d.cfg.GuestCID),
		SrcPort: c.key.hostPort, DstPort: c.key.guestPort,
		Type: typeStream, Op: op, Flags: flags,
	}})
}

func (d *Device) queueRST(c *conn) { d.queueCtrl(c, opRST, 0) }

// rstReply answers a guest packet that belongs to no stream.
func (d *Device) rstReply(h header) {
	if h.Op == opRST || len(d.ctrl) >= 4*ctrlLimit {
		return
	}
	d.ctrl = append(d.ctrl, ctrlPkt{hdr: header{
		SrcCID: h.DstCID, DstCID: h.SrcCID, SrcPort: h.DstPort, DstPort: h.SrcPort,
		Type: typeStream, Op: opRST,
	}})
}

// serviceQueues takes the guest's packets and fills its receive buffers.
func (d *Device) serviceQueues() {
	if d.rxq == nil {
		return
	}
	d.processTx()
	d.fillRx()
	d.rxq.Notify()
	d.txq.Notify()
}

func (d *Device) processTx() {
	for len(d.ctrl) < ctrlLimit {
		ok, err := d.txq.Pop(&d.chain)
		if err != nil {
			d.warnOnce("txchain", "guest tx queue: %v", err)
			if errors.Is(err, vhostuser.ErrRingBroken) {
				return
			}
			continue
		}
		if !ok {
			return
		}
		d.handlePacket(&d.chain)
		d.txq.Push(d.chain.Head, 0)
	}
}

func (d *Device) handlePacket(ch *vhostuser.Chain) {
	sc := newScatter(ch.Readable)
	if sc.read(d.hdrBuf[:]) < hdrSize {
		d.warnOnce("short", "guest sent a packet shorter than the %d-byte header", hdrSize)
		return
	}
	h := decodeHeader(d.hdrBuf[:])
	if h.SrcCID != uint64(d.cfg.GuestCID) {
		d.warnOnce("srccid", "guest packet with source CID %d, want %d: dropped (%v)", h.SrcCID, d.cfg.GuestCID, h)
		return
	}
	if h.Op == opRW && h.Len > maxPacketLen {
		// Larger than any driver sends (Linux: 64 KiB): refused before
		// anything is sized by it, and the stream is reset.
		d.overruns.Add(1)
		d.warnOnce("maxlen", "guest packet claims %d payload bytes, more than the %d a packet may carry: stream reset (%v)", h.Len, maxPacketLen, h)
		if c := d.conns[streamKey(h)]; c != nil && h.Type == typeStream {
			d.queueRST(c)
			d.abort(c)
		} else {
			d.rstReply(h)
		}
		return
	}
	if h.Op == opRW && int(h.Len) > ch.ReadableLen()-hdrSize {
		d.warnOnce("len", "guest packet claims %d payload bytes but carries %d: dropped (%v)", h.Len, ch.ReadableLen()-hdrSize, h)
		return
	}
	if h.Type != typeStream || h.DstCID == uint64(d.cfg.GuestCID) {
		d.rstReply(h)
		return
	}
	key := streamKey(h)
	c := d.conns[key]
	if c == nil {
		if h.Op == opRequest && len(d.conns) >= maxStreams {
			d.warnOnce("streams", "%d streams open: refusing new ones", maxStreams)
			d.rstReply(h)
			return
		}
		if h.Op == opRequest {
			c = d.newConn(key, stDialing, nil, nil)
			c.peerBufAlloc, c.peerFwdCnt = h.BufAlloc, h.FwdCnt
			d.spawn(func() { d.dial(c, h.DstPort) })
			return
		}
		d.rstReply(h)
		return
	}
	c.peerBufAlloc, c.peerFwdCnt = h.BufAlloc, h.FwdCnt
	switch h.Op {
	case opRequest:
		d.rstReply(h)
		d.abort(c)
	case opResponse:
		if c.state != stConnecting {
			d.queueRST(c)
			d.abort(c)
			return
		}
		d.established(c, []byte("OK "+strconv.FormatUint(uint64(c.key.hostPort), 10)+"\n"))
	case opRST:
		d.closeGracefully(c)
	case opShutdown:
		if h.Flags&shutdownRcv != 0 && !c.guestNoRecv {
			c.guestNoRecv = true
			if len(c.pending) > 0 {
				c.pending = nil
				c.resume <- struct{}{}
			}
		}
		if h.Flags&shutdownSend != 0 {
			c.guestNoSend = true
			c.wbuf.mu.Lock()
			c.wbuf.closeWrite = true
			c.wbuf.mu.Unlock()
			c.wbuf.signal()
		}
		if c.guestNoRecv && c.guestNoSend {
			d.queueRST(c)
			d.closeGracefully(c)
		}
	case opRW:
		if c.state != stConnected || c.guestNoSend {
			d.queueRST(c)
			d.abort(c)
			return
		}
		// 64-bit sum: a guest-supplied length cannot wrap it.
		if c.buffered()+uint64(h.Len) > bufAlloc {
			d.overruns.Add(1)
			d.warnOnce("credit", "guest overran the credit of %v (%d buffered + %d > %d): stream reset", c.key, c.buffered(), h.Len, bufAlloc)
			d.queueRST(c)
			d.abort(c)
			return
		}
		if h.Len > 0 {
			c.wbuf.mu.Lock()
			c.wbuf.data, _ = sc.appendTo(c.wbuf.data, int(h.Len))
			c.wbuf.mu.Unlock()
			c.wbuf.signal()
			c.rxCnt += uint64(h.Len)
			d.fromGuest.Add(uint64(h.Len))
		}
	case opCreditUpdate:
	case opCreditRequest:
		if !c.creditQueued {
			c.creditQueued = true
			d.queueCtrl(c, opCreditUpdate, 0)
		}
	default:
		d.queueRST(c)
		d.abort(c)
		return
	}
	d.markReady(c)
}

// fillRx writes control packets and stream data into the guest's receive
// buffers, streams taking turns one packet at a time.
func (d *Device) fillRx() {
	for {
		for len(d.ready) > 0 && !d.ready[0].sendable() {
			d.ready[0].inReady = false
			d.ready = d.ready[1:]
		}
		// Control packets of streams closed since they were queued are
		// dropped, except the RST that announces the closing.
		for len(d.ctrl) > 0 && d.ctrl[0].c != nil && d.ctrl[0].c.state == stClosed && d.ctrl[0].hdr.Op != opRST {
			if d.ctrl[0].hdr.Op == opCreditUpdate {
				d.ctrl[0].c.creditQueued = false
			}
			d.ctrl = d.ctrl[1:]
		}
		if len(d.ctrl) == 0 && len(d.ready) == 0 {
			break
		}
		ok, err := d.rxq.Pop(&d.chain)
		if err != nil {
			d.warnOnce("rxchain", "guest rx queue: %v", err)
			if errors.Is(err, vhostuser.ErrRingBroken) {
				return
			}
			continue
		}
		if !ok {
			break
		}
		room := d.chain.WritableLen()
		if room < hdrSize {
			d.warnOnce("rxsmall", "guest receive buffer of %d bytes cannot hold a header", room)
			d.rxq.Push(d.chain.Head, 0)
			continue
		}
		sc := newScatter(d.chain.Writable)
		if len(d.ctrl) > 0 {
			p := d.ctrl[0]
			d.ctrl[0] = ctrlPkt{}
			d.ctrl = d.ctrl[1:]
			if p.c != nil {
				p.hdr.BufAlloc, p.hdr.FwdCnt = bufAlloc, uint32(p.c.fwdCnt)
				p.c.lastFwdSent = p.c.fwdCnt
				if p.hdr.Op == opCreditUpdate {
					p.c.creditQueued = false
				}
			}
			p.hdr.encode(d.hdrBuf[:])
			sc.write(d.hdrBuf[:])
			d.rxq.Push(d.chain.Head, hdrSize)
			continue
		}
		c := d.ready[0]
		d.ready = d.ready[1:]
		c.inReady = false
		written := d.sendData(c, &sc, room-hdrSize)
		d.rxq.Push(d.chain.Head, uint32(written))
		d.markReady(c)
	}
	if len(d.ctrl) == 0 {
		d.ctrl = nil // let a burst's backing array go
	}
}

// sendData writes one packet of c into a receive buffer with room payload
// bytes: data within the guest's credit, or the SHUTDOWN that follows the
// host's EOF.
func (d *Device) sendData(c *conn, sc *scatter, room int) int {
	h := header{
		SrcCID: c.key.hostCID, DstCID: uint64(d.cfg.GuestCID),
		SrcPort: c.key.hostPort, DstPort: c.key.guestPort,
		Type: typeStream, BufAlloc: bufAlloc, FwdCnt: uint32(c.fwdCnt),
	}
	c.lastFwdSent = c.fwdCnt
	if len(c.pending) == 0 {
		h.Op, h.Flags = opShutdown, shutdownSend
		c.shutSent = true
		h.encode(d.hdrBuf[:])
		sc.write(d.hdrBuf[:])
		return hdrSize
	}
	n := min(len(c.pending), int(c.credit()), room)
	h.Op, h.Len = opRW, uint32(n)
	h.encode(d.hdrBuf[:])
	sc.write(d.hdrBuf[:])
	sc.write(c.pending[:n])
	c.pending = c.pending[n:]
	c.txCnt += uint64(n)
	d.toGuest.Add(uint64(n))
	if len(c.pending) == 0 {
		c.pending = nil
		c.resume <- struct{}{}
	}
	return hdrSize + n
}
