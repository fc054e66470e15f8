// Package cuse serves a character device from user space through the
// kernel's CUSE (/dev/cuse, fs/fuse/cuse.c): it answers the FUSE requests the
// kernel sends for the device (init, open, release, ioctl) and hands ioctls
// to a Handler, unrestricted ioctls (arguments that hold pointers) included.
// Only what a device like /dev/nsm needs is implemented; read, write and
// poll fail as on a device without them.
package cuse

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// Protocol numbers (include/uapi/linux/fuse.h).
const (
	opOpen      = 14
	opRelease   = 18
	opInterrupt = 36
	opIoctl     = 39
	opRead      = 15
	opWrite     = 16
	opCuseInit  = 4096

	kernelMajor = 7
	// ourMinor is the protocol minor we speak: the structures we use have
	// not changed since 7.31.
	ourMinor = 31

	cuseUnrestrictedIoctl = 1 << 0

	// IoctlUnrestricted is set in Ioctl.Flags for an unrestricted ioctl.
	IoctlUnrestricted = 1 << 1
	ioctlRetry        = 1 << 2

	inHeaderSize  = 40
	outHeaderSize = 16
	ioctlInSize   = 32
	ioctlOutSize  = 16
	initOutSize   = 72

	// maxTransfer is what one ioctl may move in each direction: the kernel
	// caps it at max_pages (32 by default) pages.
	maxTransfer = 32 * 4096
	// readBuf holds the largest request the kernel sends: headers plus an
	// ioctl's input (at most maxTransfer).
	readBuf = maxTransfer + 4096
	// smallIoctl is the input size up to which an ioctl round is answered
	// inline: the rounds that only ask for more (an unrestricted ioctl's
	// first two) are quick, and a goroutine hand-off costs more than them.
	smallIoctl = 64
)

// Iovec is a piece of the caller's memory, for an ioctl retry.
type Iovec struct{ Base, Len uint64 }

// Ioctl is one round of an ioctl as the kernel presents it.
type Ioctl struct {
	Cmd   uint32
	Arg   uint64
	Flags uint32
	// In is the input gathered so far: empty on the first round of an
	// unrestricted ioctl, then the concatenation of the in iovecs the last
	// retry asked for.
	In []byte
	// OutSize is how many bytes the kernel can take back.
	OutSize uint32
}

// IoctlReply answers one round.
type IoctlReply struct {
	// Errno, when not zero, fails the ioctl with it.
	Errno unix.Errno
	// RetryIn and RetryOut, when either is non-empty, ask the kernel to
	// call again with In filled from RetryIn and room for RetryOut.
	RetryIn, RetryOut []Iovec
	// Result is the ioctl's return value; Out is written to the out
	// iovecs in order.
	Result int32
	Out    []byte
}

// Handler answers ioctls. It may be called from several goroutines at once.
type Handler func(Ioctl) IoctlReply

// Device is a CUSE character device.
type Device struct {
	fd      int // blocking: the runtime's poller would add a wakeup per request
	handler Handler
	wmu     sync.Mutex
	slots   chan struct{}
}

// Open opens /dev/cuse and registers a device named name (it appears as
// /dev/<name>). Call Serve to answer its requests.
func Open(name string, h Handler) (*Device, error) {
	fd, err := unix.Open("/dev/cuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/cuse (is cuse.ko loaded? the kernel needs CONFIG_CUSE): %w", err)
	}
	d, err := start(fd, name, h)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	return d, nil
}

// start answers CUSE_INIT on fd, an open /dev/cuse (or, in tests, a
// SOCK_SEQPACKET socket, which keeps message boundaries as /dev/cuse does).
func start(fd int, name string, h Handler) (*Device, error) {
	d := &Device{fd: fd, handler: h, slots: make(chan struct{}, 16)}
	if err := d.init(name); err != nil {
		return nil, err
	}
	return d, nil
}

// Close ends the device; /dev/<name> goes away.
func (d *Device) Close() error { return unix.Close(d.fd) }

// read reads one request, retrying interrupted reads.
func (d *Device) read(buf []byte) (int, error) {
	for {
		n, err := unix.Read(d.fd, buf)
		if err == unix.EINTR {
			continue
		}
		return n, err
	}
}

// init answers CUSE_INIT, the first request, with our limits, unrestricted
// ioctls, and DEVNAME.
func (d *Device) init(name string) error {
	buf := make([]byte, readBuf)
	n, err := d.read(buf)
	if err != nil {
		return fmt.Errorf("reading CUSE_INIT from /dev/cuse: %w", err)
	}
	if n < inHeaderSize+16 {
		return fmt.Errorf("CUSE_INIT of %d bytes", n)
	}
	op := binary.LittleEndian.Uint32(buf[4:])
	unique := binary.LittleEndian.Uint64(buf[8:])
	if op != opCuseInit {
		return fmt.Errorf("first CUSE request is opcode %d, want CUSE_INIT (%d)", op, opCuseInit)
	}
	major := binary.LittleEndian.Uint32(buf[inHeaderSize:])
	minor := binary.LittleEndian.Uint32(buf[inHeaderSize+4:])
	if major != kernelMajor || minor < ourMinor {
		return fmt.Errorf("kernel speaks FUSE %d.%d, need %d.%d or newer", major, minor, kernelMajor, ourMinor)
	}
	info := []byte("DEVNAME=" + name + "\x00")
	body := make([]byte, initOutSize, initOutSize+len(info))
	le := binary.LittleEndian
	le.PutUint32(body[0:], kernelMajor)
	le.PutUint32(body[4:], ourMinor)
	le.PutUint32(body[12:], cuseUnrestrictedIoctl)
	le.PutUint32(body[16:], 4096) // max_read
	le.PutUint32(body[20:], 4096) // max_write
	// dev_major, dev_minor 0: the kernel picks a dynamic number.
	body = append(body, info...)
	return d.reply(unique, 0, body)
}

