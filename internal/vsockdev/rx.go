package vsockdev

import (
	"errors"

	"github.com/nitroinit/nitroinit/internal/vhostuser"
)

// The receive queue: packets the device puts in the guest's receive
// buffers (host to guest), control packets first, then stream data.

// ctrlPacket is a virtio-vsock control packet (REQUEST, RESPONSE, RST,
// CREDIT_UPDATE) waiting in pendingCtrl for a receive buffer; SHUTDOWN
// goes with the stream's data instead (sendData), after it. Not to be
// confused with the queue hand-off (handOffReq).
type ctrlPacket struct {
	c   *conn // for buf_alloc/fwd_cnt; nil for replies to unknown streams
	hdr header
}

// queueCtrl queues a control packet of c for the guest; buf_alloc and
// fwd_cnt are filled in when it is written, so they are current.
func (d *Device) queueCtrl(c *conn, op uint16, flags uint32) {
	d.pendingCtrl = append(d.pendingCtrl, ctrlPacket{c: c, hdr: header{
		SrcCID: c.key.hostCID, DstCID: uint64(d.cfg.GuestCID),
		SrcPort: c.key.hostPort, DstPort: c.key.guestPort,
		Type: typeStream, Op: op, Flags: flags,
	}})
}

func (d *Device) queueRST(c *conn) { d.queueCtrl(c, opRST, 0) }

// fillRx owns the rx ring: it writes control packets and stream data into
// the guest's receive buffers, pendingCtrl first, then streams from ready
// taking turns one packet at a time, until the ring has no buffers or
// nothing is left to send. It is the only writer of guest memory, and it
// decides what each stream may send: sendData stays within the guest's
// credit and the buffer's size. It reports whether it stopped for want of
// receive buffers with something still to send (starved).
func (d *Device) fillRx() (starved bool) {
	for {
		for len(d.ready) > 0 && !d.ready[0].sendable() {
			d.ready[0].inReady = false
			d.ready = d.ready[1:]
		}
		// Control packets of streams closed since they were queued are
		// dropped, except the RST that announces the closing.
		for len(d.pendingCtrl) > 0 && d.pendingCtrl[0].c != nil && d.pendingCtrl[0].c.state == stClosed && d.pendingCtrl[0].hdr.Op != opRST {
			if d.pendingCtrl[0].hdr.Op == opCreditUpdate {
				d.pendingCtrl[0].c.creditQueued = false
			}
			d.pendingCtrl = d.pendingCtrl[1:]
		}
		if len(d.pendingCtrl) == 0 && len(d.ready) == 0 {
			break
		}
		ok, err := d.rxq.Pop(&d.chain)
		if err != nil {
			d.warnOnce("rxchain", "guest rx queue: %v", err)
			if errors.Is(err, vhostuser.ErrRingBroken) {
				return false
			}
			continue
		}
		if !ok {
			starved = true
			break
		}
		room := d.chain.WritableLen()
		if room < hdrSize {
			d.warnOnce("rxsmall", "guest receive buffer of %d bytes cannot hold a header", room)
			d.rxq.Push(d.chain.Head, 0)
			continue
		}
		sc := newScatter(d.chain.Writable)
		if len(d.pendingCtrl) > 0 {
			p := d.pendingCtrl[0]
			d.pendingCtrl[0] = ctrlPacket{}
			d.pendingCtrl = d.pendingCtrl[1:]
			if p.c != nil {
				fwd := p.c.fwdCnt()
				p.hdr.BufAlloc, p.hdr.FwdCnt = bufAlloc, uint32(fwd)
				p.c.lastFwdSent = fwd
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
	if len(d.pendingCtrl) == 0 {
		d.pendingCtrl = nil // let a burst's backing array go
	}
	return starved
}

// sendData writes one packet of c into a receive buffer with room payload
// bytes: data within the guest's credit, or the SHUTDOWN that follows the
// host's EOF.
func (d *Device) sendData(c *conn, sc *scatter, room int) int {
	h := header{
		SrcCID: c.key.hostCID, DstCID: uint64(d.cfg.GuestCID),
		SrcPort: c.key.hostPort, DstPort: c.key.guestPort,
		Type: typeStream, BufAlloc: bufAlloc,
	}
	fwd := c.fwdCnt()
	h.FwdCnt, c.lastFwdSent = uint32(fwd), fwd
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
