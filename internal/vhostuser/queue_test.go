package vhostuser

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// ring lays a split virtqueue out in a []byte that serves as guest memory
// (the queue code reads it exactly as it reads mapped guest RAM).
type ring struct {
	mem                     []byte
	size                    uint16
	desc, avail, used, data uint64
	availIdx                uint16
}

const testMemBase = 0x10000 // a non-zero guest-physical base catches offset bugs

func newRing(size uint16) *ring {
	r := &ring{mem: make([]byte, 1<<20), size: size}
	r.desc = testMemBase
	r.avail = testMemBase + 0x4000
	r.used = testMemBase + 0x8000
	r.data = testMemBase + 0x10000
	return r
}

func (r *ring) off(gpa uint64) []byte { return r.mem[gpa-testMemBase:] }

func (r *ring) setDesc(i uint16, addr uint64, length uint32, flags, next uint16) {
	d := r.off(r.desc + 16*uint64(i))
	binary.LittleEndian.PutUint64(d[0:], addr)
	binary.LittleEndian.PutUint32(d[8:], length)
	binary.LittleEndian.PutUint16(d[12:], flags)
	binary.LittleEndian.PutUint16(d[14:], next)
}

func (r *ring) publish(head uint16) {
	binary.LittleEndian.PutUint16(r.off(r.avail+4+2*uint64(r.availIdx%r.size)), head)
	r.availIdx++
	binary.LittleEndian.PutUint16(r.off(r.avail+2), r.availIdx)
}

