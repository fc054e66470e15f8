package vhostuser

import (
	"encoding/binary"
	"net"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// fuzzDevice takes every chain QEMU's rings offer when started, as a
// device would, so that ring addresses and descriptors from the fuzzed
// memory are walked.
type fuzzDevice struct{ chains int }

func (b *fuzzDevice) Features() uint64 { return 0 }
func (b *fuzzDevice) Config() []byte   { return []byte{16, 0, 0, 0, 0, 0, 0, 0} }
func (b *fuzzDevice) NumQueues() int   { return 2 }
func (b *fuzzDevice) Stop()            {}
func (b *fuzzDevice) Start(qs []*Queue) {
	var c Chain
	for _, q := range qs {
		for range 2 * int(q.Size()) {
			ok, err := q.Pop(&c)
			if err != nil && !ok {
				continue
			}
			if !ok {
				break
			}
			b.chains++
			q.Push(c.Head, 0)
		}
	}
}

const (
	fuzzMemSize = 64 << 10
	fuzzUser    = 0x7f00_0000_0000 // QEMU's address of guest memory
)

// fuzzMsg encodes one message of the fuzz input: request, flags, claimed
// payload size (which may differ from the payload that follows).
func fuzzMsg(req, flags uint8, payload []byte) []byte {
	b := []byte{req, flags, 0, 0}
	binary.LittleEndian.PutUint16(b[2:], uint16(len(payload)))
	return append(b, payload...)
}

func fuzzState(i, n uint32) []byte {
	return binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(nil, i), n)
}

// fuzzSetup is what QEMU sends to start a guest driver: one 64 KiB region
// and two rings of 16 descriptors at fixed places in it.
func fuzzSetup() []byte {
	var in []byte
	u64 := func(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }
	in = append(in, fuzzMsg(reqGetFeatures, 0, nil)...)
	in = append(in, fuzzMsg(reqGetProtocolFeatures, 0, nil)...)
	in = append(in, fuzzMsg(reqSetProtocolFeatures, 0, u64(offeredProto))...)
	in = append(in, fuzzMsg(reqSetOwner, 0, nil)...)
	in = append(in, fuzzMsg(reqGetConfig, 0, make([]byte, 12+8))...)
	in = append(in, fuzzMsg(reqSetFeatures, 0, u64(FeatureVersion1|featureProtocol))...)
	table := make([]byte, 8+32)
	binary.LittleEndian.PutUint32(table, 1)
	binary.LittleEndian.PutUint64(table[8:], 0)            // guest-physical
	binary.LittleEndian.PutUint64(table[16:], fuzzMemSize) // size
	binary.LittleEndian.PutUint64(table[24:], fuzzUser)    // QEMU address
	in = append(in, fuzzMsg(reqSetMemTable, flagNeedReply, table)...)
	for q := range uint32(2) {
		base := uint64(q) * 0x1000
		addr := make([]byte, 40)
		binary.LittleEndian.PutUint32(addr, q)
		binary.LittleEndian.PutUint64(addr[8:], fuzzUser+base)
		binary.LittleEndian.PutUint64(addr[16:], fuzzUser+base+0x400)
		binary.LittleEndian.PutUint64(addr[24:], fuzzUser+base+0x200)
		in = append(in, fuzzMsg(reqSetVringNum, 0, fuzzState(q, 16))...)
		in = append(in, fuzzMsg(reqSetVringBase, 0, fuzzState(q, 0))...)
		in = append(in, fuzzMsg(reqSetVringAddr, 0, addr)...)
		in = append(in, fuzzMsg(reqSetVringKick, 0, u64(uint64(q)))...)
		in = append(in, fuzzMsg(reqSetVringCall, 0, u64(uint64(q)))...)
	}
	for q := range uint32(2) {
		in = append(in, fuzzMsg(reqSetVringEnable, 0, fuzzState(q, 1))...)
	}
	return in
}

