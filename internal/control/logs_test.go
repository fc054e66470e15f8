package control_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	. "github.com/nitroinit/nitroinit/internal/control"
	"github.com/nitroinit/nitroinit/internal/control/controltest"
	"github.com/nitroinit/nitroinit/internal/logs"
	"github.com/nitroinit/nitroinit/internal/wait"
	"github.com/nitroinit/nitroinit/internal/wire"
)

// TestStreamedLogsAreTheMarshalledBytes: ServiceLogs answers are streamed,
// and must still be, byte for byte, the one JSON value a reference client
// expects.
func TestStreamedLogsAreTheMarshalledBytes(t *testing.T) {
	ts := startServer(t, nil)
	odd := []string{`<b>&"quoted"\`, "tab\tnewline-less \u2028", "bad utf8 \xff\xfe", "日本"}
	for i := 0; i < 3000; i++ { // more than one write chunk
		odd = append(odd, fmt.Sprintf("[2026-01-01T00:00:00.000000Z] line %d %s", i, strings.Repeat("x", 50)))
	}
	all := []string{"[2026-01-01 10:00:00] listening on :8080", "[2026-01-01 10:00:01] ready"} // controltest's
	for _, l := range odd {
		ts.be.Publish("webapp", l)
	}
	all = append(all, odd...)
	for _, n := range []int{0, 1, 4, 3004, 1_000_000_000} {
		got := raw(t, ts.path, []byte(fmt.Sprintf(`{"ServiceLogs":{"name":"webapp","lines":%d}}`, n)))
		want, _ := json.Marshal(wire.Response{Kind: wire.KindServiceLogs, Logs: all[len(all)-min(n, len(all)):]})
		if !bytes.Equal(got, want) {
			t.Errorf("lines %d: streamed answer differs from the marshalled one:\n got %.200s\nwant %.200s", n, got, want)
		}
	}
}

// tailHandler serves one real log, so that requests read real files.
type tailHandler struct {
	*controltest.Handler
	log *logs.Log
}

func (b tailHandler) ServiceLogs(name string, n int) (LogTail, error) { return b.log.Tail(n), nil }

// TestLogsMemoryIsBoundedWhenClientsNeverRead: clients that ask for a
// billion lines of a large log and never read make init hold a bounded
// amount each, not the log.
func TestLogsMemoryIsBoundedWhenClientsNeverRead(t *testing.T) {
	l, err := logs.Open(logs.Config{Dir: t.TempDir(), MaxSize: 8 << 20, MaxFiles: 3, RingLines: 1000}, "big")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	l.Capture(strings.NewReader(strings.Repeat(strings.Repeat("z", 200)+"\n", (20<<20)/201)))
	ts := startServer(t, func(c *Config) {
		c.Handler = tailHandler{controltest.New(), l}
		c.IOTimeout = time.Minute
	})
	const clients = 16
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := 0; i < clients; i++ {
		c, err := net.Dial("unix", ts.path)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte(`{"ServiceLogs":{"name":"big","lines":1000000000}}`))
	}
	// Let every request read as far as its unread socket lets it. A fixed
	// settle time, not a wait: on a slow machine less is read and the
	// bound can only pass falsely, never fail.
	time.Sleep(2 * time.Second)
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	grown := int64(after.HeapInuse) - int64(before.HeapInuse)
	const bound = clients * 2 << 20 // 2 MiB each: buffers and the ring's copy
	if grown > bound {
		t.Errorf("%d clients that never read a 20 MiB log grew the heap by %d MiB, want under %d MiB", clients, grown>>20, bound>>20)
	}
	// A ping still gets through: the slots are not all held.
	if r := decodeResp(t, raw(t, ts.path, []byte(`"Ping"`))); r.Kind != wire.KindPong {
		t.Errorf("ping while clients hold log answers: %+v", r)
	}
}

// TestFollowEventsAreTheMarshalledBytes: the LogLine events of logs -f,
// gathered into large writes, are each the bytes json.Marshal gives.
func TestFollowEventsAreTheMarshalledBytes(t *testing.T) {
	ts := startServer(t, nil)
	odd := []string{`<b>&"quoted"\`, "bad utf8 \xff", "日本"}
	for _, l := range odd {
		ts.be.Publish("webapp", l)
	}
	c, err := net.Dial("unix", ts.path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte(`{"ServiceLogsFollow":{"name":"webapp","lines":3}}`))
	var want []byte
	for _, l := range odd {
		b, _ := json.Marshal(wire.Response{Kind: wire.KindLogLine, Line: l})
		want = append(append(want, b...), '\n')
	}
	got := make([]byte, len(want))
	if _, err := io.ReadFull(wait.NewConn(c), got); err != nil || !bytes.Equal(got, want) {
		t.Errorf("follow history = %q (%v), want %q", got, err, want)
	}
}