func (r *ring) queue(t *testing.T) *Queue {
	t.Helper()
	m, err := NewMemoryFromBytes([]Region{{GuestPhysAddr: testMemBase, Size: uint64(len(r.mem)), UserAddr: 0x7f0000000000}}, [][]byte{r.mem})
	if err != nil {
		t.Fatal(err)
	}
	q, err := NewQueue(0, m, r.size, r.desc, r.avail, r.used, make(chan struct{}, 1))
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func (r *ring) usedElem(i uint16) (id, length uint32) {
	e := r.off(r.used + 4 + 8*uint64(i%r.size))
	return binary.LittleEndian.Uint32(e), binary.LittleEndian.Uint32(e[4:])
}

func (r *ring) usedIdx() uint16 { return binary.LittleEndian.Uint16(r.off(r.used + 2)) }

func TestPop(t *testing.T) {
	end := uint64(testMemBase + 1<<20)
	tests := []struct {
		name          string
		build         func(r *ring) // sets descriptors, head is 0
		wantErr       string
		wantReadable  []int
		wantWritable  []int
		wantUsedOnErr bool
	}{
		{name: "one readable", build: func(r *ring) {
			r.setDesc(0, r.data, 44, 0, 0)
		}, wantReadable: []int{44}},
		{name: "readable then writable", build: func(r *ring) {
			r.setDesc(0, r.data, 44, descFlagNext, 5)
			r.setDesc(5, r.data+100, 1000, descFlagNext, 2)
			r.setDesc(2, r.data+4096, 3776, descFlagWrite, 0)
		}, wantReadable: []int{44, 1000}, wantWritable: []int{3776}},
		{name: "zero-length descriptor skipped", build: func(r *ring) {
			r.setDesc(0, 0, 0, descFlagNext, 1)
			r.setDesc(1, r.data, 10, 0, 0)
		}, wantReadable: []int{10}},
		{name: "buffer ending at the last byte", build: func(r *ring) {
			r.setDesc(0, end-16, 16, 0, 0)
		}, wantReadable: []int{16}},
		{name: "loop", build: func(r *ring) {
			r.setDesc(0, r.data, 1, descFlagNext, 1)
			r.setDesc(1, r.data, 1, descFlagNext, 0)
		}, wantErr: "loop", wantUsedOnErr: true},
		{name: "self loop", build: func(r *ring) {
			r.setDesc(0, r.data, 1, descFlagNext, 0)
		}, wantErr: "loop", wantUsedOnErr: true},
		{name: "next out of range", build: func(r *ring) {
			r.setDesc(0, r.data, 1, descFlagNext, 16)
		}, wantErr: "outside ring", wantUsedOnErr: true},
		{name: "address below memory", build: func(r *ring) {
			r.setDesc(0, 0x1000, 8, 0, 0)
		}, wantErr: "outside guest memory", wantUsedOnErr: true},
		{name: "address above memory", build: func(r *ring) {
			r.setDesc(0, end, 8, 0, 0)
		}, wantErr: "outside guest memory", wantUsedOnErr: true},
		{name: "length crossing the end", build: func(r *ring) {
			r.setDesc(0, end-8, 9, 0, 0)
		}, wantErr: "crosses the end", wantUsedOnErr: true},
		{name: "huge length wrapping", build: func(r *ring) {
			r.setDesc(0, r.data, 0xffffffff, 0, 0)
		}, wantErr: "crosses the end", wantUsedOnErr: true},
		{name: "address wrapping 64 bits", build: func(r *ring) {
			r.setDesc(0, ^uint64(0)-3, 8, 0, 0)
		}, wantErr: "outside guest memory", wantUsedOnErr: true},
		{name: "indirect not negotiated", build: func(r *ring) {
			r.setDesc(0, r.data, 32, descFlagIndirect, 0)
		}, wantErr: "indirect", wantUsedOnErr: true},
		{name: "readable after writable", build: func(r *ring) {
			r.setDesc(0, r.data, 8, descFlagWrite|descFlagNext, 1)
			r.setDesc(1, r.data, 8, 0, 0)
		}, wantErr: "readable after", wantUsedOnErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRing(16)
			tc.build(r)
			r.publish(0)
			q := r.queue(t)
			var c Chain
			ok, err := q.Pop(&c)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Pop: ok=%v err=%v, want error containing %q", ok, err, tc.wantErr)
				}
				if ok {
					t.Fatal("Pop returned ok with an error")
				}
				if id, n := r.usedElem(0); tc.wantUsedOnErr && (r.usedIdx() != 1 || id != 0 || n != 0) {
					t.Fatalf("bad chain not returned to the guest: used idx %d elem (%d,%d)", r.usedIdx(), id, n)
				}
				// The queue goes on: the next chain is served.
				r.setDesc(3, r.data, 7, 0, 0)
				r.publish(3)
				if ok, err := q.Pop(&c); !ok || err != nil || c.Head != 3 {
					t.Fatalf("after a bad chain, Pop = %v %v head %d", ok, err, c.Head)
				}
				return
			}
			if err != nil || !ok {
				t.Fatalf("Pop: %v %v", ok, err)
			}
			if got := lens(c.Readable); !equalInts(got, tc.wantReadable) {
				t.Errorf("readable lengths %v, want %v", got, tc.wantReadable)
			}
			if got := lens(c.Writable); !equalInts(got, tc.wantWritable) {
				t.Errorf("writable lengths %v, want %v", got, tc.wantWritable)
			}
			if ok, err := q.Pop(&c); ok || err != nil {
				t.Errorf("second Pop on a ring with one chain: %v %v", ok, err)
			}
		})
	}
}

