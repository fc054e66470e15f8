// Package frontend plays the two parties on the other side of a vhost-user
// back end: the front end (QEMU: the protocol messages, memfd guest memory,
// eventfds) and the guest driver (split rings in that memory). Tests use it
// to drive back ends through their real socket without a VM, including in
// ways no well-behaved guest would.
package frontend

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Request numbers, as in the vhost-user specification.
const (
	GetFeatures         = 1
	SetFeatures         = 2
	SetOwner            = 3
	SetMemTable         = 5
	SetVringNum         = 8
	SetVringAddr        = 9
	SetVringBase        = 10
	GetVringBase        = 11
	SetVringKick        = 12
	SetVringCall        = 13
	SetVringErr         = 14
	GetProtocolFeatures = 15
	SetProtocolFeatures = 16
	SetVringEnable      = 18
	GetConfig           = 24
)

// Descriptor flags.
const (
	DescNext     = 1
	DescWrite    = 2
	DescIndirect = 4
)

const needReply = 0x8

// GuestBase is the guest-physical address of the memory; UserBase is where
// the "front end" claims to have mapped it (ring addresses use it).
const (
	GuestBase = 0x100000
	UserBase  = 0x7f1200000000
)

// Frontend is one connection to a back end with its guest memory.
type Frontend struct {
	c      *net.UnixConn
	memfd  int
	Mem    []byte
	Rings  []*Ring
	next   uint64 // bump allocator for buffers, guest-physical
	replyA bool
}

// Ring is one split virtqueue as the driver sees it.
type Ring struct {
	f                 *Frontend
	Index             int
	Size              uint16
	Desc, Avail, Used uint64   // guest-physical
	Kick, Call        int      // eventfds
	call              *os.File // Call, for waiting on it
	// Suppressed counts kicks Publish left out because the back end
	// asked for none (VRING_USED_F_NO_NOTIFY).
	Suppressed int
	availIdx   uint16
	lastUsed   uint16
	freeDesc   []uint16
}

// Dial connects to the back end and creates memSize bytes of shared guest
// memory.
func Dial(path string, memSize int) (*Frontend, error) {
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	fd, err := unix.MemfdCreate("guest", unix.MFD_CLOEXEC)
	if err != nil {
		c.Close()
		return nil, err
	}
	if err := unix.Ftruncate(fd, int64(memSize)); err != nil {
		c.Close()
		unix.Close(fd)
		return nil, err
	}
	mem, err := unix.Mmap(fd, 0, memSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		c.Close()
		unix.Close(fd)
		return nil, err
	}
	return &Frontend{c: c, memfd: fd, Mem: mem, next: GuestBase + 0x40000}, nil
}

// Close drops the connection (as a QEMU exit does) and frees everything.
func (f *Frontend) Close() {
	f.c.Close()
	for _, r := range f.Rings {
		unix.Close(r.Kick)
		r.call.Close()
	}
	f.Rings = nil
	unix.Munmap(f.Mem)
	unix.Close(f.memfd)
}

// Send writes one message; fds travel with its first byte.
func (f *Frontend) Send(req uint32, flags uint32, payload []byte, fds ...int) error {
	msg := make([]byte, 12+len(payload))
	binary.LittleEndian.PutUint32(msg[0:], req)
	binary.LittleEndian.PutUint32(msg[4:], 1|flags)
	binary.LittleEndian.PutUint32(msg[8:], uint32(len(payload)))
	copy(msg[12:], payload)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	_, _, err := f.c.WriteMsgUnix(msg, oob, nil)
	return err
}

// Reply reads one reply to req.
func (f *Frontend) Reply(req uint32) ([]byte, error) {
	f.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer f.c.SetReadDeadline(time.Time{})
	var h [12]byte
	if _, err := io.ReadFull(f.c, h[:]); err != nil {
		return nil, fmt.Errorf("reply to %d: %w", req, err)
	}
	if got := binary.LittleEndian.Uint32(h[0:]); got != req {
		return nil, fmt.Errorf("reply is for request %d, want %d", got, req)
	}
	if fl := binary.LittleEndian.Uint32(h[4:]); fl&0x4 == 0 {
		return nil, fmt.Errorf("reply flags %#x lack the reply bit", fl)
	}
	p := make([]byte, binary.LittleEndian.Uint32(h[8:]))
	_, err := io.ReadFull(f.c, p)
	return p, err
}

