package vsockdev

import (
	"encoding/binary"
	"fmt"
)

// hdrSize is the size of struct virtio_vsock_hdr.
const hdrSize = 44

// Packet operations (virtio spec, 5.10.6).
const (
	opInvalid       = 0
	opRequest       = 1
	opResponse      = 2
	opRST           = 3
	opShutdown      = 4
	opRW            = 5
	opCreditUpdate  = 6
	opCreditRequest = 7
)

// typeStream is VIRTIO_VSOCK_TYPE_STREAM; SEQPACKET is not offered.
const typeStream = 1

// SHUTDOWN flags: the sender will receive / send no more.
const (
	shutdownRcv  = 1
	shutdownSend = 2
)

// header is struct virtio_vsock_hdr; all fields little-endian on the wire.
type header struct {
	SrcCID   uint64
	DstCID   uint64
	SrcPort  uint32
	DstPort  uint32
	Len      uint32
	Type     uint16
	Op       uint16
	Flags    uint32
	BufAlloc uint32
	FwdCnt   uint32
}

func (h *header) encode(b []byte) {
	_ = b[hdrSize-1]
	binary.LittleEndian.PutUint64(b[0:], h.SrcCID)
	binary.LittleEndian.PutUint64(b[8:], h.DstCID)
	binary.LittleEndian.PutUint32(b[16:], h.SrcPort)
	binary.LittleEndian.PutUint32(b[20:], h.DstPort)
	binary.LittleEndian.PutUint32(b[24:], h.Len)
	binary.LittleEndian.PutUint16(b[28:], h.Type)
	binary.LittleEndian.PutUint16(b[30:], h.Op)
	binary.LittleEndian.PutUint32(b[32:], h.Flags)
	binary.LittleEndian.PutUint32(b[36:], h.BufAlloc)
	binary.LittleEndian.PutUint32(b[40:], h.FwdCnt)
}

func decodeHeader(b []byte) header {
	_ = b[hdrSize-1]
	return header{
		SrcCID:   binary.LittleEndian.Uint64(b[0:]),
		DstCID:   binary.LittleEndian.Uint64(b[8:]),
		SrcPort:  binary.LittleEndian.Uint32(b[16:]),
		DstPort:  binary.LittleEndian.Uint32(b[20:]),
		Len:      binary.LittleEndian.Uint32(b[24:]),
		Type:     binary.LittleEndian.Uint16(b[28:]),
		Op:       binary.LittleEndian.Uint16(b[30:]),
		Flags:    binary.LittleEndian.Uint32(b[32:]),
		BufAlloc: binary.LittleEndian.Uint32(b[36:]),
		FwdCnt:   binary.LittleEndian.Uint32(b[40:]),
	}
}

func (h header) String() string {
	return fmt.Sprintf("%s %d:%d->%d:%d len=%d flags=%#x buf_alloc=%d fwd_cnt=%d",
		opName(h.Op), h.SrcCID, h.SrcPort, h.DstCID, h.DstPort, h.Len, h.Flags, h.BufAlloc, h.FwdCnt)
}

func opName(op uint16) string {
	switch op {
	case opRequest:
		return "REQUEST"
	case opResponse:
		return "RESPONSE"
	case opRST:
		return "RST"
	case opShutdown:
		return "SHUTDOWN"
	case opRW:
		return "RW"
	case opCreditUpdate:
		return "CREDIT_UPDATE"
	case opCreditRequest:
		return "CREDIT_REQUEST"
	}
	return fmt.Sprintf("op%d", op)
}

// scatter reads or writes a byte stream laid over several buffers (the
// descriptors of one chain).
type scatter struct {
	bufs [][]byte
	i    int // current buffer
	off  int // offset in it
}

func newScatter(bufs [][]byte) scatter { return scatter{bufs: bufs} }

// advance moves k bytes on in the current buffer, and to the next buffer
// at its end.
func (s *scatter) advance(k int) {
	s.off += k
	if s.off == len(s.bufs[s.i]) {
		s.i++
		s.off = 0
	}
}

// skip advances n bytes; it returns how many it could.
func (s *scatter) skip(n int) int {
	done := 0
	for done < n && s.i < len(s.bufs) {
		k := min(n-done, len(s.bufs[s.i])-s.off)
		done += k
		s.advance(k)
	}
	return done
}

// read copies from the buffers into p.
func (s *scatter) read(p []byte) int {
	done := 0
	for done < len(p) && s.i < len(s.bufs) {
		k := copy(p[done:], s.bufs[s.i][s.off:])
		done += k
		s.advance(k)
	}
	return done
}

// appendTo appends the next n bytes to dst.
func (s *scatter) appendTo(dst []byte, n int) ([]byte, int) {
	done := 0
	for done < n && s.i < len(s.bufs) {
		k := min(n-done, len(s.bufs[s.i])-s.off)
		dst = append(dst, s.bufs[s.i][s.off:s.off+k]...)
		done += k
		s.advance(k)
	}
	return dst, done
}

// write copies p into the buffers.
func (s *scatter) write(p []byte) int {
	done := 0
	for done < len(p) && s.i < len(s.bufs) {
		k := copy(s.bufs[s.i][s.off:], p[done:])
		done += k
		s.advance(k)
	}
	return done
}