func lens(bufs [][]byte) []int {
	var out []int
	for _, b := range bufs {
		out = append(out, len(b))
	}
	return out
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestChainSlicesAreGuestMemory(t *testing.T) {
	r := newRing(8)
	r.setDesc(0, r.data, 4, descFlagNext, 1)
	r.setDesc(1, r.data+8, 4, descFlagWrite, 0)
	copy(r.off(r.data), "ping")
	r.publish(0)
	q := r.queue(t)
	var c Chain
	if ok, err := q.Pop(&c); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if string(c.Readable[0]) != "ping" {
		t.Fatalf("readable buffer %q", c.Readable[0])
	}
	copy(c.Writable[0], "pong")
	if got := string(r.off(r.data + 8)[:4]); got != "pong" {
		t.Fatalf("write through the chain landed as %q", got)
	}
	q.Push(c.Head, 4)
	if id, n := r.usedElem(0); r.usedIdx() != 1 || id != 0 || n != 4 {
		t.Fatalf("used idx %d elem (%d,%d), want 1 (0,4)", r.usedIdx(), id, n)
	}
}

func TestRingBroken(t *testing.T) {
	r := newRing(8)
	binary.LittleEndian.PutUint16(r.off(r.avail+2), 9) // 9 new entries in a ring of 8
	q := r.queue(t)
	var c Chain
	if _, err := q.Pop(&c); !errors.Is(err, ErrRingBroken) {
		t.Fatalf("Pop = %v, want ErrRingBroken", err)
	}
	if _, err := q.Pop(&c); !errors.Is(err, ErrRingBroken) {
		t.Fatalf("broken queue recovered by itself: %v", err)
	}
}

func TestIndexWraparound(t *testing.T) {
	r := newRing(4)
	q := r.queue(t)
	// Start near the 16-bit wrap, as a long-running guest does.
	r.availIdx = 0xfffe
	binary.LittleEndian.PutUint16(r.off(r.avail+2), r.availIdx)
	q.SetLastAvail(0xfffe)
	q.usedIdx = 0xfffe
	var c Chain
	for i := range 6 {
		r.setDesc(uint16(i%4), r.data, 1, 0, 0)
		r.publish(uint16(i % 4))
		ok, err := q.Pop(&c)
		if !ok || err != nil || c.Head != uint16(i%4) {
			t.Fatalf("pop %d: %v %v head %d", i, ok, err, c.Head)
		}
		q.Push(c.Head, 0)
	}
	if r.usedIdx() != 4 || q.LastAvail() != 4 {
		t.Fatalf("used idx %d last avail %d, want 4 and 4", r.usedIdx(), q.LastAvail())
	}
}

func TestNotify(t *testing.T) {
	tests := []struct {
		name       string
		push       bool
		availFlags uint16
		want       bool
	}{
		{"pushed", true, 0, true},
		{"nothing pushed", false, 0, false},
		{"driver suppressed interrupts", true, availFlagNoInterrupt, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRing(8)
			binary.LittleEndian.PutUint16(r.off(r.avail), tc.availFlags)
			q := r.queue(t)
			efd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
			if err != nil {
				t.Fatal(err)
			}
			q.call = newEventFD()
			q.call.replace(efd)
			defer q.call.replace(-1)
			if tc.push {
				q.Push(0, 0)
			}
			q.Notify()
			var b [8]byte
			_, err = unix.Read(efd, b[:])
			if got := err == nil; got != tc.want {
				t.Fatalf("interrupt signalled = %v (%v), want %v", got, err, tc.want)
			}
		})
	}
}

func TestNewQueueRejects(t *testing.T) {
	r := newRing(8)
	m, _ := NewMemoryFromBytes([]Region{{GuestPhysAddr: testMemBase, Size: uint64(len(r.mem))}}, [][]byte{r.mem})
	tests := []struct {
		name              string
		size              uint16
		desc, avail, used uint64
		want              string
	}{
		{"size not power of two", 12, r.desc, r.avail, r.used, "power of two"},
		{"size zero", 0, r.desc, r.avail, r.used, "power of two"},
		{"descriptor table outside", 8, 0x100, r.avail, r.used, "descriptor table"},
		{"used ring crossing the end", 256, r.desc, r.avail, testMemBase + 1<<20 - 64, "used ring"},
		{"used ring misaligned", 8, r.desc, r.avail, r.used + 2, "aligned"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewQueue(0, m, tc.size, tc.desc, tc.avail, tc.used, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("NewQueue = %v, want error containing %q", err, tc.want)
			}
		})
	}
}

// TestNoNotify checks VRING_USED_F_NO_NOTIFY: set and cleared by
// SetNoNotify, kept by Push, and picked up from memory by a new queue
// over the same ring (a restart after SET_MEM_TABLE).
func TestNoNotify(t *testing.T) {
	r := newRing(8)
	usedFlags := func() uint16 { return binary.LittleEndian.Uint16(r.off(r.used)) }
	q := r.queue(t)
	q.SetNoNotify(true)
	if usedFlags() != usedFlagNoNotify {
		t.Fatalf("used flags %#x after SetNoNotify(true)", usedFlags())
	}
	q.Push(3, 10)
	if usedFlags() != usedFlagNoNotify || r.usedIdx() != 1 {
		t.Fatalf("after Push: used flags %#x idx %d, want NO_NOTIFY and 1", usedFlags(), r.usedIdx())
	}
	q2 := r.queue(t)
	q2.SetNoNotify(false)
	if usedFlags() != 0 || r.usedIdx() != 1 {
		t.Fatalf("new queue, SetNoNotify(false): used flags %#x idx %d, want 0 and 1", usedFlags(), r.usedIdx())
	}
}
