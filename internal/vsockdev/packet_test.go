package vsockdev

import (
	"bytes"
	"encoding/hex"
	"testing"
)

func TestHeaderWireFormat(t *testing.T) {
	h := header{SrcCID: 16, DstCID: 3, SrcPort: 0x01020304, DstPort: 9000, Len: 5, Type: typeStream, Op: opRW, Flags: 3, BufAlloc: 262144, FwdCnt: 0xdeadbeef}
	var b [hdrSize]byte
	h.encode(b[:])
	// struct virtio_vsock_hdr, little-endian, packed.
	want := "1000000000000000" + "0300000000000000" + "04030201" + "28230000" + "05000000" +
		"0100" + "0500" + "03000000" + "00000400" + "efbeadde"
	if got := hex.EncodeToString(b[:]); got != want {
		t.Fatalf("encoded\n %s\nwant\n %s", got, want)
	}
	if back := decodeHeader(b[:]); back != h {
		t.Fatalf("decode(encode(h)) = %+v, want %+v", back, h)
	}
}

func TestScatter(t *testing.T) {
	tests := []struct {
		name  string
		sizes []int
		data  string
	}{
		{"one buffer", []int{16}, "hello, world"},
		{"split header and payload", []int{5, 100}, "hello, world"},
		{"many small", []int{1, 2, 3, 1, 1, 10}, "hello, world"},
		{"empty buffers between", []int{0, 4, 0, 20}, "hello, world"},
		{"too small", []int{3, 3}, "hello, world"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var bufs [][]byte
			total := 0
			for _, n := range tc.sizes {
				bufs = append(bufs, make([]byte, n))
				total += n
			}
			w := newScatter(bufs)
			n := w.write([]byte(tc.data))
			if want := min(total, len(tc.data)); n != want {
				t.Fatalf("wrote %d, want %d", n, want)
			}
			r := newScatter(bufs)
			got := make([]byte, 2)
			if k := r.read(got); k != min(2, n) {
				t.Fatalf("read %d", k)
			}
			rest, k := r.appendTo(got, n-2)
			if k != n-2 || string(rest) != tc.data[:n] {
				t.Fatalf("appendTo = %q (%d), want %q", rest, k, tc.data[:n])
			}
			s := newScatter(bufs)
			if k := s.skip(4); k != min(4, n) {
				t.Fatalf("skip = %d", k)
			}
			tail, _ := s.appendTo(nil, n-min(4, n))
			if !bytes.Equal(tail, []byte(tc.data[min(4, n):n])) {
				t.Fatalf("after skip: %q", tail)
			}
		})
	}
}

func TestCredit(t *testing.T) {
	tests := []struct {
		name             string
		bufAlloc, fwdCnt uint32
		txCnt            uint64
		want             uint32
	}{
		{"fresh", 65536, 0, 0, 65536},
		{"half in flight", 65536, 7232, 40000, 32768},
		{"all in flight", 4096, 4096, 8192, 0},
		{"peer shrank its buffer", 1000, 3000, 5000, 0},
		{"peer's 32-bit fwd_cnt wrapped", 65536, 0xffffff00, 1<<32 + 100, 65536 - 356},
		{"peer fwd_cnt ahead (buggy)", 4096, 20, 10, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := &conn{peerBufAlloc: tc.bufAlloc, txCnt: tc.txCnt, peerFwdCnt: tc.fwdCnt}
			if got := c.credit(); got != tc.want {
				t.Fatalf("credit = %d, want %d", got, tc.want)
			}
		})
	}
}

// TestCreditUpdatePolicy checks when the device volunteers a
// CREDIT_UPDATE for guest->host data: once the guest believes half the
// buffer is in flight and something was forwarded since it last heard,
// never twice in a row.
func TestCreditUpdatePolicy(t *testing.T) {
	tests := []struct {
		name                      string
		rxCnt, fwdCnt, lastSent   uint64
		queued, guestNoSend, want bool
	}{
		{"nothing forwarded", bufAlloc, 0, 0, false, false, false},
		{"small exchange, guest has plenty of credit", 1000, 1000, 0, false, false, false},
		{"half the buffer in flight, some forwarded", bufAlloc / 2, 1, 0, false, false, true},
		{"guest out of credit, all forwarded", bufAlloc, bufAlloc, 0, false, false, true},
		{"already told", bufAlloc, bufAlloc, bufAlloc, false, false, false},
		{"already queued", bufAlloc, bufAlloc, 0, true, false, false},
		{"guest will not send", bufAlloc, bufAlloc, 0, false, true, false},
		{"past 4 GiB", 1<<32 + bufAlloc/2 - 16, 1<<32 + 5, 0xfffffff0, false, false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := &Device{cfg: Config{GuestCID: 16}}
			c := &conn{rxCnt: tc.rxCnt, lastFwdSent: tc.lastSent, creditQueued: tc.queued, guestNoSend: tc.guestNoSend}
			c.written.Store(tc.fwdCnt)
			d.maybeCreditUpdate(c)
			got := len(d.pendingCtrl) == 1 && d.pendingCtrl[0].hdr.Op == opCreditUpdate
			if got != tc.want {
				t.Fatalf("credit update queued = %v, want %v", got, tc.want)
			}
			// The writer is asked to report progress only while the
			// guest is low on credit and no update is on its way.
			low := !tc.queued && !tc.guestNoSend && tc.rxCnt-tc.lastSent >= bufAlloc/2
			if want := low && !got; c.wantWritten.Load() != want {
				t.Fatalf("wantWritten = %v, want %v", c.wantWritten.Load(), want)
			}
		})
	}
}
