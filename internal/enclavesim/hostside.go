package enclavesim

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"

	"github.com/nitroinit/nitroinit/internal/hvsock"
	"github.com/nitroinit/nitroinit/internal/nitro"
	"github.com/nitroinit/nitroinit/internal/nsm"
	"github.com/nitroinit/nitroinit/internal/vsockdev"
)

// hostSide is the host side of a VM's vsock: the device (on the vhost-user
// route) and the parent's heartbeat listener. Start creates one before
// QEMU; a VM embeds it, so its exported methods are the VM's.
type hostSide struct {
	opts   Options
	dev    *vsockdev.Device // nil on the vhost-vsock route
	cancel context.CancelFunc
	served chan error // Serve's result

	hbLn    net.Listener
	hbOnce  sync.Once
	hbDone  chan struct{} // closed at the first good heartbeat
	hbTime  time.Time
	hbCount atomic.Int64 // good heartbeats so far
	ownDev  bool         // dev is the caller's (Options.Device): not served or closed here

	closeOnce sync.Once
	wg        sync.WaitGroup

	nsm *nsm.Module // the simulated NSM, when Options.NSM is set
}

// startHostSide starts the vsock device (vhost-user route) and the heartbeat
// listener for resolved options with Dir set. It must run before QEMU starts:
// QEMU reads the device's configuration when it sets the device up.
func startHostSide(o Options) (*hostSide, error) {
	if err := checkSocketPaths(o.Dir); err != nil {
		return nil, err
	}
	b := &hostSide{opts: o, hbDone: make(chan struct{}), served: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	b.cancel = cancel
	var err error
	switch {
	case o.Device != nil && o.Route != RouteVhostUser:
		cancel()
		return nil, fmt.Errorf("Options.Device needs the %s route, not %s", RouteVhostUser, o.Route)
	case o.Device != nil:
		b.dev, b.ownDev = o.Device, true
	case o.Route == RouteVhostUser:
		cfg := DeviceConfig(o.Dir)
		cfg.GuestCID, cfg.Logf = o.GuestCID, o.Logf
		b.dev, err = vsockdev.New(cfg)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("vsock device in %s: %w", o.Dir, err)
		}
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			defer recoverTo(o.Logf, "vsock device")
			b.served <- b.dev.Serve(ctx)
		}()
	case o.Route == RouteVhostVsock:
	default:
		cancel()
		return nil, fmt.Errorf("unknown vsock route %q", o.Route)
	}
	b.hbLn, err = b.ListenHost(nitro.HeartbeatPort)
	if err != nil {
		b.Close()
		return nil, fmt.Errorf("heartbeat listener: %w", err)
	}
	b.wg.Add(1)
	go b.acceptHeartbeats()
	if o.NSM != nil {
		if err := b.startNSM(ctx); err != nil {
			b.Close()
			return nil, err
		}
	}
	return b, nil
}

// recoverTo logs a panic of a background goroutine instead of crashing the
// test binary or the initramfs command with a half-stopped VM.
func recoverTo(logf func(string, ...any), what string) {
	if r := recover(); r != nil && logf != nil {
		logf("enclavesim: %s panicked: %v", what, r)
	}
}

// acceptHeartbeats answers every heartbeat like nitro-cli does: read 0xB7,
// write 0xB7 back. The first good one is recorded.
func (b *hostSide) acceptHeartbeats() {
	defer b.wg.Done()
	defer recoverTo(b.opts.Logf, "heartbeat listener")
	for {
		c, err := b.hbLn.Accept()
		if err != nil {
			return
		}
		at := time.Now()
		c.SetDeadline(at.Add(10 * time.Second))
		buf := make([]byte, 1)
		_, err = c.Read(buf)
		if err == nil && buf[0] != nitro.HeartbeatByte {
			err = fmt.Errorf("heartbeat byte %#x, want %#x", buf[0], nitro.HeartbeatByte)
		}
		if err == nil {
			_, err = c.Write([]byte{nitro.HeartbeatByte})
		}
		c.Close()
		if err != nil {
			b.opts.logf("enclavesim: bad heartbeat: %v", err)
			continue
		}
		b.hbOnce.Do(func() {
			b.hbTime = at
			close(b.hbDone)
		})
		b.hbCount.Add(1)
	}
}

