// Package vhostuser is the back-end half of the vhost-user protocol: QEMU
// (the front end) connects to a Unix socket, hands over guest memory and
// ring eventfds, and the back end serves the device's split virtqueues
// directly from the shared guest memory.
//
// Only what a virtio-vsock device needs is implemented: split rings without
// indirect descriptors or event index, the CONFIG and REPLY_ACK protocol
// features, no dirty logging, no multiqueue negotiation.
package vhostuser

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Message types (QEMU docs/interop/vhost-user.rst, front-end requests).
const (
	reqGetFeatures         = 1
	reqSetFeatures         = 2
	reqSetOwner            = 3
	reqResetOwner          = 4
	reqSetMemTable         = 5
	reqSetLogBase          = 6
	reqSetLogFd            = 7
	reqSetVringNum         = 8
	reqSetVringAddr        = 9
	reqSetVringBase        = 10
	reqGetVringBase        = 11
	reqSetVringKick        = 12
	reqSetVringCall        = 13
	reqSetVringErr         = 14
	reqGetProtocolFeatures = 15
	reqSetProtocolFeatures = 16
	reqGetQueueNum         = 17
	reqSetVringEnable      = 18
	reqGetConfig           = 24
	reqSetConfig           = 25
)

// Header flags.
const (
	flagVersion   = 0x1
	flagReply     = 0x4
	flagNeedReply = 0x8
)

// Feature bits.
const (
	// FeatureVersion1 is VIRTIO_F_VERSION_1.
	FeatureVersion1 = uint64(1) << 32
	// featureProtocol is VHOST_USER_F_PROTOCOL_FEATURES.
	featureProtocol = uint64(1) << 30

	protoMQ       = uint64(1) << 0
	protoReplyAck = uint64(1) << 3
	protoConfig   = uint64(1) << 9
	offeredProto  = protoReplyAck | protoConfig

	vringFdNone = uint64(1) << 8 // "invalid fd" flag in KICK/CALL/ERR payloads
)

const (
	headerSize = 12
	// maxPayload bounds a message body: the largest legitimate one is a
	// GET_CONFIG of 256 bytes or an 8-region memory table.
	maxPayload = 4096
	maxFds     = 8
)

// Device is the virtio device behind the protocol: the Server speaks
// vhost-user (it is the "back-end" of the vhost-user specification) and
// hands the Device its queues.
type Device interface {
	// Features returns the device-specific virtio feature bits offered to
	// the driver; VERSION_1 is always added.
	Features() uint64
	// Config returns the device's configuration space.
	Config() []byte
	// NumQueues is how many virtqueues the device has.
	NumQueues() int
	// Start hands the device its queues, all enabled and mapped. The
	// device may use them from its own goroutine until Stop.
	Start(queues []*Queue)
	// Stop must return only once the device no longer touches the queues
	// or any guest memory: the memory may be unmapped right after. It is
	// called when the driver stops a ring, the memory table changes, or
	// QEMU goes away.
	Stop()
}

// Server accepts QEMU connections on a Unix socket, one at a time.
type Server struct {
	dev  Device
	logf func(string, ...any)
	ln   *net.UnixListener
	path string

	mu     sync.Mutex
	cur    *net.UnixConn
	closed bool
}

// Listen creates the vhost-user socket at path. QEMU's
// -chardev socket,path=<path> connects to it.
func Listen(path string, d Device, logf func(string, ...any)) (*Server, error) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	// A stale socket file from a killed run would make bind fail; only a
	// socket is removed, never a regular file someone put there.
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		os.Remove(path)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("vhost-user socket %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(true)
	return &Server{dev: d, logf: logf, ln: ln, path: path}, nil
}

// Path is the socket's path.
func (s *Server) Path() string { return s.path }

// Serve handles QEMU connections until ctx ends or Close is called. When a
// QEMU disconnects, the device is stopped, everything QEMU handed over is
// released, and the next connection is accepted.
func (s *Server) Serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			if s.isClosed() {
				return nil
			}
			// Out of fds and the like: QEMU may retry, so keep the
			// socket and back off instead of giving up or spinning.
			s.logf("vhostuser: socket %s: accept: %v", s.path, err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return nil
		}
		s.cur = c
		s.mu.Unlock()
		err = s.serveConn(c)
		s.mu.Lock()
		s.cur = nil
		s.mu.Unlock()
		c.Close()
		if err != nil && !s.isClosed() {
			s.logf("vhostuser: front end on %s: %v", s.path, err)
		}
	}
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Close stops accepting, drops the current QEMU connection and removes the
// socket file.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	if s.cur != nil {
		s.cur.Close()
	}
	s.mu.Unlock()
	return s.ln.Close()
}

