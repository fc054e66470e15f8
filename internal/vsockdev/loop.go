package vsockdev

import (
	"bufio"
	"net"
	"runtime/debug"
	"time"
)

// The device loop: one goroutine that owns every stream, the queues and
// the control packets waiting for the guest, and reacts to kicks, host
// events and the queue hand-off.

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
	case req := <-d.handOff:
		d.takeQueues(req)
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

// reset drops every stream: a transport reset (guest driver stopped, guest
// rebooted, QEMU gone) or shutdown. Nothing is sent to the guest.
func (d *Device) reset(count bool) {
	if count && len(d.conns) > 0 {
		d.resets.Add(1)
	}
	for _, c := range d.conns {
		d.abort(c)
	}
	d.pendingCtrl = d.pendingCtrl[:0]
	d.ready = d.ready[:0]
}

// handleEvent applies one event from the host side (a hybrid client's
// CONNECT, a finished dial, a reader's chunk or EOF, a writer's progress
// or failure, a connect timeout) to the stream it names. It owns the
// stream's state transitions on the host's account: it may create a
// stream (CONNECT), connect or drop it, and queue control packets for the
// guest, but it never touches the rings; serviceQueues does that after.
// Events about streams already closed are ignored.
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
	case evHostReadErr, evWriteErr:
		if !isQuietNetErr(ev.err) {
			what := "reading"
			if ev.kind == evWriteErr {
				what = "writing"
			}
			d.logf("vsockdev: %v: %s host socket: %v", c.key, what, ev.err)
		}
		d.queueRST(c)
		d.abort(c)
	case evWritten:
		d.maybeCreditUpdate(c)
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
// It runs when guest data arrives (rxCnt grew) and when the writer reports
// progress, which it does only while this asks for it (wantWritten).
func (d *Device) maybeCreditUpdate(c *conn) {
	if c.creditQueued || c.guestNoSend || c.rxCnt-c.lastFwdSent < bufAlloc/2 {
		c.wantWritten.Store(false)
		return
	}
	// The guest runs low: it hears as soon as anything more is written.
	// The flag is set before the count is read; the writer adds to the
	// count before it reads the flag.
	c.wantWritten.Store(true)
	if c.fwdCnt() != c.lastFwdSent {
		c.wantWritten.Store(false)
		c.creditQueued = true
		d.queueCtrl(c, opCreditUpdate, 0)
	}
}

// serviceQueues takes the guest's packets and fills its receive buffers,
// then interrupts the guest once for each queue it used. It is the only
// code that touches guest memory, and runs only between the hand-offs.
func (d *Device) serviceQueues() {
	if d.rxq == nil {
		return
	}
	d.processTx()
	for {
		if !d.fillRx() {
			// Nothing waits for a receive buffer: the device takes
			// them when it has something to send, and a kick for each
			// buffer the guest posts would only wake the loop (and
			// cost the guest an exit).
			d.rxq.SetNoNotify(true)
			break
		}
		// Out of receive buffers with packets waiting: ask the guest to
		// kick when it posts more, then look once more for buffers it
		// posted before it could see that.
		d.rxq.SetNoNotify(false)
		if n, _ := d.rxq.Pending(); n == 0 {
			break
		}
	}
	d.rxq.Notify()
	d.txq.Notify()
}