// reply writes one answer; each write must be one whole message.
func (d *Device) reply(unique uint64, errno unix.Errno, body []byte) error {
	msg := make([]byte, outHeaderSize+len(body))
	le := binary.LittleEndian
	le.PutUint32(msg[0:], uint32(len(msg)))
	le.PutUint32(msg[4:], uint32(-int32(errno)))
	le.PutUint64(msg[8:], unique)
	copy(msg[outHeaderSize:], body)
	d.wmu.Lock()
	defer d.wmu.Unlock()
	_, err := unix.Write(d.fd, msg)
	if errors.Is(err, unix.ENOENT) {
		// The request was interrupted and is gone: nothing to answer.
		return nil
	}
	return err
}

// Serve answers requests until the device is closed or fails. Ioctl rounds
// with more than smallIoctl bytes of input (those that carry a request) are
// handled on their own goroutines (at most 16 at once), so a slow one does
// not hold up opens, closes and other callers' first rounds.
func (d *Device) Serve() error {
	buf := make([]byte, readBuf)
	for {
		n, err := d.read(buf)
		if err != nil {
			if errors.Is(err, unix.ENODEV) || errors.Is(err, unix.EBADF) {
				return nil
			}
			return fmt.Errorf("reading /dev/cuse: %w", err)
		}
		if n < inHeaderSize {
			return fmt.Errorf("short CUSE request of %d bytes", n)
		}
		le := binary.LittleEndian
		op := le.Uint32(buf[4:])
		unique := le.Uint64(buf[8:])
		body := buf[inHeaderSize:n]
		switch op {
		case opInterrupt:
			// No reply: the ioctl in flight finishes on its own.
		case opOpen:
			err = d.reply(unique, 0, make([]byte, 16)) // fuse_open_out: fh 0, no flags
		case opRelease:
			err = d.reply(unique, 0, nil)
		case opRead, opWrite:
			err = d.reply(unique, unix.EINVAL, nil)
		case opIoctl:
			if len(body) < ioctlInSize {
				err = d.reply(unique, unix.EINVAL, nil)
				break
			}
			io := Ioctl{
				Flags:   le.Uint32(body[8:]),
				Cmd:     le.Uint32(body[12:]),
				Arg:     le.Uint64(body[16:]),
				OutSize: le.Uint32(body[28:]),
			}
			inSize := le.Uint32(body[24:])
			if int(inSize) > len(body)-ioctlInSize {
				err = d.reply(unique, unix.EINVAL, nil)
				break
			}
			io.In = append([]byte(nil), body[ioctlInSize:ioctlInSize+int(inSize)]...)
			if inSize <= smallIoctl {
				err = d.answerIoctl(unique, io)
				break
			}
			d.slots <- struct{}{}
			go func() {
				defer func() { <-d.slots }()
				d.answerIoctl(unique, io)
			}()
		default:
			err = d.reply(unique, unix.ENOSYS, nil)
		}
		if err != nil {
			return fmt.Errorf("answering CUSE request %d (opcode %d): %w", unique, op, err)
		}
	}
}

func (d *Device) answerIoctl(unique uint64, io Ioctl) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = d.reply(unique, unix.EIO, nil)
		}
	}()
	r := d.handler(io)
	if r.Errno != 0 {
		return d.reply(unique, r.Errno, nil)
	}
	le := binary.LittleEndian
	if len(r.RetryIn) > 0 || len(r.RetryOut) > 0 {
		body := make([]byte, ioctlOutSize+16*(len(r.RetryIn)+len(r.RetryOut)))
		le.PutUint32(body[4:], ioctlRetry)
		le.PutUint32(body[8:], uint32(len(r.RetryIn)))
		le.PutUint32(body[12:], uint32(len(r.RetryOut)))
		off := ioctlOutSize
		for _, v := range append(append([]Iovec(nil), r.RetryIn...), r.RetryOut...) {
			le.PutUint64(body[off:], v.Base)
			le.PutUint64(body[off+8:], v.Len)
			off += 16
		}
		return d.reply(unique, 0, body)
	}
	if uint32(len(r.Out)) > io.OutSize {
		return d.reply(unique, unix.EIO, nil)
	}
	body := make([]byte, ioctlOutSize+len(r.Out))
	le.PutUint32(body[0:], uint32(r.Result))
	copy(body[ioctlOutSize:], r.Out)
	return d.reply(unique, 0, body)
}