// fuzzRings is guest memory with one two-descriptor chain available on
// queue 1 (descriptors at 0x1000, available ring at 0x1200).
func fuzzRings() []byte {
	mem := make([]byte, 0x2000)
	d := mem[0x1000:]
	binary.LittleEndian.PutUint64(d[0:], 0x1800)
	binary.LittleEndian.PutUint32(d[8:], 44)
	binary.LittleEndian.PutUint16(d[12:], descFlagNext)
	binary.LittleEndian.PutUint16(d[14:], 1)
	binary.LittleEndian.PutUint64(d[16:], 0x1900)
	binary.LittleEndian.PutUint32(d[24:], 100)
	binary.LittleEndian.PutUint16(mem[0x1200+2:], 1) // avail idx
	return mem
}

// FuzzServerMessages feeds the vhost-user server a stream of front-end
// messages built from the input, with the file descriptors QEMU would
// attach (a memfd for SET_MEM_TABLE, eventfds for the ring and log
// requests), and guest memory from the second input. Whatever the front
// end sends, the server must not panic, must answer or end the
// connection, and must close every descriptor it was given.
func FuzzServerMessages(f *testing.F) {
	f.Add(fuzzSetup(), fuzzRings())
	getBase := fuzzMsg(reqGetVringBase, 0, fuzzState(1, 0))
	f.Add(append(fuzzSetup(), getBase...), fuzzRings())
	f.Add(fuzzMsg(reqSetMemTable, 0, make([]byte, 8+32*8)), []byte{})
	f.Add(fuzzMsg(reqGetConfig, 0, make([]byte, 4000)), []byte{})
	f.Fuzz(func(t *testing.T, in, mem []byte) {
		if len(in) > 16<<10 {
			return
		}
		before := openFds(t)
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		front := os.NewFile(uintptr(fds[0]), "front end")
		bf := os.NewFile(uintptr(fds[1]), "back end")
		fc, err := net.FileConn(bf) // a duplicate
		bf.Close()
		if err != nil {
			t.Fatal(err)
		}
		back := fc.(*net.UnixConn)
		memfd, err := unix.MemfdCreate("guest", unix.MFD_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Ftruncate(memfd, fuzzMemSize); err != nil {
			t.Fatal(err)
		}
		if len(mem) > fuzzMemSize {
			mem = mem[:fuzzMemSize]
		}
		if _, err := unix.Pwrite(memfd, mem, 0); err != nil {
			t.Fatal(err)
		}
		// The whole input goes into the socket before the server reads
		// it, so the run is one goroutine and its coverage repeatable.
		sent := 0
		for len(in) >= 4 && sent < 64 {
			req, flags, size := uint32(in[0]), uint32(in[1]), binary.LittleEndian.Uint16(in[2:])
			in = in[4:]
			n := min(int(size), len(in))
			msg := make([]byte, 12+n)
			binary.LittleEndian.PutUint32(msg[0:], req)
			binary.LittleEndian.PutUint32(msg[4:], flagVersion|flags&flagNeedReply)
			binary.LittleEndian.PutUint32(msg[8:], uint32(size))
			copy(msg[12:], in[:n])
			in = in[n:]
			var attach []int
			switch req {
			case reqSetMemTable:
				regions := 1
				if n >= 4 {
					regions = int(min(binary.LittleEndian.Uint32(msg[12:]), maxFds))
				}
				for range regions {
					attach = append(attach, memfd)
				}
			case reqSetVringKick, reqSetVringCall, reqSetVringErr, reqSetLogFd, reqSetLogBase:
				efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
				if err != nil {
					t.Fatal(err)
				}
				attach = append(attach, efd)
			}
			var oob []byte
			if len(attach) > 0 {
				oob = unix.UnixRights(attach...)
			}
			err := unix.Sendmsg(fds[0], msg, oob, nil, unix.MSG_DONTWAIT)
			if req != reqSetMemTable {
				for _, fd := range attach {
					unix.Close(fd)
				}
			}
			if err != nil {
				break // socket full: the server reads what was sent
			}
			sent++
		}
		unix.Close(memfd)
		unix.Shutdown(fds[0], unix.SHUT_WR)
		s := &Server{dev: &fuzzDevice{}, logf: func(string, ...any) {}}
		s.serveConn(back)
		back.Close()
		front.Close()
		if after := openFds(t); after != before {
			t.Fatalf("%d descriptors open after the connection, %d before", after, before)
		}
	})
}

func openFds(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}
