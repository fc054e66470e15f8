package vsockdev

import (
	"encoding/binary"

	"github.com/nitroinit/nitroinit/internal/vhostuser"
)

// The queue hand-off: the vhost-user server gives the device loop the
// rings when the guest driver starts and takes them back before anything
// about them or guest memory changes. (Packets of the virtio-vsock
// control operations, REQUEST, RST and the like, are something else:
// ctrlPacket in rx.go.)

// handOffReq passes the queues to the loop (start) or takes them back
// (start nil); the server waits on done.
type handOffReq struct {
	start []*vhostuser.Queue // nil: stop
	done  chan struct{}
}

// vhostDevice adapts the Device to vhostuser.Device: the vhost-user
// server hands it the queues, and it passes them to the event loop.
type vhostDevice struct{ d *Device }

func (b vhostDevice) Features() uint64 { return 0 }
func (b vhostDevice) NumQueues() int   { return 2 }
func (b vhostDevice) Config() []byte {
	cfg := make([]byte, 8)
	binary.LittleEndian.PutUint64(cfg, uint64(b.d.cfg.GuestCID))
	return cfg
}

func (b vhostDevice) Start(qs []*vhostuser.Queue) { b.d.giveQueues(qs) }
func (b vhostDevice) Stop()                       { b.d.giveQueues(nil) }

// giveQueues hands qs to the loop, or takes the queues back when qs is
// nil, and returns once the loop has switched: after a stop the loop no
// longer touches guest memory.
func (d *Device) giveQueues(qs []*vhostuser.Queue) {
	req := handOffReq{start: qs, done: make(chan struct{})}
	select {
	case d.handOff <- req:
		<-req.done
	case <-d.loopEnd:
	}
}

// takeQueues is the loop's side of the hand-off: every stream is reset
// (the guest driver starts afresh either way), then the loop serves the
// new queues or none. The vhost-user server waits on req.done, so it is
// closed even if this panics.
func (d *Device) takeQueues(req handOffReq) {
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
