package wire

import (
	"errors"
	"fmt"
	"io"
	"sync"
)

// chunkPool recycles ReadValue's read buffers: a server reads one value
// per connection, and a fresh 4 KiB buffer each time is garbage at once.
var chunkPool = sync.Pool{New: func() any {
	b := make([]byte, 4096)
	return &b
}}

// ErrTooLarge is returned by ReadValue when the value does not end within
// the limit.
var ErrTooLarge = errors.New("value larger than the limit")

// ReadValue reads one JSON value from r and returns its bytes, stopping as
// soon as the value is complete. It does not wait for EOF or for a byte
// after the value: reference clients send a bare "Ping" with no newline and
// never half-close, which encoding/json's Decoder cannot end on. Only
// objects, arrays and strings are framed (every message is one of these);
// anything else is returned at once for the JSON parser to reject. Bytes
// read past the value's end are dropped.
func ReadValue(r io.Reader, max int) ([]byte, error) {
	var (
		buf     = make([]byte, 0, 512)
		started bool
		opener  byte
		depth   int
		inStr   bool
		escaped bool
	)
	cp := chunkPool.Get().(*[]byte)
	defer chunkPool.Put(cp)
	chunk := *cp
	for {
		n, err := r.Read(chunk)
		for i := 0; i < n; i++ {
			c := chunk[i]
			if !started {
				switch c {
				case ' ', '\t', '\r', '\n':
					continue
				case '{', '[':
					started, opener, depth = true, c, 1
				case '"':
					started, opener, inStr = true, c, true
				default:
					// Not a message shape: hand over what we have.
					return append(buf, chunk[i:n]...), nil
				}
				buf = append(buf, c)
				continue
			}
			if len(buf) >= max {
				return nil, fmt.Errorf("%w of %d bytes", ErrTooLarge, max)
			}
			buf = append(buf, c)
			switch {
			case escaped:
				escaped = false
			case inStr && c == '\\':
				escaped = true
			case inStr && c == '"':
				inStr = false
				if opener == '"' {
					return buf, nil
				}
			case inStr:
			case c == '"':
				inStr = true
			case c == '{' || c == '[':
				depth++
			case c == '}' || c == ']':
				depth--
				if depth == 0 {
					return buf, nil
				}
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) && len(buf) > 0 {
				return buf, io.ErrUnexpectedEOF
			}
			return buf, err
		}
	}
}