// Do sends a request that has no reply of its own; with REPLY_ACK
// negotiated it asks for the ack and checks it.
func (f *Frontend) Do(req uint32, payload []byte, fds ...int) error {
	if !f.replyA {
		return f.Send(req, 0, payload, fds...)
	}
	if err := f.Send(req, needReply, payload, fds...); err != nil {
		return err
	}
	p, err := f.Reply(req)
	if err != nil {
		return err
	}
	if len(p) != 8 || binary.LittleEndian.Uint64(p) != 0 {
		return fmt.Errorf("request %d refused (ack %x)", req, p)
	}
	return nil
}

// U64 encodes a u64 payload.
func U64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

// State encodes a vring state payload.
func State(index, num uint32) []byte {
	b := binary.LittleEndian.AppendUint32(nil, index)
	return binary.LittleEndian.AppendUint32(b, num)
}

// Negotiate runs the feature handshake QEMU does at device setup and
// returns the back end's virtio features.
func (f *Frontend) Negotiate() (uint64, error) {
	if err := f.Send(GetFeatures, 0, nil); err != nil {
		return 0, err
	}
	p, err := f.Reply(GetFeatures)
	if err != nil || len(p) != 8 {
		return 0, fmt.Errorf("GET_FEATURES: %x %v", p, err)
	}
	features := binary.LittleEndian.Uint64(p)
	if err := f.Send(GetProtocolFeatures, 0, nil); err != nil {
		return 0, err
	}
	p, err = f.Reply(GetProtocolFeatures)
	if err != nil || len(p) != 8 {
		return 0, fmt.Errorf("GET_PROTOCOL_FEATURES: %x %v", p, err)
	}
	proto := binary.LittleEndian.Uint64(p)
	if err := f.Send(SetProtocolFeatures, 0, U64(proto)); err != nil {
		return 0, err
	}
	f.replyA = proto&(1<<3) != 0
	if err := f.Do(SetOwner, nil); err != nil {
		return 0, err
	}
	// VERSION_1 | PROTOCOL_FEATURES, what QEMU acks for vsock.
	if err := f.Do(SetFeatures, U64(features&(1<<32|1<<30))); err != nil {
		return 0, err
	}
	return features, nil
}

// Config reads size bytes of device config space.
func (f *Frontend) Config(size uint32) ([]byte, error) {
	p := make([]byte, 12+size)
	binary.LittleEndian.PutUint32(p[4:], size)
	if err := f.Send(GetConfig, 0, p); err != nil {
		return nil, err
	}
	r, err := f.Reply(GetConfig)
	if err != nil {
		return nil, err
	}
	if len(r) != 12+int(size) {
		return nil, fmt.Errorf("GET_CONFIG reply of %d bytes", len(r))
	}
	return r[12:], nil
}

// SetMemTable hands the memory over as one region.
func (f *Frontend) SetMemTable() error {
	p := make([]byte, 8+32)
	binary.LittleEndian.PutUint32(p, 1)
	binary.LittleEndian.PutUint64(p[8:], GuestBase)
	binary.LittleEndian.PutUint64(p[16:], uint64(len(f.Mem)))
	binary.LittleEndian.PutUint64(p[24:], UserBase)
	binary.LittleEndian.PutUint64(p[32:], 0)
	return f.Do(SetMemTable, p, f.memfd)
}

// AddRings lays out n rings of size descriptors in the first 256 KiB of
// memory, hands them to the back end and enables them.
func (f *Frontend) AddRings(n int, size uint16) error {
	for i := 0; i < n; i++ {
		base := uint64(GuestBase + i*0x10000)
		r := &Ring{f: f, Index: i, Size: size, Desc: base, Avail: base + 0x4000, Used: base + 0x8000}
		for d := size; d > 0; d-- {
			r.freeDesc = append(r.freeDesc, d-1)
		}
		var err error
		if r.Kick, err = unix.Eventfd(0, unix.EFD_CLOEXEC); err != nil {
			return err
		}
		if r.Call, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
			return err
		}
		// Waited on through the runtime's poller: a goroutine blocked in
		// poll(2) would hold its P, which on a two-CPU machine left the
		// back end's goroutines waiting for the scheduler (up to 10 ms)
		// in the device benchmark.
		r.call = os.NewFile(uintptr(r.Call), "call")
		f.Rings = append(f.Rings, r)
		if err := f.StartRing(r); err != nil {
			return err
		}
	}
	for _, r := range f.Rings {
		if err := f.Do(SetVringEnable, State(uint32(r.Index), 1)); err != nil {
			return err
		}
	}
	return nil
}

