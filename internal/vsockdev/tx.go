package vsockdev

import (
	"errors"
	"strconv"

	"github.com/nitroinit/nitroinit/internal/vhostuser"
)

// The transmit queue: packets the guest sends (guest to host). Every
// field of every header and every length here is the guest's to choose;
// each is checked before it is used (docs/vsockdev.md, Robustness).

// rstReply answers a guest packet that belongs to no stream.
func (d *Device) rstReply(h header) {
	if h.Op == opRST || len(d.pendingCtrl) >= 4*ctrlLimit {
		return
	}
	d.pendingCtrl = append(d.pendingCtrl, ctrlPacket{hdr: header{
		SrcCID: h.DstCID, DstCID: h.SrcCID, SrcPort: h.DstPort, DstPort: h.SrcPort,
		Type: typeStream, Op: opRST,
	}})
}

// processTx owns the tx ring: it takes the guest's chains one at a time,
// hands each to handlePacket and returns it as used (the device writes
// nothing into tx buffers). It stops when the ring is empty or broken, or
// when pendingCtrl is full (ctrlLimit): the guest then has to post receive
// buffers before it may send more, which bounds what its packets can make
// the device queue.
func (d *Device) processTx() {
	for len(d.pendingCtrl) < ctrlLimit {
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

// handlePacket owns the stream state transitions on the guest's account:
// it validates one packet (header size, source CID, payload length
// against maxPacketLen and the chain, credit), then opens, answers,
// shuts down or resets the stream it names, and appends RW payload to the
// stream's write buffer for its writer goroutine. Replies go to
// pendingCtrl; nothing is written to the guest here. The chain's buffers
// are valid only during the call.
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
			d.maybeCreditUpdate(c)
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
