package vmtests

// Hardening in a small enclave: clients that ask for every line of a large
// log, half of them never reading, must not run a 512 MiB enclave out of
// memory, kill a service or keep init from answering.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nitroinit/nitroinit/internal/control"
	"github.com/nitroinit/nitroinit/internal/wait"
	"github.com/nitroinit/nitroinit/internal/wire"
)

// initRSSGrowthBoundKB is how much init's resident set may grow while the
// clients are served, as docs/protocol.md ("Bounds") states for this
// scenario: 8 answers of at most 512 KiB each, with room for the garbage
// collector's slack.
const initRSSGrowthBoundKB = 16 << 10

// hardeningPingStated is the statement for this scenario: init
// answers ping within 1 s throughout. Under TCG on a busy machine that is
// a matter of the machine, not of init, so the test reports how many pings
// took longer and asserts the outcome: every ping is answered, and pings
// are answered while the readers are still being served (init does not
// answer only after the flood). A ping that gets no answer for a whole
// stall interval (wait.DefaultStall) is init not answering.
const hardeningPingStated = time.Second

// bigLogLines of ~126 bytes each make about 55 MB of log files.
const bigLogLines = 440000

func TestHardeningLogsFloodInSmallEnclave(t *testing.T) {
	e := soloBoot(t, "hardening", guest{
		memoryMB: 512,
		config:   guestYAML("max_log_size: 12582912\nmax_log_files: 5\n", ""),
		services: map[string]string{
			"big.service":   fmt.Sprintf("ExecStart = \"/bin/svc count %d\"\nRestart = \"no\"", bigLogLines),
			"keep1.service": `ExecStart = "/bin/svc sleep keep1"`,
			"keep2.service": `ExecStart = "/bin/svc sleep keep2"`,
			"keep3.service": `ExecStart = "/bin/svc sleep keep3"`,
		},
	})
	defer e.stop()
	e.explain(t, "big")

	last := fmt.Sprintf("line %09d", bigLogLines)
	// The two last lines change as big writes: each poll is progress.
	eventually(t, waitTimeout, "big to write its "+last, func() (bool, string) {
		lines := e.logs(t, "big", 2)
		return containsLine(lines, last), strings.Join(lines, "\n")
	})
	keep := map[string]int{}
	for _, s := range []string{"keep1", "keep2", "keep3"} {
		st := e.waitState(t, s, "running")
		keep[s] = *st.PID
	}

	// init's resident set before the clients come, after it captured the
	// whole log.
	var baseKB uint64
	if r := e.do(t, wire.Request{Kind: wire.KindProcessStatus, PID: 1}); r.Process != nil {
		baseKB = r.Process.MemoryKB
	}

	// Sample init's RSS and ping it throughout. flooding is closed once the
	// four idle clients have asked, readersDone when the last reader has
	// its whole answer: a ping sent after the one and answered before the
	// other was answered during the flood.
	stop := make(chan struct{})
	flooding, readersDone := make(chan struct{}), make(chan struct{})
	var peakKB uint64
	var worstPing time.Duration
	var pings, slowPings, pingsDuringFlood int
	var pingErr error
	var samplerDone sync.WaitGroup
	samplerDone.Add(1)
	go func() {
		defer samplerDone.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond): // pacing, not a wait
			}
			ctx, cancel := e.answerContext("a ping during the flood")
			during := isClosed(flooding)
			start := time.Now()
			r, err := control.Do(ctx, e.target, wire.Request{Kind: wire.KindPing})
			took := time.Since(start)
			cancel()
			if err != nil || r.Kind != wire.KindPong {
				pingErr = fmt.Errorf("ping: %v %+v after %v", err, r, took)
				return
			}
			pings++
			if took > hardeningPingStated {
				slowPings++
			}
			if during && !isClosed(readersDone) {
				pingsDuringFlood++
			}
			worstPing = max(worstPing, took)
			if r, err := e.try(wire.Request{Kind: wire.KindProcessStatus, PID: 1}); err == nil && r.Process != nil {
				peakKB = max(peakKB, r.Process.MemoryKB)
			}
		}
	}()

	// Eight clients ask for a billion lines; four read it all, four never
	// read and hold their connection until the readers are done.
	req, _ := json.Marshal(wire.Request{Kind: wire.KindServiceLogs, Name: "big", Lines: 1_000_000_000})
	var idle []net.Conn
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	for i := 0; i < 4; i++ {
		c, err := control.Dial(context.Background(), e.target)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(req)
		idle = append(idle, c)
	}
	close(flooding)
	var readers sync.WaitGroup
	got := make([]int64, 4)
	errs := make([]error, 4)
	for i := 0; i < 4; i++ {
		readers.Add(1)
		go func(i int) {
			defer readers.Done()
			c, err := control.Dial(context.Background(), e.target)
			if err != nil {
				errs[i] = err
				return
			}
			defer c.Close()
			wc := wait.NewConn(c)
			wc.Write(req)
			got[i], errs[i] = io.Copy(io.Discard, wc)
		}(i)
	}
	readers.Wait()
	close(readersDone)
	close(stop)
	samplerDone.Wait()
	t.Logf("init's RSS %d KiB before the clients, peak sampled %d KiB; %d pings (%d during the flood), %d slower than the stated %v, slowest %v; answers %v bytes",
		baseKB, peakKB, pings, pingsDuringFlood, slowPings, hardeningPingStated, worstPing, got)

	for i, n := range got {
		if errs[i] != nil || n < 50e6 {
			t.Errorf("reader %d got %d bytes (%v), want the whole log (>= 50 MB)", i, n, errs[i])
		}
	}
	if pingErr != nil {
		t.Errorf("init stopped answering during the flood: %v", pingErr)
	} else if pingsDuringFlood == 0 {
		t.Errorf("no ping was answered while the readers were served (%d pings in all): init answers only after the flood", pings)
	}
	if baseKB == 0 || peakKB == 0 || peakKB > baseKB+initRSSGrowthBoundKB {
		t.Errorf("init's RSS grew from %d KiB to %d KiB while serving the clients, want at most %d KiB more, as docs/protocol.md states", baseKB, peakKB, initRSSGrowthBoundKB)
	}
	for s, pid := range keep {
		if st := e.status(t, s); st.State != "running" || st.PID == nil || *st.PID != pid {
			t.Errorf("%s was disturbed: state %q pid %v (was %d)", s, st.State, st.PID, pid)
		}
	}
	if c := e.vm.Console(); strings.Contains(c, "Out of memory") || strings.Contains(c, "oom-kill") || strings.Contains(c, "Kernel panic") {
		t.Errorf("the kernel ran out of memory:\n%s", e.vm.ConsoleTail(40))
	}
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
