package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nitroinit/nitroinit/internal/wire"
)

// Row 5: control round trips on the Unix socket. One request per
// connection, as initctl does: dial, send a ServiceStatus request, read
// the one JSON value that answers it, close. The floor is this program in
// its echo-server role, a bare Go Unix-socket server that frames the
// request the same way (wire.ReadValue) and answers with a JSON value as
// long as init's answer, in a process of its own as init is.

const (
	echoSockEnv = "NITROINIT_BENCH_ECHO_SOCK"
	echoSizeEnv = "NITROINIT_BENCH_ECHO_SIZE"
)

// echoServer is the floor's server role.
func echoServer(path, size string) {
	n, err := strconv.Atoi(size)
	if err != nil || n < 2 {
		fmt.Fprintf(os.Stderr, "echo server: %s=%q: want a size of at least 2\n", echoSizeEnv, size)
		os.Exit(2)
	}
	resp := []byte(`"` + strings.Repeat("x", n-2) + `"`)
	l, err := net.Listen("unix", path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "echo server:", err)
		os.Exit(1)
	}
	for {
		c, err := l.Accept()
		if err != nil {
			continue
		}
		go func() {
			defer c.Close()
			if _, err := wire.ReadValue(c, wire.MaxRequestSize); err != nil {
				return
			}
			c.Write(resp)
		}()
	}
}

// roundTrip sends req on a new connection to sock and reads the answer.
func roundTrip(sock string, req []byte) (int, error) {
	c, err := net.Dial("unix", sock)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(req); err != nil {
		return 0, err
	}
	b, err := wire.ReadValue(c, 1<<20)
	return len(b), err
}

// load runs total round trips from clients concurrent clients and returns
// µs per request (wall time / requests), p50 and p99 latency in µs.
func load(sock string, req []byte, clients, total int) ([]float64, error) {
	lat := make([]time.Duration, total)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	per := total / clients
	start := time.Now()
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			for i := c * per; i < (c+1)*per; i++ {
				t := time.Now()
				if _, err := roundTrip(sock, req); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					return
				}
				lat[i] = time.Since(t)
			}
		}(c)
	}
	wg.Wait()
	el := time.Since(start)
	if first != nil {
		return nil, first
	}
	lat = lat[:per*clients]
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }
	return []float64{us(el) / float64(len(lat)), us(lat[len(lat)/2]), us(lat[len(lat)*99/100])}, nil
}

func controlRequests(e *env) int {
	if e.quick {
		return 800
	}
	return 4000
}

var statusReq, _ = json.Marshal(wire.Request{Kind: wire.KindServiceStatus, Name: "web"})

// startControlOurs starts init with one idle service and returns it with
// the size of its status answer.
func startControlOurs(e *env) (*ours, int, error) {
	dir, err := e.scratch("ctl-ours")
	if err != nil {
		return nil, 0, err
	}
	o, err := e.startOurs(dir, map[string]string{"web": fmt.Sprintf("ExecStart = \"%s sleep\"\n", e.svc)}, "", nil)
	if err != nil {
		return nil, 0, err
	}
	if err := o.waitControl(); err != nil {
		killTree(o.cmd)
		return nil, 0, fmt.Errorf("%w; output: %s", err, o.out)
	}
	// Wait for the service to run, so that every answer has the same size.
	var size int
	err = waitFor(10*time.Second, 5*time.Millisecond, "web to run", func() bool {
		r, err := doStatus(o)
		return err == nil && r.Status != nil && r.Status.State == "running"
	})
	if err == nil {
		size, err = roundTrip(o.sock, statusReq)
	}
	if err != nil {
		killTree(o.cmd)
		return nil, 0, err
	}
	return o, size, nil
}

func doStatus(o *ours) (wire.Response, error) {
	c, err := net.Dial("unix", o.sock)
	if err != nil {
		return wire.Response{}, err
	}
	defer c.Close()
	c.Write(statusReq)
	var r wire.Response
	b, err := wire.ReadValue(c, 1<<20)
	if err == nil {
		err = json.Unmarshal(b, &r)
	}
	return r, err
}

