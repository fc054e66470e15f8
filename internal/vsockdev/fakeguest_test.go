package vsockdev

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nitroinit/nitroinit/internal/hvsock"
	"github.com/nitroinit/nitroinit/internal/vhostuser/frontend"
	"github.com/nitroinit/nitroinit/internal/wait"
	"golang.org/x/sys/unix"
)

// fakeGuest drives the device through its real vhost-user socket as QEMU
// and a guest driver would, packet by packet, so tests can check the wire
// behaviour exactly and misbehave on purpose.
type fakeGuest struct {
	t      testing.TB
	dev    *Device
	hybrid string
	f      *frontend.Frontend
	rxBufs map[uint32][]byte // rx head -> its buffer
	got    []rxPacket        // received, not yet consumed
	log    *wait.Buffer      // the device's log
}

type rxPacket struct {
	h       header
	payload []byte
}

const fakeRing = 64

func newFakeGuest(t testing.TB) *fakeGuest {
	t.Helper()
	return newFakeGuestSized(t, 8<<20, fakeRing)
}

// newFakeGuestSized is newFakeGuest with memSize bytes of guest memory and
// rings of ringSize descriptors.
func newFakeGuestSized(t testing.TB, memSize int, ringSize uint16) *fakeGuest {
	t.Helper()
	dir := t.TempDir()
	log := &wait.Buffer{}
	logf := func(format string, a ...any) {
		t.Helper()
		t.Logf(format, a...)
		fmt.Fprintf(log, format+"\n", a...)
	}
	// ConnectTimeout is what TestFakeGuestHostConnect's "no answer" case
	// waits for; the other cases answer long before it.
	dev, err := New(Config{VhostUserSocket: filepath.Join(dir, "vu.sock"), HybridSocket: filepath.Join(dir, "h.sock"), Logf: logf, ConnectTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- dev.Serve(ctx) }()
	g := &fakeGuest{t: t, dev: dev, hybrid: filepath.Join(dir, "h.sock"), rxBufs: map[uint32][]byte{}, log: log}
	g.f, err = frontend.Dial(filepath.Join(dir, "vu.sock"), memSize)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		g.f.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	if _, err := g.f.Negotiate(); err != nil {
		t.Fatal(err)
	}
	cfg, err := g.f.Config(8)
	if err != nil || binary.LittleEndian.Uint64(cfg) != DefaultGuestCID {
		t.Fatalf("config space %x %v, want guest CID %d", cfg, err, DefaultGuestCID)
	}
	if err := g.f.SetMemTable(); err != nil {
		t.Fatal(err)
	}
	if err := g.f.AddRings(2, ringSize); err != nil {
		t.Fatal(err)
	}
	g.postRx(32)
	return g
}

func (g *fakeGuest) rx() *frontend.Ring { return g.f.Rings[0] }
func (g *fakeGuest) tx() *frontend.Ring { return g.f.Rings[1] }

func (g *fakeGuest) postRx(n int) {
	for range n {
		head, bufs, err := g.rx().AddBuffers(nil, []int{4096})
		if err != nil {
			g.t.Fatal(err)
		}
		g.rxBufs[uint32(head)] = bufs[0]
	}
}

func (g *fakeGuest) send(h header, payload []byte) {
	g.t.Helper()
	h.Len = uint32(len(payload))
	if h.SrcCID == 0 {
		h.SrcCID = DefaultGuestCID
	}
	if h.Type == 0 {
		h.Type = typeStream
	}
	b := make([]byte, hdrSize+len(payload))
	h.encode(b)
	copy(b[hdrSize:], payload)
	g.sendRaw(b)
}

func (g *fakeGuest) sendRaw(b []byte) {
	g.t.Helper()
	if _, _, err := g.tx().AddBuffers([][]byte{b}, nil); err != nil {
		g.t.Fatal(err)
	}
	g.used(g.tx(), "the device to take a packet from the tx ring")
}

// used waits for the device to return buffers on r and returns them. The
// device shows nothing until it does, so the wait is one stall interval of
// internal/wait; Collect sleeps on the ring's interrupt meanwhile, so the
// wait itself polls at once after each try.
func (g *fakeGuest) used(r *frontend.Ring, what string) []frontend.Used {
	g.t.Helper()
	var u []frontend.Used
	wait.Limits{Poll: time.Millisecond}.For(g.t, what, func() (bool, string) {
		u = r.Collect(wait.DefaultPoll)
		return len(u) > 0, ""
	})
	return u
}

// take reads the packets in the rx buffers the device used into g.got and
// reposts the buffers.
func (g *fakeGuest) take(used []frontend.Used) {
	g.t.Helper()
	// Repost only after reading every buffer of the batch: their
	// descriptors are already free and would be reused.
	defer g.postRx(len(used))
	for _, u := range used {
		buf := g.rxBufs[u.ID]
		delete(g.rxBufs, u.ID)
		if u.Len < hdrSize {
			g.t.Fatalf("rx used length %d", u.Len)
		}
		h := decodeHeader(buf)
		if int(h.Len) != int(u.Len)-hdrSize {
			g.t.Fatalf("rx packet %v in a used length of %d", h, u.Len)
		}
		g.got = append(g.got, rxPacket{h: h, payload: append([]byte(nil), buf[hdrSize:u.Len]...)})
	}
}

// recv returns the next packet the device put in the rx queue, waiting for
// it (what says what is awaited) through g.used.
func (g *fakeGuest) recv(what string) rxPacket {
	g.t.Helper()
	if len(g.got) == 0 {
		g.take(g.used(g.rx(), what))
	}
	p := g.got[0]
	g.got = g.got[1:]
	return p
}

// poll returns the next packet if the device sends one within d: for
// checks that nothing comes and for drains, which a slow machine cannot
// fail, so d stays short.
func (g *fakeGuest) poll(d time.Duration) (rxPacket, bool) {
	g.t.Helper()
	if len(g.got) == 0 {
		g.take(g.rx().Collect(d))
	}
	if len(g.got) == 0 {
		return rxPacket{}, false
	}
	p := g.got[0]
	g.got = g.got[1:]
	return p, true
}

// expect returns the next packet, which must be op. Credit updates the
// device volunteers are skipped unless op is one.
func (g *fakeGuest) expect(op uint16) rxPacket {
	g.t.Helper()
	what := "a packet from the device, want " + opName(op)
	p := g.recv(what)
	for p.h.Op == opCreditUpdate && op != opCreditUpdate {
		p = g.recv(what)
	}
	if p.h.Op != op {
		g.t.Fatalf("got %v, want %s", p.h, opName(op))
	}
	return p
}

func (g *fakeGuest) expectNothing(d time.Duration) {
	g.t.Helper()
	if p, ok := g.poll(d); ok {
		g.t.Fatalf("unexpected packet %v", p.h)
	}
}

// connectOut opens a guest->host stream to P_port (listening here) and
// returns the host side.
// restartRings starts and enables every ring again, as a driver does after
// a reset, and posts fresh receive buffers.
func (g *fakeGuest) restartRings() {
	g.t.Helper()
	for _, r := range g.f.Rings {
		if err := g.f.StartRing(r); err != nil {
			g.t.Fatal(err)
		}
	}
	for _, r := range g.f.Rings {
		if err := g.f.Do(frontend.SetVringEnable, frontend.State(uint32(r.Index), 1)); err != nil {
			g.t.Fatal(err)
		}
	}
	g.rxBufs = map[uint32][]byte{}
	g.postRx(32)
}

// streamWorks connects the guest's guestPort to the host's hostPort and
// checks that msg sent by the guest reaches the host (when says after what).
func (g *fakeGuest) streamWorks(guestPort, hostPort uint32, msg, when string) {
	g.t.Helper()
	hc := g.connectOut(guestPort, hostPort, 1<<20)
	g.send(header{DstCID: 3, SrcPort: guestPort, DstPort: hostPort, Op: opRW, BufAlloc: 1 << 20}, []byte(msg))
	b := make([]byte, len(msg))
	if _, err := io.ReadFull(wait.NewConn(hc), b); err != nil || string(b) != msg {
		g.t.Fatalf("%s: %q %v", when, b, err)
	}
}

func (g *fakeGuest) connectOut(guestPort, hostPort uint32, bufAlloc uint32) net.Conn {
	g.t.Helper()
	ln, err := net.Listen("unix", hvsock.ListenPath(g.hybrid, hostPort))
	if err != nil {
		g.t.Fatal(err)
	}
	defer ln.Close()
	g.send(header{DstCID: ParentCID, SrcPort: guestPort, DstPort: hostPort, Op: opRequest, BufAlloc: bufAlloc}, nil)
	p := g.expect(opResponse)
	if p.h.SrcCID != ParentCID || p.h.SrcPort != hostPort || p.h.DstCID != DefaultGuestCID || p.h.DstPort != guestPort {
		g.t.Fatalf("RESPONSE %v does not answer 16:%d -> 3:%d", p.h, guestPort, hostPort)
	}
	c, err := ln.Accept()
	if err != nil {
		g.t.Fatal(err)
	}
	g.t.Cleanup(func() { c.Close() })
	return c
}

func TestFakeGuestStream(t *testing.T) {
	g := newFakeGuest(t)
	hc := wait.NewConn(g.connectOut(5555, 1234, 1<<20))

	g.send(header{DstCID: ParentCID, SrcPort: 5555, DstPort: 1234, Op: opRW, BufAlloc: 1 << 20}, []byte("hello"))
	buf := make([]byte, 5)
	if _, err := io.ReadFull(hc, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("host read %q %v", buf, err)
	}
	// Plenty of credit left: no CREDIT_UPDATE of its own; the reply
	// carries the forwarded count.
	g.expectNothing(100 * time.Millisecond)
	if _, err := hc.Write([]byte("world")); err != nil {
		t.Fatal(err)
	}
	if p := g.expect(opRW); string(p.payload) != "world" || p.h.SrcCID != ParentCID || p.h.SrcPort != 1234 || p.h.DstPort != 5555 || p.h.FwdCnt != 5 || p.h.BufAlloc != bufAlloc {
		t.Fatalf("got %v %q, want RW \"world\" 3:1234->16:5555 with fwd_cnt 5", p.h, p.payload)
	}
	// CREDIT_REQUEST is answered.
	g.send(header{DstCID: ParentCID, SrcPort: 5555, DstPort: 1234, Op: opCreditRequest, BufAlloc: 1 << 20}, nil)
	g.expect(opCreditUpdate)
	// Host half-close reaches the guest as SHUTDOWN(SEND) after the data.
	hc.Write([]byte("bye"))
	hc.CloseWrite()
	if p := g.expect(opRW); string(p.payload) != "bye" {
		t.Fatalf("got %v %q before the shutdown", p.h, p.payload)
	}
	if p := g.expect(opShutdown); p.h.Flags != shutdownSend {
		t.Fatalf("shutdown flags %#x, want SEND", p.h.Flags)
	}
	// The guest closes: SHUTDOWN(both) -> RST, host sees EOF after the
	// last data.
	g.send(header{DstCID: ParentCID, SrcPort: 5555, DstPort: 1234, Op: opRW, BufAlloc: 1 << 20}, []byte("last"))
	g.send(header{DstCID: ParentCID, SrcPort: 5555, DstPort: 1234, Op: opShutdown, Flags: shutdownRcv | shutdownSend}, nil)
	g.expect(opRST)
	rest, err := io.ReadAll(hc)
	if err != nil || string(rest) != "last" {
		t.Fatalf("host read %q %v, want \"last\" then EOF", rest, err)
	}
}

// TestFakeGuestDataBeforeReset: a host client that closes with data it
// never read resets its stream (ECONNRESET on the device's read), and
// what it wrote before that still reaches the guest, ahead of the RST.
func TestFakeGuestDataBeforeReset(t *testing.T) {
	g := newFakeGuest(t)
	hc := g.connectOut(5600, 1240, 1<<20)
	g.send(header{DstCID: ParentCID, SrcPort: 5600, DstPort: 1240, Op: opRW, BufAlloc: 1 << 20}, []byte("unread"))
	raw, err := hc.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	wait.For(t, "the guest's data in the host socket", func() (bool, string) {
		n := 0
		raw.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
		return n == len("unread"), fmt.Sprintf("%d bytes queued", n)
	})
	if _, err := hc.Write([]byte("bye")); err != nil {
		t.Fatal(err)
	}
	hc.Close()
	if p := g.expect(opRW); string(p.payload) != "bye" {
		t.Fatalf("got %v %q, want RW \"bye\" before the reset", p.h, p.payload)
	}
	g.expect(opRST)
}

func TestFakeGuestCredit(t *testing.T) {
	g := newFakeGuest(t)
	hc := g.connectOut(6000, 1235, 1000)
	data := make([]byte, 2500)
	for i := range data {
		data[i] = byte(i)
	}
	if _, err := hc.Write(data); err != nil {
		t.Fatal(err)
	}
	var got []byte
	for len(got) < 1000 {
		p := g.expect(opRW)
		got = append(got, p.payload...)
	}
	if len(got) != 1000 {
		t.Fatalf("device sent %d bytes against a credit of 1000", len(got))
	}
	g.expectNothing(200 * time.Millisecond)
	// The guest read 600 bytes: 600 more may come.
	g.send(header{DstCID: ParentCID, SrcPort: 6000, DstPort: 1235, Op: opCreditUpdate, BufAlloc: 1000, FwdCnt: 600}, nil)
	for len(got) < 1600 {
		got = append(got, g.expect(opRW).payload...)
	}
	g.expectNothing(200 * time.Millisecond)
	g.send(header{DstCID: ParentCID, SrcPort: 6000, DstPort: 1235, Op: opCreditUpdate, BufAlloc: 1000, FwdCnt: 1600}, nil)
	for len(got) < 2500 {
		got = append(got, g.expect(opRW).payload...)
	}
	for i := range got {
		if got[i] != byte(i) {
			t.Fatalf("byte %d is %d", i, got[i])
		}
	}
}

func TestFakeGuestRefused(t *testing.T) {
	g := newFakeGuest(t)
	// Nothing listens on P_4444.
	g.send(header{DstCID: 2, SrcPort: 7000, DstPort: 4444, Op: opRequest, BufAlloc: 4096}, nil)
	if p := g.expect(opRST); p.h.SrcCID != 2 || p.h.SrcPort != 4444 || p.h.DstPort != 7000 {
		t.Fatalf("RST %v does not answer 16:7000 -> 2:4444", p.h)
	}
	// Data for a stream that does not exist is answered with RST; an
	// RST for one is not answered at all.
	g.send(header{DstCID: 3, SrcPort: 7001, DstPort: 4445, Op: opRW}, []byte("x"))
	g.expect(opRST)
	g.send(header{DstCID: 3, SrcPort: 7001, DstPort: 4445, Op: opRST}, nil)
	g.expectNothing(200 * time.Millisecond)
}

// TestFakeGuestMisbehaves feeds the device malformed chains and packets;
// each must be survived, and streams must keep working.
func TestFakeGuestMisbehaves(t *testing.T) {
	g := newFakeGuest(t)
	hc := g.connectOut(8000, 1300, 1<<20)
	tx := g.tx()
	valid := func() []byte {
		b := make([]byte, hdrSize+1)
		(&header{SrcCID: DefaultGuestCID, DstCID: 3, SrcPort: 8000, DstPort: 1300, Len: 1, Type: typeStream, Op: opRW}).encode(b)
		b[hdrSize] = '!'
		return b
	}
	gpa, _ := g.f.Alloc(64)
	tests := []struct {
		name  string
		descs []frontend.Desc
		raw   []byte
		h     *header
	}{
		{name: "descriptor loop", descs: []frontend.Desc{{Addr: gpa, Len: 8, Flags: frontend.DescNext, Next: 1}, {Addr: gpa, Len: 8, Flags: frontend.DescNext, Next: 0}}},
		{name: "address outside memory", descs: []frontend.Desc{{Addr: 0x10, Len: 64}}},
		{name: "length past the end", descs: []frontend.Desc{{Addr: gpa, Len: 0xffffff00}}},
		{name: "next out of range", descs: []frontend.Desc{{Addr: gpa, Len: 8, Flags: frontend.DescNext, Next: 999}}},
		{name: "indirect", descs: []frontend.Desc{{Addr: gpa, Len: 64, Flags: frontend.DescIndirect}}},
		{name: "short header", raw: make([]byte, 20)},
		{name: "len beyond payload", h: &header{DstCID: 3, SrcPort: 8000, DstPort: 1300, Op: opRW, Len: 5000}},
		{name: "spoofed source CID", h: &header{SrcCID: 99, DstCID: 3, SrcPort: 8000, DstPort: 1300, Op: opRST}},
		{name: "unknown op", h: &header{DstCID: 3, SrcPort: 9000, DstPort: 9000, Op: 42}},
		{name: "seqpacket", h: &header{DstCID: 3, SrcPort: 9001, DstPort: 9001, Op: opRequest, Type: 2}},
	}
	for _, tc := range tests {
		switch {
		case tc.descs != nil:
			for i, d := range tc.descs {
				tx.SetDesc(uint16(fakeRing-1-i), d)
			}
			// Shift Next fields onto the descriptors used here.
			for i, d := range tc.descs {
				if d.Flags&frontend.DescNext != 0 && d.Next < uint16(len(tc.descs)) {
					d.Next = uint16(fakeRing - 1 - int(d.Next))
					tx.SetDesc(uint16(fakeRing-1-i), d)
				}
			}
			tx.Publish(fakeRing - 1)
			g.used(tx, "the device to return the "+tc.name+" chain")
		case tc.raw != nil:
			g.sendRaw(tc.raw)
		default:
			b := make([]byte, hdrSize)
			h := *tc.h
			if h.SrcCID == 0 {
				h.SrcCID = DefaultGuestCID
			}
			if h.Type == 0 {
				h.Type = typeStream
			}
			h.encode(b)
			g.sendRaw(b)
		}
		// The stream still works after each.
		g.sendRaw(valid())
		b := make([]byte, 1)
		if _, err := io.ReadFull(wait.NewConn(hc), b); err != nil || b[0] != '!' {
			t.Fatalf("after %s: stream read %q %v", tc.name, b, err)
		}
	}
	// Drain what the device answered (RSTs, credit updates); nothing else
	// must have gone wrong.
	for {
		p, ok := g.poll(300 * time.Millisecond)
		if !ok {
			break
		}
		if p.h.Op != opRST && p.h.Op != opCreditUpdate {
			t.Errorf("unexpected %v", p.h)
		}
	}
}

func TestFakeGuestCreditOverrun(t *testing.T) {
	g := newFakeGuest(t)
	hc := g.connectOut(8100, 1301, 1<<20)
	// The host does not read; the guest ignores the advertised credit.
	chunk := make([]byte, 60<<10)
	// The host socket itself buffers a few hundred KiB: go well past that.
	for sent := 0; sent <= 8*bufAlloc; sent += len(chunk) {
		g.send(header{DstCID: 3, SrcPort: 8100, DstPort: 1301, Op: opRW, BufAlloc: 1 << 20}, chunk)
	}
	// Credit updates may come first.
	for g.recv("an RST after the guest overran its credit").h.Op != opRST {
	}
	if _, err := io.Copy(io.Discard, wait.NewConn(hc)); err != nil && !errors.Is(err, io.EOF) {
		t.Logf("host side after overrun: %v", err)
	}
}

// TestFakeGuestWrappedLength is the attack of issue 10 item 2: with guest
// data waiting for a host client that does not read, a packet claims
// 0xFFFFFFFF payload bytes, and its chain really carries that much: 65
// descriptors that all alias the same 64 MiB of guest memory. A 32-bit
// credit check wrapped and the device copied ~4 GiB onto its heap. It must
// answer RST, count the packet, and keep serving other streams.
func TestFakeGuestWrappedLength(t *testing.T) {
	const alias = 64 << 20
	g := newFakeGuestSized(t, alias+8<<20, 128)
	victim := g.connectOut(8400, 1402, 1<<20)
	other := g.connectOut(8401, 1403, 1<<20)
	// The victim's host client does not read: fill its socket so that
	// guest data stays buffered in the device (within the credit).
	chunk := make([]byte, 60<<10)
	for sent := 0; sent+len(chunk) <= bufAlloc-4096; sent += len(chunk) {
		g.send(header{DstCID: 3, SrcPort: 8400, DstPort: 1402, Op: opRW, BufAlloc: 1 << 20}, chunk)
	}
	for _, length := range []uint32{0xffffffff, 0xffffffff - bufAlloc + 1, maxPacketLen + 1} {
		hdrGPA, hdr := g.f.Alloc(hdrSize)
		(&header{SrcCID: DefaultGuestCID, DstCID: 3, SrcPort: 8400, DstPort: 1402, Len: length, Type: typeStream, Op: opRW, BufAlloc: 1 << 20}).encode(hdr)
		descs := []frontend.Desc{{Addr: hdrGPA, Len: hdrSize}}
		for range 65 {
			descs = append(descs, frontend.Desc{Addr: frontend.GuestBase, Len: alias})
		}
		if _, err := g.tx().AddDescs(descs); err != nil {
			t.Fatal(err)
		}
		if used := g.used(g.tx(), fmt.Sprintf("the device to return the chain claiming %#x bytes", length)); len(used) != 1 {
			t.Fatalf("len %#x: the device did not return the chain (%v)", length, used)
		}
		// The first claim resets the victim; later ones belong to no
		// stream and are answered with RST too.
		if p := g.expect(opRST); p.h.DstPort != 8400 || p.h.SrcPort != 1402 {
			t.Fatalf("len %#x: RST %v is not for the victim stream 16:8400", length, p.h)
		}
	}
	if s := g.dev.Stats(); s.Overruns != 3 {
		t.Errorf("Stats().Overruns = %d, want 3", s.Overruns)
	}
	// The victim's host client sees its stream end; the other stream
	// still carries data both ways.
	if _, err := io.Copy(io.Discard, wait.NewConn(victim)); err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("victim host side: %v", err)
	}
	g.send(header{DstCID: 3, SrcPort: 8401, DstPort: 1403, Op: opRW, BufAlloc: 1 << 20}, []byte("alive"))
	b := make([]byte, 5)
	if _, err := io.ReadFull(wait.NewConn(other), b); err != nil || string(b) != "alive" {
		t.Fatalf("other stream after the attack: %q %v", b, err)
	}
	if _, err := other.Write([]byte("back")); err != nil {
		t.Fatal(err)
	}
	if p := g.expect(opRW); string(p.payload) != "back" || p.h.DstPort != 8401 {
		t.Fatalf("other stream towards the guest: %v %q", p.h, p.payload)
	}
}