// StartRing sends the ring's setup messages (not ENABLE).
func (f *Frontend) StartRing(r *Ring) error {
	clear(f.slice(r.Desc, 0xc000))
	r.availIdx, r.lastUsed = 0, 0
	i := uint32(r.Index)
	addr := make([]byte, 40)
	binary.LittleEndian.PutUint32(addr[0:], i)
	binary.LittleEndian.PutUint64(addr[8:], r.Desc-GuestBase+UserBase)
	binary.LittleEndian.PutUint64(addr[16:], r.Used-GuestBase+UserBase)
	binary.LittleEndian.PutUint64(addr[24:], r.Avail-GuestBase+UserBase)
	for _, step := range []struct {
		req uint32
		p   []byte
		fd  int
	}{
		{SetVringCall, U64(uint64(i)), r.Call},
		{SetVringNum, State(i, uint32(r.Size)), -1},
		{SetVringBase, State(i, 0), -1},
		{SetVringAddr, addr, -1},
		{SetVringKick, U64(uint64(i)), r.Kick},
	} {
		var err error
		if step.fd >= 0 {
			err = f.Do(step.req, step.p, step.fd)
		} else {
			err = f.Do(step.req, step.p)
		}
		if err != nil {
			return fmt.Errorf("ring %d request %d: %w", i, step.req, err)
		}
	}
	return nil
}

// StopRing does what QEMU does when the driver stops: disable, then
// GET_VRING_BASE; it returns the base.
func (f *Frontend) StopRing(r *Ring) (uint32, error) {
	if err := f.Do(SetVringEnable, State(uint32(r.Index), 0)); err != nil {
		return 0, err
	}
	if err := f.Send(GetVringBase, 0, State(uint32(r.Index), 0)); err != nil {
		return 0, err
	}
	p, err := f.Reply(GetVringBase)
	if err != nil || len(p) != 8 {
		return 0, fmt.Errorf("GET_VRING_BASE: %x %v", p, err)
	}
	return binary.LittleEndian.Uint32(p[4:]), nil
}

func (f *Frontend) slice(gpa, n uint64) []byte { return f.Mem[gpa-GuestBase : gpa-GuestBase+n] }

// Alloc returns n bytes of guest memory (never freed; tests are short).
func (f *Frontend) Alloc(n int) (uint64, []byte) {
	gpa := f.next
	f.next += uint64(n+15) &^ 15
	if f.next-GuestBase > uint64(len(f.Mem)) {
		f.next = GuestBase + 0x40000 // wrap: tests only ever need a few at a time
		gpa = f.next
		f.next += uint64(n+15) &^ 15
	}
	return gpa, f.slice(gpa, uint64(n))
}

// Desc is one raw descriptor.
type Desc struct {
	Addr  uint64
	Len   uint32
	Flags uint16
	Next  uint16
}

// SetDesc writes descriptor i verbatim (for malformed chains).
func (r *Ring) SetDesc(i uint16, d Desc) {
	b := r.f.slice(r.Desc+16*uint64(i), 16)
	binary.LittleEndian.PutUint64(b[0:], d.Addr)
	binary.LittleEndian.PutUint32(b[8:], d.Len)
	binary.LittleEndian.PutUint16(b[12:], d.Flags)
	binary.LittleEndian.PutUint16(b[14:], d.Next)
}

// Publish puts head on the available ring and kicks, unless the back end
// set VRING_USED_F_NO_NOTIFY, as Linux's virtqueue_kick_prepare does
// without EVENT_IDX.
func (r *Ring) Publish(head uint16) {
	binary.LittleEndian.PutUint16(r.f.slice(r.Avail+4+2*uint64(r.availIdx%r.Size), 2), head)
	r.availIdx++
	p := (*uint32)(unsafe.Pointer(&r.f.slice(r.Avail, 4)[0]))
	atomic.StoreUint32(p, uint32(r.availIdx)<<16)
	// The index store comes before the flags load (both atomic).
	if atomic.LoadUint32((*uint32)(unsafe.Pointer(&r.f.slice(r.Used, 4)[0])))&1 != 0 {
		r.Suppressed++
		return
	}
	r.Notify()
}

