package nsmdev

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nitroinit/nitroinit/internal/nitro"
	"github.com/nitroinit/nitroinit/internal/nsm/cuse"
)

func raw(reqAddr, reqLen, respAddr, respLen uint64) []byte {
	b := make([]byte, rawSize)
	for i, v := range []uint64{reqAddr, reqLen, respAddr, respLen} {
		binary.LittleEndian.PutUint64(b[8*i:], v)
	}
	return b
}

// The three rounds of an unrestricted ioctl, as the kernel drives them.
func TestIoctlRounds(t *testing.T) {
	echo := func(req []byte) ([]byte, error) { return append([]byte("re:"), req...), nil }
	const arg = 0x1000
	io := cuse.Ioctl{Cmd: nitro.NSMIoctlRaw, Arg: arg, Flags: cuse.IoctlUnrestricted}
	r := Ioctl(echo, io)
	if len(r.RetryIn) != 1 || r.RetryIn[0] != (cuse.Iovec{Base: arg, Len: 32}) || len(r.RetryOut) != 1 {
		t.Fatalf("round 1: %+v", r)
	}
	io.In = raw(0x2000, 5, 0x3000, 0x3000)
	r = Ioctl(echo, io)
	if len(r.RetryIn) != 2 || r.RetryIn[1] != (cuse.Iovec{Base: 0x2000, Len: 5}) || r.RetryOut[1] != (cuse.Iovec{Base: 0x3000, Len: 0x3000}) {
		t.Fatalf("round 2: %+v", r)
	}
	io.In = append(raw(0x2000, 5, 0x3000, 0x3000), "hello"...)
	io.OutSize = 32 + 0x3000
	r = Ioctl(echo, io)
	if r.Errno != 0 || len(r.Out) != 32+8 || !bytes.Equal(r.Out[32:], []byte("re:hello")) || binary.LittleEndian.Uint64(r.Out[24:]) != 8 {
		t.Fatalf("round 3: %+v", r)
	}
	for _, tc := range []struct {
		name string
		io   cuse.Ioctl
		fwd  func([]byte) ([]byte, error)
		want unix.Errno
	}{
		{"other ioctl", cuse.Ioctl{Cmd: 0x5401, Flags: cuse.IoctlUnrestricted}, echo, unix.EINVAL},
		{"request over 0x1000", cuse.Ioctl{Cmd: nitro.NSMIoctlRaw, Flags: cuse.IoctlUnrestricted, In: raw(1, 5000, 2, 0x3000)}, echo, unix.EMSGSIZE},
		{"empty request", cuse.Ioctl{Cmd: nitro.NSMIoctlRaw, Flags: cuse.IoctlUnrestricted, In: raw(1, 0, 2, 0x3000)}, echo, unix.EINVAL},
		{"answer larger than the buffer", cuse.Ioctl{Cmd: nitro.NSMIoctlRaw, Flags: cuse.IoctlUnrestricted, In: append(raw(1, 1, 2, 3), 'x')}, echo, unix.EMSGSIZE},
		{"host gone", cuse.Ioctl{Cmd: nitro.NSMIoctlRaw, Flags: cuse.IoctlUnrestricted, In: append(raw(1, 1, 2, 64), 'x')},
			func([]byte) ([]byte, error) { return nil, errors.New("gone") }, unix.EIO},
	} {
		if r := Ioctl(tc.fwd, tc.io); r.Errno != tc.want {
			t.Errorf("%s: %+v, want errno %v", tc.name, r, tc.want)
		}
	}
}