// TestFakeGuestRxKicks checks the device's use of VRING_USED_F_NO_NOTIFY
// on the receive queue: while nothing waits for a receive buffer the
// guest's refills need no kick, and when the device runs out of buffers
// with data waiting, the next refill kicks it and the data flows on.
func TestFakeGuestRxKicks(t *testing.T) {
	g := newFakeGuest(t)
	hc := g.connectOut(8500, 1410, 1<<20)
	if g.rx().Suppressed == 0 {
		t.Errorf("the RESPONSE's buffer was reposted with a kick; the device had nothing to send")
	}
	// Far more than the 32 posted buffers of 4 KiB hold.
	data := make([]byte, 600<<10)
	for i := range data {
		data[i] = byte(i % 251)
	}
	go hc.Write(data)
	var got []byte
	for len(got) < len(data) {
		got = append(got, g.expect(opRW).payload...)
	}
	for i := range got {
		if got[i] != byte(i%251) {
			t.Fatalf("byte %d is %d", i, got[i])
		}
	}
}

func TestFakeGuestBrokenRingAndReset(t *testing.T) {
	g := newFakeGuest(t)
	hc := g.connectOut(8200, 1302, 1<<20)
	// The driver claims more buffers than the ring holds.
	g.tx().SetAvailIdx(fakeRing + 5)
	g.tx().Notify()
	wait.For(t, "the device to log the broken tx ring", func() (bool, string) {
		return strings.Contains(g.log.String(), "virtqueue is broken"), fmt.Sprintf("%d bytes of device log", g.log.Len())
	})
	// The driver resets: every stream is dropped, nothing is sent, and
	// the host side sees EOF.
	for _, r := range g.f.Rings {
		if _, err := g.f.StopRing(r); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := wait.NewConn(hc).Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("host side of a reset stream: %d %v, want EOF", n, err)
	}
	g.restartRings()
	// Works again.
	g.streamWorks(8201, 1303, "again", "after reset")
	if s := g.dev.Stats(); s.Resets == 0 {
		t.Errorf("reset not counted: %+v", s)
	}
}

