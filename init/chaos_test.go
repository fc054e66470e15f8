package main

// The chaos test: 50 services under a real init, abused for a while by
// random SIGKILLs, crashes, stops, starts, restarts and reloads, after
// which init's account of the world must match the world.
//
// CHAOS_DURATION sets how long the abuse lasts (default 20s, the short
// form that go test ./... runs; the full form is CHAOS_DURATION=60s).
// CHAOS_SEED replays a run's random choices (not its timing): the seed is
// logged at the start of every run.

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nitroinit/nitroinit/internal/wire"
)

// chaosService is one service of the chaos test. Every service's command
// line carries a tag, "chaos-RUN-NAME ", so that its processes can be found.
// RUN is unique to the run: two test binaries may run TestChaos at the same
// time on one machine (go test ./... beside .ci/run), and every search goes
// through the whole of /proc.
type chaosService struct {
	name string
	body string
	// flaps marks services that exit by themselves (crashers, failers):
	// they are stopped before the final checks so that they hold still.
	flaps bool
}

func chaosServices(run string) []chaosService {
	var out []chaosService
	add := func(prefix string, n int, flaps bool, body string) {
		for i := 0; i < n; i++ {
			name := fmt.Sprintf("%s%02d", prefix, i)
			out = append(out, chaosService{name: name, flaps: flaps, body: strings.ReplaceAll(body, "TAG", chaosTag(run, name))})
		}
	}
	// Sleepers restarted at once when killed.
	add("s", 35, false, "ExecStart = \"$SVC sleep TAG\"\nRestart = \"always\"\nRestartSec = 0.05\nStartLimitIntervalSec = 0\n")
	// Sleepers that stay down when killed.
	add("n", 5, false, "ExecStart = \"$SVC sleep TAG\"\nRestart = \"no\"\n")
	// Crashers: SIGKILL themselves after 300 ms, restarted for ever.
	add("c", 5, true, "ExecStart = \"$SVC crash 300ms TAG\"\nRestart = \"always\"\nRestartSec = 0.1\nStartLimitIntervalSec = 0\n")
	// Failers: exit 1 after 500 ms, until the start limit stops them.
	add("e", 4, true, "ExecStart = \"$SVC exit 1 500ms TAG\"\nRestart = \"on-failure\"\nRestartSec = 0.1\nStartLimitBurst = 3\nStartLimitIntervalSec = 2\n")
	return out
}

// chaosCounter is the line-counting service: it is never touched, and its
// log must hold every line it wrote, once, in order.
const chaosCounter = "counter"

func chaosDuration(t *testing.T) time.Duration {
	d := 20 * time.Second
	if s := os.Getenv("CHAOS_DURATION"); s != "" {
		v, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("CHAOS_DURATION=%q: %v (want a Go duration such as 60s)", s, err)
		}
		d = v
	}
	return d
}

func chaosSeed(t *testing.T) uint64 {
	if s := os.Getenv("CHAOS_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("CHAOS_SEED=%q: %v", s, err)
		}
		return v
	}
	return uint64(time.Now().UnixNano())
}

// tagged returns the live processes of service name.
func tagged(run, name string) []int {
	return processesOf(chaosTag(run, name) + " ")
}

// chaosTag is the argument that marks service name's processes in run.
func chaosTag(run, name string) string {
	return "chaos-" + run + "-" + name
}

// duplicates returns, for every service with more than one live process at
// one instant, its pids. A scan of /proc is not atomic (an instance may die
// and its successor be born while it runs), so a suspect is confirmed only
// if all its processes are still alive after the scan: then they were all
// alive at once.
func duplicates(run string, names []string) map[string][]int {
	out := map[string][]int{}
	for _, n := range names {
		pids := tagged(run, n)
		if len(pids) < 2 {
			continue
		}
		all := true
		for _, p := range pids {
			if !alive(p) || !strings.Contains(cmdlineOf(p), chaosTag(run, n)+" ") {
				all = false
			}
		}
		if all {
			out[n] = pids
		}
	}
	return out
}