type vringAddr struct {
	flags             uint32
	desc, used, avail uint64
}

type vring struct {
	num     uint16
	base    uint16
	addr    vringAddr
	hasAddr bool
	enabled bool
	kickCh  chan struct{}
	kick    *kickReader
	call    *eventFD
	errFd   int
}

// session is the state of one front-end connection.
type session struct {
	s        *Server
	c        *net.UnixConn
	features uint64
	protocol uint64
	ownerSet bool
	mem      *Memory
	vrings   []*vring
	started  bool
	queues   []*Queue
	readBuf  [headerSize]byte
	oob      []byte
	payload  []byte
}

func (s *Server) serveConn(c *net.UnixConn) error {
	ss := &session{s: s, c: c, oob: make([]byte, unix.CmsgSpace(4*maxFds)), payload: make([]byte, maxPayload)}
	for i := 0; i < s.dev.NumQueues(); i++ {
		ss.vrings = append(ss.vrings, &vring{kickCh: make(chan struct{}, 1), call: newEventFD(), errFd: -1})
	}
	defer ss.teardown()
	for {
		req, flags, payload, fds, err := ss.readMsg()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		err = ss.handle(req, flags, payload, fds)
		for _, fd := range fds {
			if fd >= 0 {
				unix.Close(fd)
			}
		}
		if err != nil {
			var fatal fatalError
			if errors.As(err, &fatal) {
				return err
			}
			s.logf("vhostuser: request %d: %v", req, err)
		}
	}
}

// fatalError ends the connection (the stream can no longer be trusted).
type fatalError struct{ error }

func (ss *session) teardown() {
	ss.stop()
	for _, v := range ss.vrings {
		v.kick.close()
		v.kick = nil
		v.call.replace(-1)
		if v.errFd >= 0 {
			unix.Close(v.errFd)
			v.errFd = -1
		}
	}
	ss.mem.Unmap()
	ss.mem = nil
}

func (ss *session) readMsg() (req, flags uint32, payload []byte, fds []int, err error) {
	n, oobn, _, _, err := ss.c.ReadMsgUnix(ss.readBuf[:], ss.oob)
	if err != nil {
		return 0, 0, nil, nil, err
	}
	if n == 0 {
		return 0, 0, nil, nil, io.EOF
	}
	if oobn > 0 {
		cmsgs, perr := unix.ParseSocketControlMessage(ss.oob[:oobn])
		if perr == nil {
			for _, cm := range cmsgs {
				if r, e := unix.ParseUnixRights(&cm); e == nil {
					fds = append(fds, r...)
				}
			}
		}
	}
	closeAll := func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
	if n < headerSize {
		if _, err := io.ReadFull(ss.c, ss.readBuf[n:]); err != nil {
			closeAll()
			return 0, 0, nil, nil, fatalError{fmt.Errorf("reading message header: %w", err)}
		}
	}
	req = binary.LittleEndian.Uint32(ss.readBuf[0:])
	flags = binary.LittleEndian.Uint32(ss.readBuf[4:])
	size := binary.LittleEndian.Uint32(ss.readBuf[8:])
	if size > maxPayload {
		closeAll()
		return 0, 0, nil, nil, fatalError{fmt.Errorf("request %d has a %d-byte payload, more than the %d this back end accepts", req, size, maxPayload)}
	}
	payload = ss.payload[:size]
	if _, err := io.ReadFull(ss.c, payload); err != nil {
		closeAll()
		return 0, 0, nil, nil, fatalError{fmt.Errorf("reading request %d payload (%d bytes): %w", req, size, err)}
	}
	return req, flags, payload, fds, nil
}

func (ss *session) reply(req uint32, payload []byte) error {
	msg := make([]byte, headerSize+len(payload))
	binary.LittleEndian.PutUint32(msg[0:], req)
	binary.LittleEndian.PutUint32(msg[4:], flagVersion|flagReply)
	binary.LittleEndian.PutUint32(msg[8:], uint32(len(payload)))
	copy(msg[headerSize:], payload)
	if _, err := ss.c.Write(msg); err != nil {
		return fatalError{fmt.Errorf("writing reply to request %d: %w", req, err)}
	}
	return nil
}

func (ss *session) replyU64(req uint32, v uint64) error {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	return ss.reply(req, b[:])
}

