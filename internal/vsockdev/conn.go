package vsockdev

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// connKey names a stream: the host end as the guest sees it and the guest
// port. The host CID is kept because replies must come from the CID the
// guest dialled.
type connKey struct {
	hostCID   uint64
	hostPort  uint32
	guestPort uint32
}

type connState int

const (
	stConnecting connState = iota // host-initiated, REQUEST sent to the guest
	stDialing                     // guest-initiated, dialling P_N on the host
	stConnected
	stClosed // removed from the table; events about it are ignored
)

// conn is one stream. Fields without a comment belong to the device loop
// goroutine; the reader and writer goroutines share only wbuf and the
// channels.
type conn struct {
	key   connKey
	state connState
	uc    net.Conn
	br    *bufio.Reader // host-initiated: holds bytes sent after CONNECT
	timer *time.Timer   // connect timeout (host-initiated)

	// host -> guest
	pending      []byte // chunk from the reader not yet sent to the guest
	txCnt        uint64 // bytes sent to the guest
	peerBufAlloc uint32
	peerFwdCnt   uint32
	hostEOF      bool // reader saw EOF: SHUTDOWN(SEND) goes after pending
	shutSent     bool
	inReady      bool
	resume       chan struct{} // loop -> reader: chunk consumed

	// guest -> host. The counters are 64-bit so that no sum of them and
	// a guest-supplied length can wrap; the wire carries the low 32 bits,
	// which wrap as the virtio spec intends.
	rxCnt        uint64 // payload bytes received from the guest
	lastFwdSent  uint64 // fwdCnt() as last told to the guest
	creditQueued bool
	guestNoSend  bool // guest sent SHUTDOWN(SEND)
	guestNoRecv  bool // guest sent SHUTDOWN(RCV)
	wbuf         writeBuf

	// Shared with the writer. written is fwd_cnt: the writer adds what
	// it wrote, the loop reads it when it tells the guest. The writer
	// wakes the loop about it (evWritten) only while wantWritten is set,
	// that is while the guest is low on credit: request/reply traffic
	// then costs the loop no turn per write.
	written     atomic.Uint64
	wantWritten atomic.Bool

	done chan struct{} // closed when the loop forgets the conn
}

// credit is how many bytes the guest can take now. The guest's fwd_cnt is
// a wrapping 32-bit counter, so the bytes in flight are the difference of
// the low 32 bits; a fwd_cnt ahead of what was sent reads as a full buffer
// (no credit), never as extra credit.
func (c *conn) credit() uint32 {
	inFlight := uint32(c.txCnt) - c.peerFwdCnt
	if inFlight >= c.peerBufAlloc {
		return 0
	}
	return c.peerBufAlloc - inFlight
}

// buffered is how many guest bytes wait for the host socket; it never
// exceeds bufAlloc.
func (c *conn) buffered() uint64 { return c.rxCnt - c.fwdCnt() }

// fwdCnt is how many guest bytes the writer has written to the host
// socket.
func (c *conn) fwdCnt() uint64 { return c.written.Load() }

// sendable reports whether the loop has something for the guest on this
// stream and the guest can take it.
func (c *conn) sendable() bool {
	if c.state != stConnected {
		return false
	}
	if len(c.pending) > 0 {
		return c.credit() > 0
	}
	return c.hostEOF && !c.shutSent
}

// writeBuf holds guest data on its way to the host socket. The loop
// appends; the writer goroutine swaps the slice out and writes it.
type writeBuf struct {
	mu         sync.Mutex
	data       []byte
	closeWrite bool // half-close after flushing
	closeAll   bool // close after flushing
	wake       chan struct{}
}

func (w *writeBuf) signal() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// flushTimeout bounds how long a closing stream waits for a host client
// that does not read.
const flushTimeout = 30 * time.Second

