// Package frame is the simulated NSM's wire between the guest's /dev/nsm
// and the host: one stream connection carrying length-prefixed frames, a
// 4-byte big-endian length and that many bytes, one request and its
// response at a time. It is its own package so that init, which runs the
// guest side, links no CBOR or certificate code.
package frame

import (
	"encoding/binary"
	"fmt"
	"io"
)

// Write writes b as one frame.
func Write(w io.Writer, b []byte) error {
	buf := make([]byte, 4+len(b))
	binary.BigEndian.PutUint32(buf, uint32(len(b)))
	copy(buf[4:], b)
	_, err := w.Write(buf)
	return err
}

// Read reads one frame of at most max bytes; a longer one is an error and
// the stream is unusable after it.
func Read(r io.Reader, max int) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > uint32(max) {
		return nil, fmt.Errorf("NSM frame of %d bytes, at most %d", n, max)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, fmt.Errorf("NSM frame of %d bytes: %w", n, err)
	}
	return b, nil
}
