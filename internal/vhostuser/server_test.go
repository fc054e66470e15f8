package vhostuser_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nitroinit/nitroinit/internal/vhostuser"
	"github.com/nitroinit/nitroinit/internal/vhostuser/frontend"
	"github.com/nitroinit/nitroinit/internal/wait"
	"golang.org/x/sys/unix"
)

// recDevice records Start and Stop; the test goroutine uses the queues
// in between, as a device's worker would.
type recDevice struct {
	mu    sync.Mutex // held by the test while it uses the queues
	start chan []*vhostuser.Queue
	stop  chan struct{}
}

func (b *recDevice) Features() uint64 { return 1 << 1 }
func (b *recDevice) Config() []byte   { return []byte{16, 0, 0, 0, 0, 0, 0, 0} }
func (b *recDevice) NumQueues() int   { return 2 }
func (b *recDevice) Start(qs []*vhostuser.Queue) {
	b.start <- qs
}
func (b *recDevice) Stop() {
	// Like a real device, return only once the queues are no longer in
	// use.
	b.mu.Lock()
	defer b.mu.Unlock()
	b.stop <- struct{}{}
}

func serve(t *testing.T) (*recDevice, string, *vhostuser.Server) {
	t.Helper()
	b := &recDevice{start: make(chan []*vhostuser.Queue, 16), stop: make(chan struct{}, 16)}
	path := filepath.Join(t.TempDir(), "vu.sock")
	s, err := vhostuser.Listen(path, b, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background()) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if _, err := os.Stat(path); err == nil {
			t.Errorf("socket %s left behind after Close", path)
		}
	})
	return b, path, s
}