// handle processes one request. fds it keeps are set to -1 in the slice;
// the caller closes the rest.
func (ss *session) handle(req, flags uint32, p []byte, fds []int) error {
	var err error
	switch req {
	case reqGetFeatures:
		return ss.replyU64(req, ss.s.dev.Features()|FeatureVersion1|featureProtocol)
	case reqGetProtocolFeatures:
		return ss.replyU64(req, offeredProto)
	case reqGetQueueNum:
		return ss.replyU64(req, uint64(len(ss.vrings)))
	case reqGetConfig:
		return ss.getConfig(p)
	case reqGetVringBase:
		return ss.getVringBase(p)
	case reqSetFeatures:
		var v uint64
		if v, err = u64(p); err == nil {
			ss.features = v
		}
	case reqSetProtocolFeatures:
		var v uint64
		if v, err = u64(p); err == nil {
			ss.protocol = v & offeredProto
		}
	case reqSetOwner:
		ss.ownerSet = true
	case reqResetOwner:
		ss.stop()
		ss.ownerSet = false
	case reqSetMemTable:
		err = ss.setMemTable(p, fds)
	case reqSetVringNum:
		err = ss.vringState(p, func(v *vring, num uint32) error {
			if num == 0 || num&(num-1) != 0 || num > MaxQueueSize {
				return fmt.Errorf("ring size %d is not a power of two up to %d", num, MaxQueueSize)
			}
			v.num = uint16(num)
			return nil
		})
	case reqSetVringBase:
		err = ss.vringState(p, func(v *vring, num uint32) error {
			v.base = uint16(num)
			return nil
		})
	case reqSetVringAddr:
		err = ss.setVringAddr(p)
	case reqSetVringEnable:
		err = ss.vringState(p, func(v *vring, num uint32) error {
			v.enabled = num != 0
			return nil
		})
	case reqSetVringKick, reqSetVringCall, reqSetVringErr:
		err = ss.setVringFd(req, p, fds)
	case reqSetConfig, reqSetLogBase, reqSetLogFd:
		err = fmt.Errorf("request %d is not supported (config space is read-only, no dirty logging)", req)
	default:
		err = fmt.Errorf("unknown request %d ignored", req)
	}
	if err == nil {
		err = ss.update()
	}
	if flags&flagNeedReply != 0 && ss.protocol&protoReplyAck != 0 {
		status := uint64(0)
		if err != nil {
			status = 1
		}
		if rerr := ss.replyU64(req, status); rerr != nil {
			return rerr
		}
	}
	return err
}

func u64(p []byte) (uint64, error) {
	if len(p) < 8 {
		return 0, fmt.Errorf("payload of %d bytes, want 8", len(p))
	}
	return binary.LittleEndian.Uint64(p), nil
}

func (ss *session) ring(i uint32) (*vring, error) {
	if int(i) >= len(ss.vrings) {
		return nil, fmt.Errorf("queue index %d, the device has %d queues", i, len(ss.vrings))
	}
	return ss.vrings[i], nil
}

// vringState handles the requests whose payload is {index, num}. The
// queues are stopped first: ring parameters never change under the worker.
func (ss *session) vringState(p []byte, set func(*vring, uint32) error) error {
	if len(p) < 8 {
		return fmt.Errorf("vring state payload of %d bytes, want 8", len(p))
	}
	v, err := ss.ring(binary.LittleEndian.Uint32(p))
	if err != nil {
		return err
	}
	ss.stop()
	return set(v, binary.LittleEndian.Uint32(p[4:]))
}

func (ss *session) getVringBase(p []byte) error {
	if len(p) < 8 {
		return fmt.Errorf("GET_VRING_BASE payload of %d bytes, want 8", len(p))
	}
	idx := binary.LittleEndian.Uint32(p)
	v, err := ss.ring(idx)
	if err != nil {
		// Answer anyway: QEMU waits for the reply.
		var b [8]byte
		binary.LittleEndian.PutUint32(b[:], idx)
		ss.reply(reqGetVringBase, b[:])
		return err
	}
	ss.stop()
	// GET_VRING_BASE stops the ring; the driver must set it up again.
	v.enabled = false
	var b [8]byte
	binary.LittleEndian.PutUint32(b[0:], idx)
	binary.LittleEndian.PutUint32(b[4:], uint32(v.base))
	return ss.reply(reqGetVringBase, b[:])
}

func (ss *session) setVringAddr(p []byte) error {
	if len(p) < 40 {
		return fmt.Errorf("SET_VRING_ADDR payload of %d bytes, want 40", len(p))
	}
	v, err := ss.ring(binary.LittleEndian.Uint32(p))
	if err != nil {
		return err
	}
	ss.stop()
	v.addr = vringAddr{
		flags: binary.LittleEndian.Uint32(p[4:]),
		desc:  binary.LittleEndian.Uint64(p[8:]),
		used:  binary.LittleEndian.Uint64(p[16:]),
		avail: binary.LittleEndian.Uint64(p[24:]),
	}
	v.hasAddr = true
	return nil
}