func cmdlineOf(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return strings.ReplaceAll(string(b), "\x00", " ")
}

func TestChaos(t *testing.T) {
	dur := chaosDuration(t)
	seed := chaosSeed(t)
	t.Logf("chaos: %v of abuse, seed %d (rerun with CHAOS_SEED=%d CHAOS_DURATION=%v)", dur, seed, seed, dur)

	run := fmt.Sprintf("%d.%d", os.Getpid(), time.Now().UnixNano()%1000000)
	svcs := chaosServices(run)
	files := map[string]string{}
	var names, abusable []string
	for _, s := range svcs {
		files[s.name+".service"] = s.body
		names = append(names, s.name)
		abusable = append(abusable, s.name)
	}
	// The counter writes one numbered line every 2 ms and ends well
	// before the abuse does.
	lines := int(dur / (5 * time.Millisecond))
	files[chaosCounter+".service"] = fmt.Sprintf("ExecStart = \"$SVC count %d 2ms %s\"\nRestart = \"no\"\n", lines, chaosTag(run, chaosCounter))
	names = append(names, chaosCounter)
	if len(names) != 50 {
		t.Fatalf("chaos set has %d services, want 50", len(names))
	}

	h := startInit(t, files, "")
	initPID := h.cmd.Process.Pid
	h.waitFor("the 35 restarting sleepers to run", func() (bool, string) {
		n := 0
		for i := 0; i < 35; i++ {
			if len(tagged(run, fmt.Sprintf("s%02d", i))) == 1 {
				n++
			}
		}
		return n == 35, fmt.Sprintf("%d of 35 run", n)
	})

	var (
		mu       sync.Mutex
		counts   = map[string]int{}
		failures []string
		maxLat   time.Duration
		wg       sync.WaitGroup
		stop     = make(chan struct{})
		extraOn  bool
		extraGen int
	)
	note := func(what string) {
		mu.Lock()
		counts[what]++
		mu.Unlock()
	}
	fail := func(format string, args ...any) {
		mu.Lock()
		failures = append(failures, fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	// ask sends a request; an Error answer is legitimate under chaos (a
	// start of a failed service, a stop of a stopped one), but init must
	// always answer.
	ask := func(req wire.Request) (wire.Response, bool) {
		t0 := time.Now()
		r, err := h.try(req)
		lat := time.Since(t0)
		mu.Lock()
		maxLat = max(maxLat, lat)
		mu.Unlock()
		if err != nil {
			fail("%s %s: init did not answer: %v", req.Kind, req.Name, err)
			return r, false
		}
		return r, r.Kind != wire.KindError
	}
	pidOf := func(name string) int {
		r, ok := ask(wire.Request{Kind: wire.KindServiceStatus, Name: name})
		if !ok || r.Status == nil || r.Status.PID == nil {
			return 0
		}
		return *r.Status.PID
	}

	// Killer: SIGKILLs services' processes (and now and then whole groups)
	// and checks for duplicates once a second.
	wg.Add(1)
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewPCG(seed, 1))
		lastCheck := time.Now()
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(5+rng.IntN(30)) * time.Millisecond):
			}
			name := abusable[rng.IntN(len(abusable))]
			if pid := pidOf(name); pid > 0 {
				if rng.IntN(4) == 0 {
					syscall.Kill(-pid, syscall.SIGKILL)
					note("SIGKILL group")
				} else {
					syscall.Kill(pid, syscall.SIGKILL)
					note("SIGKILL")
				}
			}
			if time.Since(lastCheck) > time.Second {
				lastCheck = time.Now()
				for n, pids := range duplicates(run, names) {
					fail("during chaos: %s has %d live instances at once: %v", n, len(pids), pids)
				}
			}
		}
	}()

	// Operator: stops, starts, restarts, edits service files and reloads.
	wg.Add(1)
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewPCG(seed, 2))
		gen := 0
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(10+rng.IntN(60)) * time.Millisecond):
			}
			name := abusable[rng.IntN(len(abusable))]
			switch k := rng.IntN(20); {
			case k < 6:
				ask(wire.Request{Kind: wire.KindServiceStop, Name: name})
				note("stop")
			case k < 12:
				ask(wire.Request{Kind: wire.KindServiceStart, Name: name})
				note("start")
			case k < 15:
				ask(wire.Request{Kind: wire.KindServiceRestart, Name: name})
				note("restart")
			case k < 17:
				// Edit a sleeper's file: the reload must apply it
				// without a second instance.
				gen++
				i := rng.IntN(35)
				n := fmt.Sprintf("s%02d", i)
				h.writeService(n+".service", fmt.Sprintf("ExecStart = \"$SVC sleep %s\"\nRestart = \"always\"\nRestartSec = 0.05\nStartLimitIntervalSec = 0\nEnvironment = [\"CHAOS_GEN=%d\"]\n", chaosTag(run, n), gen))
				ask(wire.Request{Kind: wire.KindSystemReload})
				note("edit+reload")
			case k < 18:
				// Add or remove a service and reload.
				mu.Lock()
				on := extraOn
				extraOn = !extraOn
				extraGen++
				mu.Unlock()
				path := filepath.Join(h.svcDir, "extra.service")
				if on {
					os.Remove(path)
				} else {
					h.writeService("extra.service", fmt.Sprintf("ExecStart = \"$SVC sleep %s\"\nRestart = \"always\"\nRestartSec = 0.05\n", chaosTag(run, "extra")))
				}
				ask(wire.Request{Kind: wire.KindSystemReload})
				note("add/remove+reload")
			case k < 19:
				h.cmd.Process.Signal(syscall.SIGHUP)
				note("SIGHUP")
			default:
				ask(wire.Request{Kind: wire.KindListServices})
				note("list")
			}
		}
	}()

	time.Sleep(dur)
	close(stop)
	wg.Wait()
	mu.Lock()
	t.Logf("chaos actions: %v; slowest answer during chaos: %v", counts, maxLat)
	mu.Unlock()
	select {
	case <-h.exited:
		t.Fatalf("init exited during chaos: %v", h.exitErr)
	default:
	}

	// Settle: the extra service goes, flapping services stop, sleepers are
	// stopped or started at random, then everything must hold still.
	os.Remove(filepath.Join(h.svcDir, "extra.service"))
	h.do(wire.Request{Kind: wire.KindSystemReload})
	rng := rand.New(rand.NewPCG(seed, 3))
	want := map[string]bool{} // true: must run
	for _, s := range svcs {
		if s.flaps || rng.IntN(2) == 0 {
			ask(wire.Request{Kind: wire.KindServiceStop, Name: s.name})
			want[s.name] = false
		} else {
			ask(wire.Request{Kind: wire.KindServiceStart, Name: s.name})
			want[s.name] = true
		}
	}
	settled := func() (bool, string) {
		for _, s := range svcs {
			st := h.status(s.name)
			if want[s.name] && st.State != "running" {
				return false, s.name + " is " + st.State
			}
			if !want[s.name] && st.Active {
				return false, s.name + " is still " + st.State
			}
		}
		return true, ""
	}
	h.waitFor("the services to settle", settled)

	// Invariant: no zombies. Exits still in flight are reaped within a
	// moment; none may stay.
	h.waitFor("no zombie children of init", func() (bool, string) {
		n := zombieChildren(initPID)
		return n == 0, fmt.Sprintf("%d zombie children of init", n)
	})

	// Invariants: no duplicate instances, and init's state matches the
	// processes: a running service has exactly its reported process, a
	// stopped one has none.
	listed := map[string]bool{}
	for _, si := range h.do(wire.Request{Kind: wire.KindListServices}).Services {
		listed[si.Name] = true
	}
	if listed["extra"] {
		t.Errorf("extra.service was removed and reloaded away, but init still lists it")
	}
	if p := tagged(run, "extra"); len(p) > 0 {
		t.Errorf("extra.service was removed, but its processes live on: %v", p)
	}
	for n, pids := range duplicates(run, names) {
		t.Errorf("after chaos: %s has %d live instances at once: %v", n, len(pids), pids)
	}
	for _, s := range svcs {
		st := h.status(s.name)
		pids := tagged(run, s.name)
		switch {
		case st.State == "running":
			if st.PID == nil || len(pids) != 1 || pids[0] != *st.PID {
				reported := "none"
				if st.PID != nil {
					reported = strconv.Itoa(*st.PID)
				}
				t.Errorf("%s: init reports running with pid %s; live processes %v", s.name, reported, pids)
			}
		case st.Active:
			t.Errorf("%s: still %s after settling", s.name, st.State)
		default:
			if len(pids) != 0 {
				t.Errorf("%s: init reports %s, but processes %v live", s.name, st.State, pids)
			}
		}
	}

	// Invariant: the counter lost no line.
	h.waitState(chaosCounter, "exited", 60*time.Second)
	if err := checkCounted(h.logFile(chaosCounter), lines); err != nil {
		t.Error(err)
	}

	// Invariant: init still answers within 100 ms (the median of five
	// requests, so that one unlucky time slice on a shared machine does
	// not decide).
	var lat []time.Duration
	for i := 0; i < 5; i++ {
		t0 := time.Now()
		h.status("s00")
		lat = append(lat, time.Since(t0))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	if lat[2] > 100*time.Millisecond {
		t.Errorf("after chaos init answers in %v (median of %v), want under 100ms", lat[2], lat)
	}

	mu.Lock()
	for _, f := range failures {
		t.Error(f)
	}
	mu.Unlock()
	if t.Failed() {
		t.Logf("seed %d: rerun with CHAOS_SEED=%d CHAOS_DURATION=%v", seed, seed, dur)
	}
}

