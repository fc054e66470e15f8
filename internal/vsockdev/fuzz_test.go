package vsockdev

import (
	"encoding/binary"
	"net"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nitroinit/nitroinit/internal/vhostuser"
)

// Guest memory layout of FuzzDevicePackets: the fuzz input is copied over
// the start of a 64 KiB region at guest-physical 0, so it holds both rings
// (descriptor tables, available and used rings) and the packets; the
// rest of memory is where seeds put receive buffers.
const (
	fuzzMem       = 64 << 10
	fuzzRing      = 16
	fuzzTxDesc    = 0x000
	fuzzTxAvail   = 0x100
	fuzzRxDesc    = 0x140
	fuzzRxAvail   = 0x240
	fuzzTxUsed    = 0x280
	fuzzRxUsed    = 0x310
	fuzzPackets   = 0x400 // seeds put packets from here
	fuzzInputMax  = 0x800 // longer inputs are cut
	fuzzRxBuffers = 0x1000

	// A second region of zeros, larger than 4 GiB, lets one descriptor
	// cover what a guest with much memory could alias many times over.
	// It is mapped once without reserve: reading it costs no memory, and
	// the pages a run writes (receive buffers placed there) are dropped
	// after each run.
	fuzzZeroGPA  = 1 << 32
	fuzzZeroSize = 5 << 30
)

