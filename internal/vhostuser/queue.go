package vhostuser

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Split-ring descriptor flags (virtio 1.x, 2.7.5).
const (
	descFlagNext     = 1
	descFlagWrite    = 2
	descFlagIndirect = 4

	availFlagNoInterrupt = 1
	usedFlagNoNotify     = 1

	descSize = 16
)

// MaxQueueSize is the largest ring size the virtio spec allows for split
// rings.
const MaxQueueSize = 32768

// Chain is one descriptor chain taken from a queue: the buffers the device
// may read (driver to device) followed by the buffers it may write. The
// slices point straight into guest memory and are valid only until the
// device's Stop returns.
type Chain struct {
	Head     uint16
	Readable [][]byte
	Writable [][]byte
}

// ReadableLen is the total number of bytes in the readable buffers.
func (c *Chain) ReadableLen() int {
	n := 0
	for _, b := range c.Readable {
		n += len(b)
	}
	return n
}

// WritableLen is the total number of bytes in the writable buffers.
func (c *Chain) WritableLen() int {
	n := 0
	for _, b := range c.Writable {
		n += len(b)
	}
	return n
}

func (c *Chain) reset() {
	c.Head = 0
	c.Readable = c.Readable[:0]
	c.Writable = c.Writable[:0]
}

// ErrRingBroken reports a ring whose indexes make no sense (the driver
// claims more new buffers than the ring holds). The queue stops serving
// until the driver resets it.
var ErrRingBroken = errors.New("virtqueue is broken")

// Queue is a split virtqueue shared with the guest. It is used by one
// goroutine at a time (the device's worker); only Notify may be called
// from elsewhere.
type Queue struct {
	// Index is the queue number (0 = rx, 1 = tx for vsock).
	Index int

	size      uint16
	mem       *Memory
	desc      []byte
	avail     []byte
	used      []byte
	lastAvail uint16
	usedIdx   uint16
	usedFlags uint16 // as last written: usedFlagNoNotify or 0
	pushed    bool
	broken    bool

	kick <-chan struct{}
	call *eventFD
}

// NewQueue builds a queue over rings given by guest-physical addresses.
// The vhost-user server uses newQueueUser (QEMU addresses); tests and other
// transports use this one.
func NewQueue(index int, mem *Memory, size uint16, descAddr, availAddr, usedAddr uint64, kick <-chan struct{}) (*Queue, error) {
	return newQueue(index, mem, size, descAddr, availAddr, usedAddr, mem.Slice, kick, nil)
}

func newQueue(index int, mem *Memory, size uint16, descAddr, availAddr, usedAddr uint64, slice func(uint64, uint64) ([]byte, error), kick <-chan struct{}, call *eventFD) (*Queue, error) {
	if size == 0 || size&(size-1) != 0 || size > MaxQueueSize {
		return nil, fmt.Errorf("queue %d: size %d is not a power of two up to %d", index, size, MaxQueueSize)
	}
	n := uint64(size)
	desc, err := slice(descAddr, n*descSize)
	if err != nil {
		return nil, fmt.Errorf("queue %d descriptor table: %w", index, err)
	}
	avail, err := slice(availAddr, 4+2*n+2)
	if err != nil {
		return nil, fmt.Errorf("queue %d available ring: %w", index, err)
	}
	used, err := slice(usedAddr, 4+8*n+2)
	if err != nil {
		return nil, fmt.Errorf("queue %d used ring: %w", index, err)
	}
	if uintptr(unsafe.Pointer(&used[0]))%4 != 0 {
		return nil, fmt.Errorf("queue %d: used ring at %#x is not 4-byte aligned", index, usedAddr)
	}
	q := &Queue{Index: index, size: size, mem: mem, desc: desc, avail: avail, used: used, kick: kick, call: call}
	w := q.loadUsedWord()
	q.usedIdx, q.usedFlags = uint16(w>>16), uint16(w)&usedFlagNoNotify
	return q, nil
}