func setup(t *testing.T, path string) *frontend.Frontend {
	t.Helper()
	f, err := frontend.Dial(path, 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Negotiate(); err != nil {
		t.Fatal(err)
	}
	if err := f.SetMemTable(); err != nil {
		t.Fatal(err)
	}
	if err := f.AddRings(2, 16); err != nil {
		t.Fatal(err)
	}
	return f
}

func waitStart(t *testing.T, b *recDevice) []*vhostuser.Queue {
	t.Helper()
	var qs []*vhostuser.Queue
	wait.For(t, "the device to be started", wait.Receive(b.start, &qs))
	return qs
}

func waitStop(t *testing.T, b *recDevice) {
	t.Helper()
	wait.For(t, "the device to be stopped", wait.Receive(b.stop, nil))
}

func TestFlow(t *testing.T) {
	b, path, _ := serve(t)
	f, err := frontend.Dial(path, 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	features, err := f.Negotiate()
	if err != nil {
		t.Fatal(err)
	}
	if want := uint64(1<<32 | 1<<30 | 1<<1); features != want {
		t.Errorf("features %#x, want %#x", features, want)
	}
	cfg, err := f.Config(8)
	if err != nil || binary.LittleEndian.Uint64(cfg) != 16 {
		t.Fatalf("config %x %v, want CID 16", cfg, err)
	}
	if err := f.SetMemTable(); err != nil {
		t.Fatal(err)
	}
	if err := f.AddRings(2, 16); err != nil {
		t.Fatal(err)
	}
	qs := waitStart(t, b)
	if len(qs) != 2 {
		t.Fatalf("%d queues", len(qs))
	}
	tx := f.Rings[1]
	for i := range 3 {
		if _, _, err := tx.AddBuffers([][]byte{[]byte("packet")}, nil); err != nil {
			t.Fatal(err)
		}
		wait.For(t, fmt.Sprintf("kick %d to reach the device", i), wait.Receive(qs[1].Kick(), nil))
		var c vhostuser.Chain
		b.mu.Lock()
		ok, err := qs[1].Pop(&c)
		if !ok || err != nil || string(c.Readable[0]) != "packet" {
			b.mu.Unlock()
			t.Fatalf("Pop: %v %v %q", ok, err, c.Readable)
		}
		qs[1].Push(c.Head, 0)
		qs[1].Notify()
		b.mu.Unlock()
		var v [8]byte
		if _, err := unix.Read(tx.Call, v[:]); err != nil {
			t.Fatalf("no interrupt after Notify: %v", err)
		}
	}
	var used []frontend.Used
	wait.For(t, "3 used elements", func() (bool, string) {
		used = append(used, tx.Collect(0)...)
		return len(used) >= 3, fmt.Sprintf("%d used elements", len(used))
	})
	if len(used) != 3 {
		t.Fatalf("%d used elements, want 3", len(used))
	}
	// Driver stop: disable, GET_VRING_BASE stops the device first and
	// reports where the ring stopped.
	base, err := f.StopRing(tx)
	waitStop(t, b)
	if err != nil || base != 3 {
		t.Fatalf("GET_VRING_BASE = %d %v, want 3", base, err)
	}
	// Driver reload: the ring comes back at base 0.
	if err := f.StartRing(tx); err != nil {
		t.Fatal(err)
	}
	if err := f.Do(frontend.SetVringEnable, frontend.State(1, 1)); err != nil {
		t.Fatal(err)
	}
	qs = waitStart(t, b)
	b.mu.Lock()
	restartedAt := qs[1].LastAvail()
	b.mu.Unlock()
	if restartedAt != 0 {
		t.Fatalf("restarted ring at %d, want 0", restartedAt)
	}
	// QEMU goes away: the device is stopped.
	f.Close()
	waitStop(t, b)
}

func TestNextFrontEnd(t *testing.T) {
	b, path, _ := serve(t)
	for range 3 {
		f := setup(t, path)
		waitStart(t, b)
		f.Close()
		waitStop(t, b)
	}
}

func countFds(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func countMappings(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "memfd:guest")
}

// TestNoLeaks replaces call fds and memory tables many times, as QEMU
// does, and checks that no fd or mapping survives the connection.
func TestNoLeaks(t *testing.T) {
	b, path, _ := serve(t)
	fds0, maps0 := countFds(t), countMappings(t)
	f := setup(t, path)
	waitStart(t, b)
	for i := range 50 {
		efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		err = f.Do(frontend.SetVringCall, frontend.U64(uint64(i%2)), efd)
		unix.Close(efd)
		if err != nil {
			t.Fatal(err)
		}
	}
	for range 10 {
		if err := f.SetMemTable(); err != nil {
			t.Fatal(err)
		}
		waitStopOrNot(b)
		if err := f.Do(frontend.SetVringKick, frontend.U64(1), f.Rings[1].Kick); err != nil {
			t.Fatal(err)
		}
		waitStartOrNot(b)
	}
	// The front end's own memfd mapping is one of the mappings.
	if n := countMappings(t); n > maps0+2 {
		t.Errorf("%d guest memory mappings while connected, want at most 2 (ours and the server's)", n-maps0)
	}
	f.Close()
	waitStop(t, b)
	wait.For(t, "the connection's fds and mappings to go", func() (bool, string) {
		fds, maps := countFds(t), countMappings(t)
		return fds == fds0 && maps == maps0, fmt.Sprintf("%d fds (was %d), %d guest mappings (was %d)", fds, fds0, maps, maps0)
	})
}

// waitStopOrNot and waitStartOrNot only drain: with REPLY_ACK the device
// has been stopped and started before the request returns, and a late one
// cannot fail the test, so their short bound stays.
func waitStopOrNot(b *recDevice) {
	select {
	case <-b.stop:
	case <-time.After(100 * time.Millisecond):
	}
}

func waitStartOrNot(b *recDevice) {
	select {
	case <-b.start:
	case <-time.After(100 * time.Millisecond):
	}
}

// TestBadRequests sends malformed messages; the server answers with a
// failed ack and stays usable, or drops a connection it can no longer
// parse, but never crashes.
func TestBadRequests(t *testing.T) {
	tests := []struct {
		name      string
		req       uint32
		payload   []byte
		withFd    bool
		wantAlive bool
	}{
		{"unknown request", 99, nil, false, true},
		{"queue index out of range", frontend.SetVringNum, frontend.State(7, 16), false, true},
		{"ring size not a power of two", frontend.SetVringNum, frontend.State(0, 100), false, true},
		{"short payload", frontend.SetVringAddr, []byte{1, 2, 3}, false, true},
		{"kick without fd", frontend.SetVringKick, frontend.U64(0), false, true},
		{"memory table without fds", frontend.SetMemTable, append(frontend.State(1, 0), make([]byte, 32)...), false, true},
		{"memory table of 9 regions", frontend.SetMemTable, append(frontend.State(9, 0), make([]byte, 9*32)...), false, true},
		{"mmap beyond the file", frontend.SetMemTable, append(frontend.State(1, 0), memRegion(0, 1<<40, 0x1000, 0)...), true, true},
		{"oversized payload", frontend.SetFeatures, make([]byte, 8192), false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, path, _ := serve(t)
			f, err := frontend.Dial(path, 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.Negotiate(); err != nil {
				t.Fatal(err)
			}
			var fds []int
			if tc.withFd {
				efd, _ := unix.MemfdCreate("x", unix.MFD_CLOEXEC)
				defer unix.Close(efd)
				fds = append(fds, efd)
			}
			if err := f.Send(tc.req, 0x8, tc.payload, fds...); err != nil {
				t.Fatal(err)
			}
			p, err := f.Reply(tc.req)
			if !tc.wantAlive {
				if err == nil {
					t.Fatalf("server answered %x to an unparseable message", p)
				}
				return
			}
			if err != nil || len(p) != 8 || binary.LittleEndian.Uint64(p) == 0 {
				t.Fatalf("ack %x %v, want a failure status", p, err)
			}
			if _, err := f.Config(8); err != nil {
				t.Fatalf("connection unusable after the bad request: %v", err)
			}
		})
	}
}

func memRegion(gpa, size, uaddr, off uint64) []byte {
	b := binary.LittleEndian.AppendUint64(nil, gpa)
	b = binary.LittleEndian.AppendUint64(b, size)
	b = binary.LittleEndian.AppendUint64(b, uaddr)
	return binary.LittleEndian.AppendUint64(b, off)
}