// writer copies guest data to the host socket. preamble (the hybrid "OK"
// line) goes first.
func (d *Device) writer(c *conn, preamble []byte) {
	defer d.recoverGo("writer")
	if len(preamble) > 0 {
		if _, err := c.uc.Write(preamble); err != nil {
			d.post(event{kind: evWriteErr, c: c, err: err})
			return
		}
	}
	var spare []byte
	halfClosed := false
	for {
		c.wbuf.mu.Lock()
		data := c.wbuf.data
		c.wbuf.data = spare[:0]
		closeWrite, closeAll := c.wbuf.closeWrite, c.wbuf.closeAll
		c.wbuf.mu.Unlock()
		if len(data) > 0 {
			n, err := c.uc.Write(data)
			if n > 0 {
				// Add before the flag is read; the loop sets the flag
				// before it reads the count (maybeCreditUpdate), so one
				// of the two sees the other.
				c.written.Add(uint64(n))
				if c.wantWritten.Load() {
					d.post(event{kind: evWritten, c: c})
				}
			}
			if err != nil {
				d.post(event{kind: evWriteErr, c: c, err: err})
				return
			}
			spare = data
			continue
		}
		spare = data
		if closeAll {
			c.uc.Close()
			return
		}
		if closeWrite && !halfClosed {
			halfClosed = true
			if cw, ok := c.uc.(interface{ CloseWrite() error }); ok {
				cw.CloseWrite()
			}
		}
		select {
		case <-c.wbuf.wake:
		case <-c.done:
			// Aborted (the socket is closed, writes fail) or closing
			// gracefully (closeAll is set): one more round decides.
			c.wbuf.mu.Lock()
			graceful := c.wbuf.closeAll
			c.wbuf.mu.Unlock()
			if !graceful {
				return
			}
		}
	}
}

// readChunk is how much host data a stream holds for the guest: the
// reader reads into one half while the loop holds the other.
const readChunk = 64 << 10

// reader copies host data towards the guest in chunks of half readChunk.
// The loop holds at most one chunk; the reader reads the next into the
// other half meanwhile, but passes it on only once the loop has passed
// the last one to the guest, so a guest that does not read holds back
// only its own stream. Reading ahead spares a request/reply stream a
// goroutine wake-up per message: the loop's "chunk consumed" token waits
// in c.resume until the next message, instead of waking a reader that
// has nothing to read yet.
func (d *Device) reader(c *conn) {
	defer d.recoverGo("reader")
	// Bytes the client sent right after its CONNECT line come first. The
	// bufio.Reader is read only while it holds some: reading through it
	// with a half-sized chunk would fill its own 64 KiB buffer from the
	// socket, beyond readChunk.
	br := c.br
	buf := make([]byte, readChunk)
	halves := [2][]byte{buf[: readChunk/2 : readChunk/2], buf[readChunk/2:]}
	held := false // the loop holds a chunk: wait for c.resume before the next
	// taken waits until the loop has passed on the chunk it holds; false:
	// the stream is gone.
	taken := func() bool {
		if !held {
			return true
		}
		select {
		case <-c.resume:
			return true
		case <-c.done:
			return false
		}
	}
	for i := 0; ; i ^= 1 {
		var n int
		var err error
		if br != nil && br.Buffered() > 0 {
			n, err = br.Read(halves[i])
		} else {
			br = nil
			n, err = c.uc.Read(halves[i])
		}
		if n > 0 {
			if !taken() {
				return
			}
			d.post(event{kind: evHostData, c: c, data: halves[i][:n]})
			held = true
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				// The loop sends SHUTDOWN after the chunk it holds.
				select {
				case <-c.done:
				default:
					d.post(event{kind: evHostEOF, c: c})
				}
				return
			}
			// An error resets the stream: let the guest have the data
			// that came before it first.
			if !taken() {
				return
			}
			select {
			case <-c.done:
			default:
				d.post(event{kind: evHostReadErr, c: c, err: err})
			}
			return
		}
	}
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

// isQuietNetErr reports errors that only mean the client went away.
func isQuietNetErr(err error) bool {
	return errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded)
}

// streamKey is the key of the stream a guest packet belongs to.
func streamKey(h header) connKey {
	return connKey{hostCID: h.DstCID, hostPort: h.DstPort, guestPort: h.SrcPort}
}

func (k connKey) String() string {
	return fmt.Sprintf("host %d:%d <-> guest port %d", k.hostCID, k.hostPort, k.guestPort)
}
