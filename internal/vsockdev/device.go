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
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

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
	// VhostUserSocket is the path of the vhost-user socket the device
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

// maxHandshakes bounds the hybrid clients that have connected but not yet
// sent their CONNECT line.
const maxHandshakes = 256

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
	handOff chan handOffReq // queues from the vhost-user server (handoff.go)
	quit    chan struct{}   // closed by Close
	loopEnd chan struct{}   // closed when the loop has exited
	once    sync.Once
	served  atomic.Bool

	handshakes chan struct{} // one token per pending hybrid handshake
	warnHybrid sync.Once

	hostConns, guestConns, toGuest, fromGuest, resets, overruns atomic.Uint64
	active                                                      atomic.Int64

	// Loop state.
	rxq, txq    *vhostuser.Queue
	conns       map[connKey]*conn
	pendingCtrl []ctrlPacket // control packets waiting for a receive buffer (rx.go)
	ready       []*conn      // streams with data or a SHUTDOWN for the guest
	nextPort    uint32
	chain       vhostuser.Chain
	panics      int // consecutive loop turns that panicked
	hdrBuf      [hdrSize]byte
	warned      map[string]bool

	// spawn starts the loop's helper goroutines (dial, reader, writer);
	// the fuzz test replaces it to keep runs deterministic.
	spawn func(func())
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
	vu, err := vhostuser.Listen(cfg.VhostUserSocket, vhostDevice{d}, d.logf)
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
		cfg:        cfg,
		logf:       cfg.Logf,
		events:     make(chan event, 256),
		handOff:    make(chan handOffReq),
		quit:       make(chan struct{}),
		loopEnd:    make(chan struct{}),
		conns:      make(map[connKey]*conn),
		nextPort:   firstHostPort,
		warned:     make(map[string]bool),
		spawn:      func(f func()) { go f() },
		handshakes: make(chan struct{}, maxHandshakes),
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
// is accepted) and the hybrid socket. It may be called once, and not
// after Close.
func (d *Device) Serve(ctx context.Context) error {
	if !d.served.CompareAndSwap(false, true) {
		return errors.New("vsockdev: Serve called twice, or after Close")
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
		// Claim served, so that a Serve that has not started yet (its
		// goroutine scheduled late on a busy machine) never starts the
		// loop, which would close loopEnd a second time.
		if d.served.CompareAndSwap(false, true) {
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
