package control_test

import (
	"bytes"
	"context"
	"net"
	"path/filepath"
	"sync"
	"testing"

	. "github.com/nitroinit/nitroinit/internal/control"
	"github.com/nitroinit/nitroinit/internal/control/controltest"
	"github.com/nitroinit/nitroinit/internal/wire"
)

// versioned adds ServiceStatusAt to the test handler, with a version and
// a live flag the test sets, and counts the statuses it builds.
type versioned struct {
	*controltest.Handler
	mu      sync.Mutex
	version uint64
	live    bool
	restart int // put into RestartCount, to tell answers apart
}

func (v *versioned) ServiceStatusAt(name string) (wire.ServiceStatus, uint64, bool, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	st, err := v.Handler.ServiceStatus(name)
	st.RestartCount = v.restart
	return st, v.version, v.live, err
}

func (v *versioned) set(version uint64, live bool, restart int) {
	v.mu.Lock()
	v.version, v.live, v.restart = version, live, restart
	v.mu.Unlock()
}

// TestStatusCache checks that a cached status answer is byte for byte the
// fresh encoding, is reused only at the same version, and never when the
// answer carries live figures.
func TestStatusCache(t *testing.T) {
	be := &versioned{Handler: controltest.New()}
	ts := startServer(t, func(c *Config) { c.Handler = be })
	req, _ := wire.Request{Kind: wire.KindServiceStatus, Name: "webapp"}.MarshalJSON()
	fresh := func() []byte {
		st, _, _, err := be.ServiceStatusAt("webapp")
		if err != nil {
			t.Fatal(err)
		}
		b, err := wire.Response{Kind: wire.KindServiceStatus, Status: &st}.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, step := range []struct {
		name     string
		version  uint64
		live     bool
		restart  int
		wantSame bool // the handler's change is not seen: the cached answer stands
	}{
		{"first", 1, false, 1, false},
		{"same version", 1, false, 2, true},
		{"new version", 2, false, 3, false},
		{"live", 2, true, 4, false},
		{"live again", 2, true, 5, false},
	} {
		before := raw(t, ts.path, req)
		be.set(step.version, step.live, step.restart)
		got := raw(t, ts.path, req)
		if step.wantSame {
			if !bytes.Equal(got, before) {
				t.Errorf("%s: answer changed at the same version:\n%s\n%s", step.name, before, got)
			}
			continue
		}
		if want := fresh(); !bytes.Equal(got, want) {
			t.Errorf("%s: got\n%s\nwant\n%s", step.name, got, want)
		}
	}
	// An unknown service is an error, as without the cache.
	bad, _ := wire.Request{Kind: wire.KindServiceStatus, Name: "nosuch"}.MarshalJSON()
	if r := decodeResp(t, raw(t, ts.path, bad)); r.Kind != wire.KindError {
		t.Errorf("status of an unknown service: %+v, want an Error", r)
	}
}

// BenchmarkStatusRoundTrip drives the real server on a Unix socket the
// way initctl does, a new connection per status request, for profiling
// (go test -cpuprofile); bench row 5 compares it with a floor. The floor
// here is a bare server in this process that frames the request and
// writes a fixed answer of the same size, as bench's does.
func BenchmarkStatusRoundTrip(b *testing.B) {
	req, _ := wire.Request{Kind: wire.KindServiceStatus, Name: "webapp"}.MarshalJSON()
	for _, bc := range []struct {
		name string
		be   Handler
	}{{"versioned", &versioned{Handler: controltest.New()}}, {"plain", controltest.New()}, {"floor", nil}} {
		b.Run(bc.name, func(b *testing.B) {
			path := filepath.Join(b.TempDir(), "init.sock")
			l, err := ListenUnix(path, false)
			if err != nil {
				b.Fatal(err)
			}
			if bc.be != nil {
				srv := NewServer(Config{Handler: bc.be})
				go srv.Serve(context.Background(), l, TransportUnix)
				defer srv.Close()
			} else {
				st, _ := controltest.New().ServiceStatus("webapp")
				answer, _ := wire.Response{Kind: wire.KindServiceStatus, Status: &st}.MarshalJSON()
				go bareServer(l, answer)
				defer l.Close()
			}
			b.ReportAllocs()
			for b.Loop() {
				c, err := net.Dial("unix", path)
				if err != nil {
					b.Fatal(err)
				}
				c.Write(req)
				if _, err := wire.ReadValue(c, 1<<20); err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
		})
	}
}

// bareServer is the floor: one goroutine per connection, which reads one
// framed value and writes answer.
func bareServer(l net.Listener, answer []byte) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			if _, err := wire.ReadValue(c, wire.MaxRequestSize); err == nil {
				c.Write(answer)
			}
		}()
	}
}