// HeartbeatReceived returns the time of the first good heartbeat, or false
// when none has arrived yet.
func (b *hostSide) HeartbeatReceived() (time.Time, bool) {
	select {
	case <-b.hbDone:
		return b.hbTime, true
	default:
		return time.Time{}, false
	}
}

// Heartbeats is how many good heartbeats the listener has answered: a
// guest that reboots (Options.Reboot) or reloads its vsock driver sends
// another.
func (b *hostSide) Heartbeats() int { return int(b.hbCount.Load()) }

// HostCID is the CID the guest must dial to reach the host (heartbeat
// vsock.cid in init.yaml): 3 on the vhost-user route, 2 on vhost-vsock.
func (b *hostSide) HostCID() uint32 { return HostCIDFor(b.opts.Route) }

// GuestCID is the guest's CID.
func (b *hostSide) GuestCID() uint32 { return b.opts.GuestCID }

// Route is the vsock route in use.
func (b *hostSide) Route() string { return b.opts.Route }

// HybridSocket is the hybrid vsock socket (`initctl --vsock-uds` takes it),
// "" on the vhost-vsock route, where hosts use AF_VSOCK to GuestCID.
func (b *hostSide) HybridSocket() string {
	if b.opts.Route == RouteVhostVsock {
		return ""
	}
	return hybridSocketPath(b.opts.Dir)
}

// DialOnce connects to the guest's port once: through the hybrid socket, or
// AF_VSOCK on the vhost-vsock route.
func (b *hostSide) DialOnce(ctx context.Context, port uint32) (net.Conn, error) {
	if b.opts.Route == RouteVhostVsock {
		c, err := vsock.Dial(b.opts.GuestCID, port, nil)
		if err != nil {
			return nil, fmt.Errorf("vsock %d:%d: %w", b.opts.GuestCID, port, err)
		}
		return c, nil
	}
	return hvsock.Dial(ctx, hybridSocketPath(b.opts.Dir), port)
}

// ListenHost listens for guest connections to the host's port: the Unix
// socket P_port on the vhost-user route, AF_VSOCK on vhost-vsock.
func (b *hostSide) ListenHost(port uint32) (net.Listener, error) {
	if b.opts.Route == RouteVhostVsock {
		// Any CID: asking the local CID first can give the loopback's.
		l, err := vsock.ListenContextID(unix.VMADDR_CID_ANY, port, nil)
		if err != nil {
			return nil, fmt.Errorf("AF_VSOCK listen on host port %d (another simulator running?): %w", port, err)
		}
		return l, nil
	}
	p := hvsock.ListenPath(hybridSocketPath(b.opts.Dir), port)
	l, err := net.Listen("unix", p)
	if err != nil {
		return nil, fmt.Errorf("host port %d: %w", port, err)
	}
	return l, nil
}

// Stats returns the device's counters (zero on the vhost-vsock route).
func (b *hostSide) Stats() vsockdev.Stats {
	if b.dev == nil {
		return vsockdev.Stats{}
	}
	return b.dev.Stats()
}

// Close stops the heartbeat listener and the device. Call it after QEMU has
// exited: QEMU 7.2 does not survive its vhost-user device going away.
func (b *hostSide) Close() error {
	var err error
	b.closeOnce.Do(func() {
		if b.hbLn != nil {
			b.hbLn.Close()
			if b.opts.Route == RouteVhostUser {
				os.Remove(hvsock.ListenPath(hybridSocketPath(b.opts.Dir), nitro.HeartbeatPort))
			}
		}
		b.cancel()
		if b.dev != nil && !b.ownDev {
			err = b.dev.Close()
		}
		b.wg.Wait()
		select {
		case serr := <-b.served:
			// The device ends when QEMU has gone; what it says then is
			// diagnostics, not a failure of Close.
			if serr != nil && !errors.Is(serr, context.Canceled) {
				b.opts.logf("enclavesim: vsock device: %v", serr)
			}
		default:
		}
	})
	return err
}