var fuzzZero = sync.OnceValues(func() ([]byte, error) {
	return unix.Mmap(-1, 0, fuzzZeroSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
})

// fuzzImage builds a seed: tx chains (each a list of buffers, the first
// normally holding a header) and n receive buffers of rxLen bytes.
type fuzzImage struct {
	mem      []byte
	next     uint64 // next free byte for packet data
	txD, rxD uint16 // next free descriptor
	txN, rxN uint16 // chains published
	rxNext   uint64
}

func newFuzzImage() *fuzzImage {
	return &fuzzImage{mem: make([]byte, fuzzInputMax), next: fuzzPackets, rxNext: fuzzRxBuffers}
}

func (im *fuzzImage) desc(table uint64, i uint16, addr uint64, n uint32, flags, next uint16) {
	b := im.mem[table+16*uint64(i):]
	binary.LittleEndian.PutUint64(b[0:], addr)
	binary.LittleEndian.PutUint32(b[8:], n)
	binary.LittleEndian.PutUint16(b[12:], flags)
	binary.LittleEndian.PutUint16(b[14:], next)
}

func (im *fuzzImage) publish(avail uint64, n *uint16, head uint16) {
	binary.LittleEndian.PutUint16(im.mem[avail+4+2*uint64(*n%fuzzRing):], head)
	*n++
	binary.LittleEndian.PutUint16(im.mem[avail+2:], *n)
}

// put stores b among the packets and returns its address.
func (im *fuzzImage) put(b []byte) uint64 {
	a := im.next
	copy(im.mem[a:], b)
	im.next += uint64(len(b)+7) &^ 7
	return a
}

// tx publishes a chain of the given readable buffers (addr, len pairs).
func (im *fuzzImage) tx(bufs ...[2]uint64) {
	head := im.txD
	for k, b := range bufs {
		var flags, next uint16
		if k+1 < len(bufs) {
			flags, next = 1, im.txD+1
		}
		im.desc(fuzzTxDesc, im.txD, b[0], uint32(b[1]), flags, next)
		im.txD++
	}
	im.publish(fuzzTxAvail, &im.txN, head)
}

// packet publishes a one-descriptor chain holding h and payload.
func (im *fuzzImage) packet(h header, payload []byte) {
	if h.SrcCID == 0 {
		h.SrcCID = DefaultGuestCID
	}
	if h.Type == 0 {
		h.Type = typeStream
	}
	if h.Len == 0 {
		h.Len = uint32(len(payload))
	}
	b := make([]byte, hdrSize+len(payload))
	h.encode(b)
	copy(b[hdrSize:], payload)
	im.tx([2]uint64{im.put(b), uint64(len(b))})
}

// rx posts n receive buffers of size bytes.
func (im *fuzzImage) rx(n int, size uint32) {
	for range n {
		im.desc(fuzzRxDesc, im.rxD, im.rxNext, size, 2, 0)
		im.publish(fuzzRxAvail, &im.rxN, im.rxD)
		im.rxD++
		im.rxNext += uint64(size)
	}
}

// The streams every fuzz run starts with: one connected (guest port 2000
// to host 3:1000, host data waiting for the guest) and one host-initiated
// stream waiting for the guest's RESPONSE.
var (
	fuzzConnected  = connKey{hostCID: 3, hostPort: 1000, guestPort: 2000}
	fuzzConnecting = connKey{hostCID: 3, hostPort: firstHostPort, guestPort: 5000}
)

func fuzzSeeds() [][]byte {
	toConnected := func(op uint16) header {
		return header{DstCID: 3, SrcPort: 2000, DstPort: 1000, Op: op, BufAlloc: 1 << 16}
	}
	hdr := func(h header) []byte {
		b := make([]byte, hdrSize)
		h.encode(b)
		return b
	}
	builds := []func(im *fuzzImage){
		// A normal exchange: data, split data, credit request, the
		// response to the host's connection, a new connection, shutdown.
		func(im *fuzzImage) {
			im.packet(toConnected(opRW), []byte("hello"))
			h := toConnected(opRW)
			h.Len = 6
			im.tx([2]uint64{im.put(hdr(h)), hdrSize}, [2]uint64{im.put([]byte("wor")), 3}, [2]uint64{im.put([]byte("ld!")), 3})
			im.packet(toConnected(opCreditRequest), nil)
			im.packet(header{DstCID: 3, SrcPort: 5000, DstPort: firstHostPort, Op: opResponse, BufAlloc: 4096}, nil)
			im.packet(header{DstCID: 2, SrcPort: 3000, DstPort: 4000, Op: opRequest, BufAlloc: 4096}, nil)
			h = toConnected(opShutdown)
			h.Flags = shutdownRcv | shutdownSend
			im.packet(h, nil)
			im.rx(8, 512)
		},
		// Issue 10 item 2: with guest data buffered, a wrapped length
		// whose chain really carries more than 4 GiB (the zero region).
		func(im *fuzzImage) {
			im.packet(toConnected(opRW), make([]byte, 200))
			h := toConnected(opRW)
			h.Len = 0xffffffff
			im.tx([2]uint64{im.put(hdr(h)), hdrSize}, [2]uint64{fuzzZeroGPA, 0xffffffff}, [2]uint64{fuzzZeroGPA, 4096})
			im.rx(2, 256)
		},
		// A credit overrun, an RST, garbage for unknown streams.
		func(im *fuzzImage) {
			im.packet(toConnected(opRW), make([]byte, 200))
			h := toConnected(opRW)
			h.Len = bufAlloc
			im.packet(h, nil)
			im.packet(header{DstCID: 3, SrcPort: 5000, DstPort: firstHostPort, Op: opRST}, nil)
			im.packet(header{DstCID: 7, SrcPort: 1, DstPort: 2, Op: 99}, nil)
			im.rx(4, 44)
		},
		// A descriptor loop and a readable-after-writable chain.
		func(im *fuzzImage) {
			im.desc(fuzzTxDesc, 0, fuzzPackets, 8, 1, 1)
			im.desc(fuzzTxDesc, 1, fuzzPackets, 8, 1, 0)
			im.publish(fuzzTxAvail, &im.txN, 0)
			im.desc(fuzzTxDesc, 2, fuzzPackets, 8, 3, 3)
			im.desc(fuzzTxDesc, 3, fuzzPackets, 8, 0, 0)
			im.publish(fuzzTxAvail, &im.txN, 2)
			im.rx(1, 4096)
		},
	}
	var seeds [][]byte
	for _, build := range builds {
		im := newFuzzImage()
		build(im)
		seeds = append(seeds, im.mem)
	}
	return seeds
}

// FuzzDevicePackets feeds the device loop's packet handling guest memory
// the fuzzer writes: both rings and everything the descriptors point to.
// Whatever the guest writes, the device must not panic, must keep every
// stream's buffered guest data within its credit (bufAlloc), and must
// keep its control queue and stream table within their bounds.
func FuzzDevicePackets(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > fuzzInputMax {
			in = in[:fuzzInputMax]
		}
		mem := make([]byte, fuzzMem)
		copy(mem, in)
		// The used elements are the device's to write; start them clean
		// so that the check below sees only what it wrote.
		clear(mem[fuzzTxUsed+4 : fuzzTxUsed+4+8*fuzzRing])
		clear(mem[fuzzRxUsed+4 : fuzzRxUsed+4+8*fuzzRing])
		zero, err := fuzzZero()
		if err != nil {
			t.Fatalf("mapping %d bytes of zeros: %v", fuzzZeroSize, err)
		}
		m, err := vhostuser.NewMemoryFromBytes(
			[]vhostuser.Region{{Size: fuzzMem}, {GuestPhysAddr: fuzzZeroGPA, Size: fuzzZeroSize}},
			[][]byte{mem, zero})
		if err != nil {
			t.Fatal(err)
		}
		rxq, err := vhostuser.NewQueue(0, m, fuzzRing, fuzzRxDesc, fuzzRxAvail, fuzzRxUsed, nil)
		if err != nil {
			t.Fatal(err)
		}
		txq, err := vhostuser.NewQueue(1, m, fuzzRing, fuzzTxDesc, fuzzTxAvail, fuzzTxUsed, nil)
		if err != nil {
			t.Fatal(err)
		}
		d, err := newDevice(Config{})
		if err != nil {
			t.Fatal(err)
		}
		// Dials, readers and writers are not run: their timing would make
		// coverage differ from run to run. The loop's side of each is
		// what is fuzzed here.
		d.spawn = func(func()) {}
		var pipes []net.Conn
		defer unix.Madvise(zero, unix.MADV_DONTNEED)
		defer func() {
			for _, p := range pipes {
				p.Close()
			}
		}()
		for _, k := range []connKey{fuzzConnected, fuzzConnecting} {
			a, b := net.Pipe()
			pipes = append(pipes, a, b)
			st := stConnected
			if k == fuzzConnecting {
				st = stConnecting
			}
			c := d.newConn(k, st, a, nil)
			c.peerBufAlloc = 1 << 16
			if st == stConnected {
				c.pending = []byte("host data for the guest")
				d.markReady(c)
			}
		}
		d.rxq, d.txq = rxq, txq
		for range 2 {
			d.serviceQueues()
			for _, c := range d.conns {
				c.wbuf.mu.Lock()
				n := len(c.wbuf.data)
				c.wbuf.mu.Unlock()
				if c.buffered() > bufAlloc || n > bufAlloc {
					t.Fatalf("%v: %d bytes buffered, %d in the write buffer; the credit is %d", c.key, c.buffered(), n, bufAlloc)
				}
			}
			if len(d.pendingCtrl) > ctrlLimit+2 {
				t.Fatalf("%d control packets queued", len(d.pendingCtrl))
			}
			if len(d.conns) > maxStreams {
				t.Fatalf("%d streams", len(d.conns))
			}
		}
		// Every used element the device wrote stays within memory.
		for _, used := range []uint64{fuzzRxUsed, fuzzTxUsed} {
			for i := range uint64(fuzzRing) {
				if n := binary.LittleEndian.Uint32(mem[used+4+8*i+4:]); n > fuzzMem {
					t.Fatalf("used element %d at %#x reports %d bytes written", i, used, n)
				}
			}
		}
	})
}
