package control

import (
	"sync"

	"github.com/nitroinit/nitroinit/internal/wire"
)

// VersionedStatus is implemented by handlers (the supervisor) that can say
// when a service's status is unchanged, so that its encoded answer can be
// reused: status is the most frequent request.
type VersionedStatus interface {
	// ServiceStatusAt is ServiceStatus with a version: two answers with
	// the same version and live false are equal. live marks an answer
	// that carries figures read at this call, which is never reused.
	ServiceStatusAt(name string) (st wire.ServiceStatus, version uint64, live bool, err error)
}

// StatusVersioner is implemented by handlers (the supervisor) that can
// tell at once, without waiting for anything, the version ServiceStatusAt
// would report for a status that is not live. The accept loop answers
// from the cache with it (see answerAtOnce); ok false sends the request
// to a worker, which asks ServiceStatusAt.
type StatusVersioner interface {
	StatusVersion(name string) (version uint64, ok bool)
}

// maxCachedStatuses bounds the encoded status answers kept: one per
// service asked about, and services come and go with reloads, so the
// cache is emptied when it is full rather than grown.
const maxCachedStatuses = 256

// statusCache holds the encoded ServiceStatus answer of each service at
// the version it was encoded for.
type statusCache struct {
	mu sync.Mutex
	m  map[string]cachedStatus
}

type cachedStatus struct {
	version uint64
	b       []byte // shared and never modified
}

// statusAnswer returns the encoded answer to ServiceStatus for name, or
// nil when the handler cannot version its statuses.
func (s *Server) statusAnswer(name string) []byte {
	vb, ok := s.cfg.Handler.(VersionedStatus)
	if !ok {
		return nil
	}
	st, version, live, err := vb.ServiceStatusAt(name)
	if err != nil {
		return encode(wire.Errorf("%v", err))
	}
	c := &s.statuses
	if !live {
		c.mu.Lock()
		e, hit := c.m[name]
		c.mu.Unlock()
		if hit && e.version == version {
			return e.b
		}
	}
	b := encodeStatus(st)
	if !live {
		c.mu.Lock()
		if c.m == nil || len(c.m) >= maxCachedStatuses {
			c.m = make(map[string]cachedStatus)
		}
		c.m[name] = cachedStatus{version, b}
		c.mu.Unlock()
	}
	return b
}

// cachedAnswer returns the cached answer to ServiceStatus for name if it
// is current, and nil otherwise; it never waits on the handler.
func (s *Server) cachedAnswer(name string) []byte {
	sv, ok := s.cfg.Handler.(StatusVersioner)
	if !ok {
		return nil
	}
	version, ok := sv.StatusVersion(name)
	if !ok {
		return nil
	}
	c := &s.statuses
	c.mu.Lock()
	e, hit := c.m[name]
	c.mu.Unlock()
	if !hit || e.version != version {
		return nil
	}
	return e.b
}

// encodeStatus encodes a status answer; st is a copy of its own, so that
// only a miss puts a status on the heap.
func encodeStatus(st wire.ServiceStatus) []byte {
	return encode(wire.Response{Kind: wire.KindServiceStatus, Status: &st})
}