func controlOurs(clients int) func(*env) ([]float64, error) {
	return func(e *env) ([]float64, error) {
		o, _, err := startControlOurs(e)
		if err != nil {
			return nil, err
		}
		defer killTree(o.cmd)
		return load(o.sock, statusReq, clients, controlRequests(e))
	}
}

// controlFloor measures the echo server with init's answer size, which it
// learns from a short-lived init.
func controlFloor(clients int) func(*env) ([]float64, error) {
	return func(e *env) ([]float64, error) {
		o, size, err := startControlOurs(e)
		if err != nil {
			return nil, err
		}
		killTree(o.cmd)
		dir, err := e.scratch("ctl-floor")
		if err != nil {
			return nil, err
		}
		sock := filepath.Join(dir, "echo.sock")
		cmd, out, err := startCmd([]string{echoSockEnv + "=" + sock, echoSizeEnv + "=" + strconv.Itoa(size)}, e.self)
		if err != nil {
			return nil, err
		}
		defer killTree(cmd)
		if err := waitFor(10*time.Second, 2*time.Millisecond, "the echo server", func() bool {
			_, err := roundTrip(sock, statusReq)
			return err == nil
		}); err != nil {
			return nil, fmt.Errorf("%w; output: %s", err, out)
		}
		return load(sock, statusReq, clients, controlRequests(e))
	}
}

func controlRow(runs, clients int) row {
	us := func(v float64) string { return fmt.Sprintf("%.0f µs", v) }
	return row{
		title: fmt.Sprintf("Control, %d client(s)", clients),
		metrics: []metric{
			{name: "µs per status request (wall time / requests = 1 / throughput)", format: us},
			{name: "p50 latency", format: us},
			{name: "p99 latency", format: us},
		},
		ours:   contender{name: "init", measure: controlOurs(clients), note: "a new connection per request, as initctl does"},
		theirs: []contender{{name: "bare Go Unix-socket server, same sizes (floor)", measure: controlFloor(clients)}},
		runs:   runs,
	}
}

// CLI round trip: what a person or a script pays per status call.
func cliCalls(e *env) int {
	if e.quick {
		return 5
	}
	return 20
}

func timeCalls(n int, name string, args ...string) ([]float64, error) {
	var lat []float64
	for i := 0; i < n; i++ {
		t := time.Now()
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
		}
		lat = append(lat, float64(time.Since(t).Microseconds())/1000)
	}
	return []float64{median(lat)}, nil
}

func cliOurs(e *env) ([]float64, error) {
	o, _, err := startControlOurs(e)
	if err != nil {
		return nil, err
	}
	defer killTree(o.cmd)
	return timeCalls(cliCalls(e), e.initctl, "--protocol", "unix", "--socket", o.sock, "status", "web")
}

func cliSupervisorctl(e *env) ([]float64, error) {
	dir, err := e.scratch("ctl-supervisord")
	if err != nil {
		return nil, err
	}
	conf, cmd, out, err := startSupervisord(dir, map[string][]string{"web": {e.svc, "sleep"}}, nil)
	if err != nil {
		return nil, err
	}
	defer killTree(cmd)
	if err := waitFor(20*time.Second, 20*time.Millisecond, "supervisord to run web", func() bool {
		b, _ := exec.Command("supervisorctl", "-c", conf, "status", "web").CombinedOutput()
		return strings.Contains(string(b), "RUNNING")
	}); err != nil {
		return nil, fmt.Errorf("%w; output: %s", err, out)
	}
	return timeCalls(cliCalls(e), "supervisorctl", "-c", conf, "status", "web")
}

func cliRow(runs int) row {
	return row{
		title:   "Control CLI",
		metrics: []metric{{name: "ms per `status web` command, process start included", format: func(v float64) string { return fmt.Sprintf("%.1f ms", v) }}},
		ours:    contender{name: "initctl", measure: cliOurs},
		theirs:  []contender{{name: "supervisorctl", needs: []string{"supervisorctl", "supervisord"}, measure: cliSupervisorctl}},
		runs:    runs,
	}
}