// SetAvailIdx writes the available index verbatim (for broken drivers).
func (r *Ring) SetAvailIdx(idx uint16) {
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&r.f.slice(r.Avail, 4)[0])), uint32(idx)<<16)
	r.availIdx = idx
}

// Notify kicks the back end.
func (r *Ring) Notify() { unix.Write(r.Kick, U64(1)) }

// AddBuffers builds a chain from buffers (readable first), publishes it and
// returns the head. Descriptors come back with Collect.
func (r *Ring) AddBuffers(readable [][]byte, writable []int) (uint16, [][]byte, error) {
	n := len(readable) + len(writable)
	if n > len(r.freeDesc) {
		return 0, nil, errors.New("ring full")
	}
	ids := r.freeDesc[len(r.freeDesc)-n:]
	r.freeDesc = r.freeDesc[:len(r.freeDesc)-n]
	var out [][]byte
	for k, id := range ids {
		var d Desc
		if k < len(readable) {
			gpa, b := r.f.Alloc(len(readable[k]))
			copy(b, readable[k])
			d = Desc{Addr: gpa, Len: uint32(len(b))}
		} else {
			gpa, b := r.f.Alloc(writable[k-len(readable)])
			out = append(out, b)
			d = Desc{Addr: gpa, Len: uint32(len(b)), Flags: DescWrite}
		}
		if k+1 < n {
			d.Flags |= DescNext
			d.Next = ids[k+1]
		}
		r.SetDesc(id, d)
	}
	r.Publish(ids[0])
	return ids[0], out, nil
}

// AddDescs links descs (their NEXT flags and Next fields are set here)
// into one chain on free descriptors and publishes it, so a test can build
// chains whose buffers overlap or lie anywhere. Collect frees them.
func (r *Ring) AddDescs(descs []Desc) (uint16, error) {
	n := len(descs)
	if n == 0 || n > len(r.freeDesc) {
		return 0, fmt.Errorf("chain of %d descriptors, %d free", n, len(r.freeDesc))
	}
	ids := r.freeDesc[len(r.freeDesc)-n:]
	r.freeDesc = r.freeDesc[:len(r.freeDesc)-n]
	for k, id := range ids {
		d := descs[k]
		d.Flags &^= DescNext
		if k+1 < n {
			d.Flags |= DescNext
			d.Next = ids[k+1]
		}
		r.SetDesc(id, d)
	}
	r.Publish(ids[0])
	return ids[0], nil
}

// Used is one used-ring element.
type Used struct {
	ID, Len uint32
}

// Collect returns the used elements that appeared since the last call,
// waiting up to timeout for at least one. Their descriptors return to the
// free list (chains are followed through the table).
func (r *Ring) Collect(timeout time.Duration) []Used {
	deadline := time.Now().Add(timeout)
	for {
		idx := uint16(atomic.LoadUint32((*uint32)(unsafe.Pointer(&r.f.slice(r.Used, 4)[0]))) >> 16)
		if idx != r.lastUsed {
			var out []Used
			for r.lastUsed != idx {
				e := r.f.slice(r.Used+4+8*uint64(r.lastUsed%r.Size), 8)
				u := Used{ID: binary.LittleEndian.Uint32(e), Len: binary.LittleEndian.Uint32(e[4:])}
				out = append(out, u)
				r.lastUsed++
				r.release(uint16(u.ID))
			}
			return out
		}
		if time.Now().After(deadline) {
			return nil
		}
		// Wait for the interrupt, as a driver does (the back end may
		// suppress none: no flags are set in the available ring).
		wait := time.Until(deadline)
		if wait > 50*time.Millisecond {
			wait = 50 * time.Millisecond
		}
		r.call.SetReadDeadline(time.Now().Add(wait))
		var b [8]byte
		r.call.Read(b[:])
	}
}

func (r *Ring) release(head uint16) {
	for i, id := 0, head; i < int(r.Size) && id < r.Size; i++ {
		r.freeDesc = append(r.freeDesc, id)
		b := r.f.slice(r.Desc+16*uint64(id), 16)
		if binary.LittleEndian.Uint16(b[12:])&DescNext == 0 {
			return
		}
		id = binary.LittleEndian.Uint16(b[14:])
	}
}

// Resize changes the size of the memory file behind the guest's back, as
// a broken front end could; pages beyond the new size fault (SIGBUS) for
// everyone who maps them, this process included.
func (f *Frontend) Resize(n int64) error { return unix.Ftruncate(f.memfd, n) }