// Kick returns a channel that receives a value after the guest notified
// the queue. Several notifications may be folded into one.
func (q *Queue) Kick() <-chan struct{} { return q.kick }

// Size is the number of descriptors in the ring.
func (q *Queue) Size() uint16 { return q.size }

// LastAvail is the index of the next available entry the device will take.
func (q *Queue) LastAvail() uint16 { return q.lastAvail }

// SetLastAvail sets where the device resumes taking buffers
// (SET_VRING_BASE).
func (q *Queue) SetLastAvail(i uint16) { q.lastAvail = i }

// availWord reads avail flags and idx. Go has no 16-bit atomics; the two
// fields form one aligned 32-bit little-endian word.
func (q *Queue) availWord() (flags, idx uint16) {
	p := unsafe.Pointer(&q.avail[0])
	if uintptr(p)%4 == 0 {
		w := atomic.LoadUint32((*uint32)(p))
		return uint16(w), uint16(w >> 16)
	}
	return binary.LittleEndian.Uint16(q.avail[0:]), binary.LittleEndian.Uint16(q.avail[2:])
}

// loadUsedWord reads used flags (low half) and idx (high half).
func (q *Queue) loadUsedWord() uint32 {
	return atomic.LoadUint32((*uint32)(unsafe.Pointer(&q.used[0])))
}

// storeUsedWord publishes the used index and flags together; the atomic
// store orders every used element written before it.
func (q *Queue) storeUsedWord() {
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&q.used[0])), uint32(q.usedIdx)<<16|uint32(q.usedFlags))
}

// SetNoNotify asks the driver not to kick the queue (on), or to kick it
// again (off), through VRING_USED_F_NO_NOTIFY. It is advice: a driver may
// kick anyway. After turning kicks back on, a device must look at the
// available ring once more (Pending), for buffers made available while
// they were off: the store here comes before that load (sequentially
// consistent atomics), as the spec's barrier requires.
func (q *Queue) SetNoNotify(on bool) {
	var f uint16
	if on {
		f = usedFlagNoNotify
	}
	if f == q.usedFlags {
		return
	}
	q.usedFlags = f
	q.storeUsedWord()
}

// Pending is the number of chains the driver has made available that the
// device has not taken yet. A broken ring reports 0.
func (q *Queue) Pending() (int, error) {
	if q.broken {
		return 0, ErrRingBroken
	}
	_, idx := q.availWord()
	n := idx - q.lastAvail
	if n > q.size {
		q.broken = true
		return 0, fmt.Errorf("queue %d: avail idx %d is %d ahead of the device (ring size %d): %w", q.Index, idx, n, q.size, ErrRingBroken)
	}
	return int(n), nil
}

// Pop takes the next available chain into c. It returns false when none is
// available. A chain that fails validation is returned to the guest as used
// with length 0 and reported as an error; the caller may go on popping.
func (q *Queue) Pop(c *Chain) (bool, error) {
	n, err := q.Pending()
	if err != nil || n == 0 {
		return false, err
	}
	head := binary.LittleEndian.Uint16(q.avail[4+2*uint64(q.lastAvail%q.size):])
	q.lastAvail++
	c.reset()
	c.Head = head
	if err := q.walk(head, c); err != nil {
		if head < q.size {
			q.Push(head, 0)
		}
		c.reset()
		return false, fmt.Errorf("queue %d chain at head %d: %w", q.Index, head, err)
	}
	return true, nil
}

