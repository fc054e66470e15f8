package vsockdev

import (
	"encoding/binary"

	"github.com/nitroinit/nitroinit/internal/vhostuser"
)

// The queue hand-off: the vhost-user server gives the device loop the
// rings when the guest driver starts and takes them back before anything
// about them or guest memory changes.

type ctlReq struct {
	start []*vhostuser.Queue // nil: stop
	done  chan struct{}
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