func (ss *session) setVringFd(req uint32, p []byte, fds []int) error {
	v64, err := u64(p)
	if err != nil {
		return err
	}
	v, err := ss.ring(uint32(v64 & 0xff))
	if err != nil {
		return err
	}
	fd := -1
	if v64&vringFdNone == 0 {
		if len(fds) != 1 {
			return fmt.Errorf("request %d for queue %d came with %d file descriptors, want 1", req, v64&0xff, len(fds))
		}
		fd = fds[0]
		fds[0] = -1
	}
	switch req {
	case reqSetVringKick:
		ss.stop()
		v.kick.close()
		v.kick = nil
		if fd >= 0 {
			k, err := startKickReader(fd, v.kickCh, ss.s.logf)
			if err != nil {
				return err
			}
			v.kick = k
		}
		// Without protocol features a kick fd also enables the ring.
		if ss.features&featureProtocol == 0 {
			v.enabled = true
		}
	case reqSetVringCall:
		v.call.replace(fd)
	case reqSetVringErr:
		if v.errFd >= 0 {
			unix.Close(v.errFd)
		}
		v.errFd = fd
	}
	return nil
}

func (ss *session) setMemTable(p []byte, fds []int) error {
	if len(p) < 8 {
		return fmt.Errorf("SET_MEM_TABLE payload of %d bytes", len(p))
	}
	n := binary.LittleEndian.Uint32(p)
	if n == 0 || n > maxRegions || len(p) < 8+32*int(n) {
		return fmt.Errorf("SET_MEM_TABLE with %d regions in %d bytes", n, len(p))
	}
	if len(fds) != int(n) {
		return fmt.Errorf("SET_MEM_TABLE with %d regions but %d file descriptors", n, len(fds))
	}
	regions := make([]Region, n)
	for i := range regions {
		r := p[8+32*i:]
		regions[i] = Region{
			GuestPhysAddr: binary.LittleEndian.Uint64(r[0:]),
			Size:          binary.LittleEndian.Uint64(r[8:]),
			UserAddr:      binary.LittleEndian.Uint64(r[16:]),
			MmapOffset:    binary.LittleEndian.Uint64(r[24:]),
		}
	}
	mem, err := MapMemory(regions, fds)
	if err != nil {
		return err
	}
	// The mappings keep the memory alive; the caller closes the fds.
	ss.stop()
	ss.mem.Unmap()
	ss.mem = mem
	return nil
}

func (ss *session) getConfig(p []byte) error {
	if len(p) < 12 {
		return fmt.Errorf("GET_CONFIG payload of %d bytes, want at least 12", len(p))
	}
	off := binary.LittleEndian.Uint32(p[0:])
	size := binary.LittleEndian.Uint32(p[4:])
	out := make([]byte, len(p))
	copy(out, p[:12])
	cfg := ss.s.dev.Config()
	if 12+uint64(size) > uint64(len(out)) {
		size = uint32(len(out) - 12)
	}
	if uint64(off) < uint64(len(cfg)) {
		copy(out[12:12+size], cfg[off:])
	}
	return ss.reply(reqGetConfig, out)
}

// ready reports whether every queue can be served.
func (ss *session) ready() bool {
	if ss.mem == nil {
		return false
	}
	for _, v := range ss.vrings {
		if v.num == 0 || !v.hasAddr || v.kick == nil || !v.enabled {
			return false
		}
	}
	return true
}

// update starts the device when all queues became ready.
func (ss *session) update() error {
	if ss.started || !ss.ready() {
		return nil
	}
	qs := make([]*Queue, len(ss.vrings))
	for i, v := range ss.vrings {
		q, err := newQueueNoFault(i, ss.mem, v.num, v.addr.desc, v.addr.avail, v.addr.used, v.kickCh, v.call)
		if err != nil {
			return err
		}
		q.lastAvail = v.base
		qs[i] = q
	}
	ss.queues = qs
	ss.started = true
	ss.s.dev.Start(qs)
	return nil
}

// newQueueNoFault builds a queue from QEMU addresses. Building one reads
// the used index from guest memory; if QEMU truncated the memory file
// since SET_MEM_TABLE, that read faults, which becomes an error here
// instead of a SIGBUS that kills the process.
func newQueueNoFault(index int, mem *Memory, size uint16, desc, avail, used uint64, kick <-chan struct{}, call *eventFD) (q *Queue, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			q, err = nil, fmt.Errorf("queue %d: reading its rings: %v", index, r)
		}
	}()
	return newQueue(index, mem, size, desc, avail, used, mem.SliceUser, kick, call)
}

// stop takes the queues back from the device and remembers where each
// ring stopped.
func (ss *session) stop() {
	if !ss.started {
		return
	}
	ss.s.dev.Stop()
	for i, q := range ss.queues {
		ss.vrings[i].base = q.lastAvail
	}
	ss.queues = nil
	ss.started = false
}