func (q *Queue) walk(head uint16, c *Chain) error {
	i := head
	for count := 0; ; count++ {
		if i >= q.size {
			return fmt.Errorf("descriptor index %d outside ring of %d", i, q.size)
		}
		if count >= int(q.size) {
			return fmt.Errorf("descriptor chain longer than the ring (loop?)")
		}
		d := q.desc[uint64(i)*descSize : uint64(i)*descSize+descSize]
		addr := binary.LittleEndian.Uint64(d[0:])
		length := binary.LittleEndian.Uint32(d[8:])
		flags := binary.LittleEndian.Uint16(d[12:])
		next := binary.LittleEndian.Uint16(d[14:])
		if flags&descFlagIndirect != 0 {
			return fmt.Errorf("descriptor %d is indirect, which was not negotiated", i)
		}
		if length > 0 {
			buf, err := q.mem.Slice(addr, uint64(length))
			if err != nil {
				return fmt.Errorf("descriptor %d: %w", i, err)
			}
			if flags&descFlagWrite != 0 {
				c.Writable = append(c.Writable, buf)
			} else {
				if len(c.Writable) > 0 {
					return fmt.Errorf("descriptor %d is device-readable after a device-writable one", i)
				}
				c.Readable = append(c.Readable, buf)
			}
		}
		if flags&descFlagNext == 0 {
			return nil
		}
		i = next
	}
}

// Push returns a chain to the guest, with written the number of bytes the
// device wrote into its writable buffers.
func (q *Queue) Push(head uint16, written uint32) {
	off := 4 + 8*uint64(q.usedIdx%q.size)
	binary.LittleEndian.PutUint32(q.used[off:], uint32(head))
	binary.LittleEndian.PutUint32(q.used[off+4:], written)
	q.usedIdx++
	// The element must be visible before the index: the atomic store
	// orders them.
	q.storeUsedWord()
	q.pushed = true
}

// Notify interrupts the guest if chains were pushed since the last call
// and the driver has not asked to be left alone.
func (q *Queue) Notify() {
	if !q.pushed {
		return
	}
	q.pushed = false
	// Read the flags after the used index store (sequentially consistent
	// atomics give the full barrier the spec asks for).
	flags, _ := q.availWord()
	if flags&availFlagNoInterrupt != 0 {
		return
	}
	if q.call != nil {
		q.call.signal()
	}
}

// eventFD holds an eventfd QEMU handed over; it can be replaced while a
// worker signals it.
type eventFD struct {
	mu sync.Mutex
	fd int
}

func newEventFD() *eventFD { return &eventFD{fd: -1} }

var one = [8]byte{1}

func (e *eventFD) signal() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.fd >= 0 {
		// EAGAIN means the counter is saturated: the guest will be
		// interrupted anyway.
		unix.Write(e.fd, one[:])
	}
}

// replace installs fd (or -1) and closes the previous one.
func (e *eventFD) replace(fd int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.fd >= 0 {
		unix.Close(e.fd)
	}
	e.fd = fd
}

// kickReader turns a kick eventfd into channel sends. The fd is made
// non-blocking and wrapped in an *os.File so that Close wakes the reading
// goroutine through the runtime poller (close(2) alone does not).
type kickReader struct {
	f    *os.File
	done chan struct{}
}

func startKickReader(fd int, out chan<- struct{}, logf func(string, ...any)) (*kickReader, error) {
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("kick eventfd %d: set non-blocking: %w", fd, err)
	}
	f := os.NewFile(uintptr(fd), "kick")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("kick eventfd %d: %w", fd, err)
	}
	k := &kickReader{f: f, done: make(chan struct{})}
	go func() {
		defer close(k.done)
		defer func() {
			if r := recover(); r != nil {
				logf("vhostuser: kick reader panic: %v", r)
			}
		}()
		// One read per kick, not two: reading an eventfd empties it, so
		// once a read returned the counter the next kick is sure to be a
		// new readiness edge, and the reader waits for it without first
		// reading EAGAIN, as (*os.File).Read would. That holds only
		// while the reader stays in this one RawRead: entering it again
		// forgets an edge that came in between. It returns when Close
		// evicts the fd.
		var buf [8]byte
		rc.Read(func(fd uintptr) bool {
			_, err := unix.Read(int(fd), buf[:])
			for err == unix.EINTR {
				_, err = unix.Read(int(fd), buf[:])
			}
			switch err {
			case nil:
				select {
				case out <- struct{}{}:
				default:
				}
				return false
			case unix.EAGAIN:
				return false
			}
			return true
		})
	}()
	return k, nil
}

func (k *kickReader) close() {
	if k == nil {
		return
	}
	k.f.Close()
	<-k.done
}
