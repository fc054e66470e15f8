package wait

import (
	"bytes"
	"sync"
)

// Buffer collects a process's output for a test: a bytes.Buffer that is
// safe for concurrent writers (a command's stdout and stderr), whose Len
// can serve as Limits.Progress while the test waits for the process.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns everything written so far.
func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Len is how many bytes have been written so far.
func (s *Buffer) Len() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return int64(s.b.Len())
}
