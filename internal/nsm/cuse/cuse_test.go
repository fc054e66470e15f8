package cuse

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/nitroinit/nitroinit/internal/wait"
	"golang.org/x/sys/unix"
)

// kernelSide plays the kernel on the other end of a SOCK_SEQPACKET pair:
// it sends FUSE requests and reads the replies, with the layouts of
// include/uapi/linux/fuse.h.
type kernelSide struct {
	t      *testing.T
	fd     int
	unique uint64
}

func (k *kernelSide) send(op uint32, body []byte) uint64 {
	k.unique++
	msg := make([]byte, inHeaderSize+len(body))
	le := binary.LittleEndian
	le.PutUint32(msg[0:], uint32(len(msg)))
	le.PutUint32(msg[4:], op)
	le.PutUint64(msg[8:], k.unique)
	copy(msg[inHeaderSize:], body)
	if _, err := unix.Write(k.fd, msg); err != nil {
		k.t.Fatal(err)
	}
	return k.unique
}

// reply reads one reply and returns its errno (positive) and body.
func (k *kernelSide) reply(unique uint64) (unix.Errno, []byte) {
	buf := make([]byte, 1<<16)
	// A reply shows no progress until it is whole: a plain stall interval.
	tv := unix.NsecToTimeval(int64(wait.DefaultStall))
	unix.SetsockoptTimeval(k.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	n, err := unix.Read(k.fd, buf)
	if err != nil {
		k.t.Fatalf("no reply to request %d: %v", unique, err)
	}
	le := binary.LittleEndian
	if int(le.Uint32(buf[0:])) != n || le.Uint64(buf[8:]) != unique {
		k.t.Fatalf("reply header %x: want len %d, unique %d", buf[:outHeaderSize], n, unique)
	}
	return unix.Errno(-int32(le.Uint32(buf[4:]))), buf[outHeaderSize:n]
}

func ioctlIn(cmd uint32, arg uint64, in []byte, outSize uint32) []byte {
	b := make([]byte, ioctlInSize+len(in))
	le := binary.LittleEndian
	le.PutUint32(b[8:], IoctlUnrestricted)
	le.PutUint32(b[12:], cmd)
	le.PutUint64(b[16:], arg)
	le.PutUint32(b[24:], uint32(len(in)))
	le.PutUint32(b[28:], outSize)
	copy(b[ioctlInSize:], in)
	return b
}

func TestProtocol(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	k := &kernelSide{t: t, fd: fds[0]}
	defer unix.Close(fds[0])
	initIn := make([]byte, 16)
	binary.LittleEndian.PutUint32(initIn[0:], 7)
	binary.LittleEndian.PutUint32(initIn[4:], 41)
	binary.LittleEndian.PutUint32(initIn[12:], 1)
	u := k.send(opCuseInit, initIn)
	handler := func(io Ioctl) IoctlReply {
		switch {
		case io.Cmd != 7:
			return IoctlReply{Errno: unix.EINVAL}
		case len(io.In) == 0:
			return IoctlReply{RetryIn: []Iovec{{io.Arg, 4}}, RetryOut: []Iovec{{io.Arg, 4}}}
		}
		return IoctlReply{Result: 5, Out: bytes.ToUpper(io.In)}
	}
	devc := make(chan *Device, 1)
	go func() {
		d, err := start(fds[1], "nsm", handler)
		if err != nil {
			t.Error(err)
		}
		devc <- d
	}()
	errno, body := k.reply(u)
	le := binary.LittleEndian
	if errno != 0 || len(body) != initOutSize+len("DEVNAME=nsm\x00") || le.Uint32(body[0:]) != 7 || le.Uint32(body[4:]) != ourMinor ||
		le.Uint32(body[12:])&cuseUnrestrictedIoctl == 0 || string(body[initOutSize:]) != "DEVNAME=nsm\x00" {
		t.Fatalf("CUSE_INIT reply: errno %v body %x", errno, body)
	}
	d := <-devc
	served := make(chan error, 1)
	go func() { served <- d.Serve() }()

	if errno, body := k.reply(k.send(opOpen, make([]byte, 8))); errno != 0 || len(body) != 16 {
		t.Errorf("OPEN: %v %x", errno, body)
	}
	// Round 1: no input yet, so the handler asks for a retry.
	errno, body = k.reply(k.send(opIoctl, ioctlIn(7, 0x1000, nil, 0)))
	if errno != 0 || le.Uint32(body[4:]) != ioctlRetry || le.Uint32(body[8:]) != 1 || le.Uint32(body[12:]) != 1 ||
		le.Uint64(body[16:]) != 0x1000 || le.Uint64(body[24:]) != 4 {
		t.Errorf("ioctl round 1: %v %x", errno, body)
	}
	// Round 2: the input is there; the answer goes back with the result.
	errno, body = k.reply(k.send(opIoctl, ioctlIn(7, 0x1000, []byte("abcd"), 4)))
	if errno != 0 || int32(le.Uint32(body[0:])) != 5 || le.Uint32(body[4:]) != 0 || string(body[ioctlOutSize:]) != "ABCD" {
		t.Errorf("ioctl round 2: %v %x", errno, body)
	}
	if errno, _ := k.reply(k.send(opIoctl, ioctlIn(8, 0, nil, 0))); errno != unix.EINVAL {
		t.Errorf("other ioctl: %v, want EINVAL", errno)
	}
	// INTERRUPT has no reply: the next reply is RELEASE's.
	k.send(opInterrupt, make([]byte, 8))
	if errno, _ := k.reply(k.send(opRelease, make([]byte, 24))); errno != 0 {
		t.Errorf("RELEASE: %v", errno)
	}
	if errno, _ := k.reply(k.send(opRead, make([]byte, 40))); errno != unix.EINVAL {
		t.Errorf("READ: %v, want EINVAL", errno)
	}
	if errno, _ := k.reply(k.send(9999, nil)); errno != unix.ENOSYS {
		t.Errorf("unknown opcode: %v, want ENOSYS", errno)
	}
	unix.Shutdown(fds[0], unix.SHUT_RDWR)
	wait.For(t, "Serve to return after the peer went away", wait.Receive(served, nil))
	d.Close()
}