// checkCounted checks that log holds lines 1..n of `svc count`, each once,
// in order, each after a timestamp.
func checkCounted(log string, n int) error {
	next := 1
	for _, l := range strings.Split(log, "\n") {
		i := strings.Index(l, "] line ")
		if i < 0 {
			continue
		}
		k, err := strconv.Atoi(l[i+7 : min(i+16, len(l))])
		if err != nil {
			return fmt.Errorf("counter log line %q: %v", l, err)
		}
		if k != next {
			return fmt.Errorf("counter log: line %d where %d was due (lost, repeated or out of order)", k, next)
		}
		next++
	}
	if next != n+1 {
		return fmt.Errorf("counter log ends at line %d of %d", next-1, n)
	}
	return nil
}

// TestCheckCounted makes sure the counter check can fail.
func TestCheckCounted(t *testing.T) {
	line := func(k int) string {
		return fmt.Sprintf("[2026-01-01T00:00:00.000000Z] line %09d %s\n", k, strings.Repeat("x", 80))
	}
	var good strings.Builder
	good.WriteString("[2026-01-01T00:00:00.000000Z] init: started\n")
	for k := 1; k <= 5; k++ {
		good.WriteString(line(k))
	}
	for _, tc := range []struct {
		name string
		log  string
		ok   bool
	}{
		{"complete", good.String(), true},
		{"gap", line(1) + line(3) + line(4) + line(5), false},
		{"duplicate", line(1) + line(2) + line(2) + line(3) + line(4) + line(5), false},
		{"short", line(1) + line(2), false},
		{"reordered", line(1) + line(3) + line(2) + line(4) + line(5), false},
		{"untimestamped", strings.ReplaceAll(good.String(), "[2026-01-01T00:00:00.000000Z] line", "line"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkCounted(tc.log, 5)
			if (err == nil) != tc.ok {
				t.Errorf("checkCounted: %v, want ok=%v", err, tc.ok)
			}
		})
	}
}