// TestHybridHandshakeLimit checks the bound on hybrid clients that have
// not sent their CONNECT line: past maxHandshakes new clients are closed at
// once, and a slot is free again when a pending client goes away.
func TestHybridHandshakeLimit(t *testing.T) {
	dir := t.TempDir()
	dev, err := New(Config{VhostUserSocket: filepath.Join(dir, "vu.sock"), HybridSocket: filepath.Join(dir, "h.sock"), ConnectTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- dev.Serve(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	dial := func() net.Conn {
		c, err := net.Dial("unix", filepath.Join(dir, "h.sock"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	waitPending := func(n int) {
		t.Helper()
		wait.For(t, fmt.Sprintf("%d handshakes pending", n), func() (bool, string) {
			k := len(dev.handshakes)
			return k == n, fmt.Sprintf("%d handshakes pending", k)
		})
	}
	silent := make([]net.Conn, maxHandshakes)
	for i := range silent {
		silent[i] = dial()
	}
	waitPending(maxHandshakes)
	extra := dial()
	if n, err := wait.NewConn(extra).Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("client past the limit: read %d, %v; want EOF", n, err)
	}
	silent[0].Close()
	waitPending(maxHandshakes - 1)
	again := dial()
	waitPending(maxHandshakes)
	// A negative check: a slow machine can only make it pass, so it stays short.
	again.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := again.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("client after a slot freed: %v, want it kept waiting for its CONNECT line", err)
	}
}

// TestFakeGuestHostConnect covers host->guest: CONNECT, REQUEST to the
// guest, RESPONSE, OK; RST from the guest closes the client without a
// reply; no answer at all times out.
func TestFakeGuestHostConnect(t *testing.T) {
	g := newFakeGuest(t)
	tests := []struct {
		name   string
		answer uint16 // 0: none
		wantOK bool
	}{
		{"accepted", opResponse, true},
		{"refused", opRST, false},
		{"no answer", 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			type result struct {
				c   net.Conn
				err error
			}
			res := make(chan result, 1)
			go func() {
				// The device's ConnectTimeout ends the "no answer" case; the
				// context only bounds a device that never answers at all.
				ctx, cancel := wait.Limits{}.Context(context.Background(), "hvsock.Dial to port 5000")
				defer cancel()
				c, err := hvsock.Dial(ctx, g.hybrid, 5000)
				res <- result{c, err}
			}()
			p := g.expect(opRequest)
			if p.h.SrcCID != ParentCID || p.h.DstPort != 5000 || p.h.SrcPort < firstHostPort {
				t.Fatalf("REQUEST %v", p.h)
			}
			if tc.answer != 0 {
				g.send(header{DstCID: p.h.SrcCID, SrcPort: p.h.DstPort, DstPort: p.h.SrcPort, Op: tc.answer, BufAlloc: 1 << 16}, nil)
			}
			r := <-res
			if tc.wantOK != (r.err == nil) {
				t.Fatalf("Dial: %v, want success %v", r.err, tc.wantOK)
			}
			if tc.answer == 0 {
				// The device gave up and tells the guest.
				g.expect(opRST)
			}
			if r.c != nil {
				r.c.Write([]byte("ping"))
				if q := g.expect(opRW); string(q.payload) != "ping" {
					t.Fatalf("got %v %q", q.h, q.payload)
				}
				r.c.Close()
				// The client vanished: the guest gets a SHUTDOWN.
				g.expect(opShutdown)
			}
		})
	}
}

// TestFakeGuestMemoryFault truncates the guest memory file under the
// device: its next access faults. The device must survive (no crash),
// reset its streams, and serve again once the driver restarts.
func TestFakeGuestMemoryFault(t *testing.T) {
	g := newFakeGuest(t)
	hc := g.connectOut(8300, 1400, 1<<20)
	size := int64(len(g.f.Mem))
	if err := g.f.Resize(0); err != nil {
		t.Fatal(err)
	}
	// Kick without touching the (now faulting) rings ourselves.
	g.tx().Notify()
	if n, err := wait.NewConn(hc).Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("stream survived a fault on guest memory (%d bytes read, %v)", n, err)
	}
	if err := g.f.Resize(size); err != nil {
		t.Fatal(err)
	}
	// The driver restarts with fresh rings.
	for _, r := range g.f.Rings {
		if _, err := g.f.StopRing(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := g.f.SetMemTable(); err != nil {
		t.Fatal(err)
	}
	g.restartRings()
	g.streamWorks(8301, 1401, "alive", "after the fault")
}

// BenchmarkDeviceRoundTrip measures what the device itself adds to a
// round trip, without a VM: a host client writes 64 bytes, the fake guest
// takes the packet from the rx ring and answers on the tx ring, the client
// reads the answer. Compared with the same exchange over a Unix socket.
func BenchmarkDeviceRoundTrip(b *testing.B) {
	g := newFakeGuest(b)
	hc := g.connectOut(9100, 1500, 1<<20)
	// The fake guest marks its methods as helpers on every call; each
	// mark walks the stack (runtime.Callers under the test's mutex), and
	// the eight per round trip took nearly as much CPU as the device
	// loop. Failures still fail the benchmark, at a less exact line.
	g.t = noHelper{b}
	msg := make([]byte, 64)
	reply := make([]byte, 64)
	var fwd uint32
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		if _, err := hc.Write(msg); err != nil {
			b.Fatal(err)
		}
		p := g.expect(opRW)
		fwd += p.h.Len
		g.send(header{DstCID: 3, SrcPort: 9100, DstPort: 1500, Op: opRW, BufAlloc: 1 << 20, FwdCnt: fwd}, p.payload)
		if _, err := io.ReadFull(hc, reply); err != nil {
			b.Fatal(err)
		}
	}
	dev := time.Since(start)
	b.StopTimer()
	u := unixPeer(b, hostEcho)
	defer u.Close()
	base := roundTrips(b, u)
	b.ReportMetric(float64(dev.Nanoseconds())/float64(b.N)/1e3, "device-us/rtt")
	b.ReportMetric(float64(base.Nanoseconds())/float64(b.N)/1e3, "unix-us/rtt")
	b.ReportMetric(float64(dev)/float64(base), "x-unix-time")
}

// noHelper is a testing.TB whose Helper does nothing: for the fake guest's
// hot path in BenchmarkDeviceRoundTrip.
type noHelper struct{ testing.TB }

func (noHelper) Helper() {}
