package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"
)

// Row 2: log capture. The writer is `svc count N`: N lines of 96 bytes
// ("line %09d " and 80 x's) as fast as it can, then exit. Every logger
// timestamps each line and rotates at 10 MB keeping 5 files in all (the
// live one included). The clock runs from starting the pipeline until the
// last line is in a log file. Rotation drops the oldest lines by design, so
// "lost" counts lines missing from the run of lines the files should hold:
// gaps inside it, and any missing from its end.

const (
	logFileSize = 10000000
	logFiles    = 5
)

func logLines(e *env) int {
	if e.quick {
		return 100000
	}
	return 1000000
}

// marker is the payload of line n as svc count writes it.
func marker(n int) []byte { return fmt.Appendf(nil, "line %09d ", n) }

// waitLast polls the tails of every file in dir for the last line.
func waitLast(dir string, last []byte, done <-chan struct{}) error {
	buf := make([]byte, 512)
	found := func() bool {
		ents, _ := os.ReadDir(dir)
		for _, ent := range ents {
			f, err := os.Open(filepath.Join(dir, ent.Name()))
			if err != nil {
				continue
			}
			st, _ := f.Stat()
			off := max(st.Size()-int64(len(buf)), 0)
			n, _ := f.ReadAt(buf, off)
			f.Close()
			if bytes.Contains(buf[:n], last) {
				return true
			}
		}
		return false
	}
	deadline := time.Now().Add(120 * time.Second)
	for !found() {
		if time.Now().After(deadline) {
			return fmt.Errorf("the last line never reached %s", dir)
		}
		select {
		case <-done:
			// The logger exited: one last look, then give up.
			if found() {
				return nil
			}
			return fmt.Errorf("the logger exited before the last line reached %s", dir)
		case <-time.After(2 * time.Millisecond):
		}
	}
	return nil
}

// countLost reads every file in dir and checks the writer's lines: each
// must carry a timestamp before its payload, and the numbers must run
// without a gap up to the last one written. It returns the lines lost.
func countLost(dir string, n int, stamped bool) (lost int, err error) {
	seen := make([]bool, n+1)
	lo := n + 1
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	for _, ent := range ents {
		f, err := os.Open(filepath.Join(dir, ent.Name()))
		if err != nil {
			return 0, err
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			l := sc.Bytes()
			i := bytes.Index(l, []byte("line "))
			if i < 0 || len(l) < i+14 {
				continue // the logger's own lines (init: started, …)
			}
			if stamped && i < 10 {
				f.Close()
				return 0, fmt.Errorf("%s: line without a timestamp: %q", ent.Name(), l)
			}
			k, err := strconv.Atoi(string(l[i+5 : i+14]))
			if err != nil || k < 1 || k > n {
				continue
			}
			seen[k] = true
			lo = min(lo, k)
		}
		f.Close()
		if err := sc.Err(); err != nil {
			return 0, fmt.Errorf("%s: %w", ent.Name(), err)
		}
	}
	if lo > n {
		return n, nil
	}
	for k := lo; k <= n; k++ {
		if !seen[k] {
			lost++
		}
	}
	return lost, nil
}

func logOurs(e *env) ([]float64, error) {
	dir, err := e.scratch("log-ours")
	if err != nil {
		return nil, err
	}
	n := logLines(e)
	body := fmt.Sprintf("ExecStart = \"%s count %d\"\nRestart = \"no\"\n", e.svc, n)
	start := time.Now()
	o, err := e.startOurs(dir, map[string]string{"writer": body}, fmt.Sprintf("max_log_size: %d\nmax_log_files: %d\n", logFileSize, logFiles), nil)
	if err != nil {
		return nil, err
	}
	defer killTree(o.cmd)
	done := make(chan struct{}) // init does not exit by itself
	if err := waitLast(o.logDir, marker(n), done); err != nil {
		return nil, fmt.Errorf("%w; init output: %s", err, o.out)
	}
	took := time.Since(start)
	lost, err := countLost(o.logDir, n, true)
	if err != nil {
		return nil, err
	}
	return []float64{took.Seconds(), float64(lost)}, nil
}

// logPipe runs `svc count N | logger args...` and measures it like logOurs.
// dir is where the logger writes; the logger must create its files there.
func logPipe(e *env, dir string, stamped bool, logger string, args ...string) ([]float64, error) {
	n := logLines(e)
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	lg := exec.Command(logger, args...)
	lgOut := &tail{}
	lg.Stdin, lg.Stderr = r, lgOut
	if err := lg.Start(); err != nil {
		r.Close()
		w.Close()
		return nil, fmt.Errorf("starting %s: %w", logger, err)
	}
	wr := exec.Command(e.svc, "count", strconv.Itoa(n))
	wr.Stdout = w
	if err := wr.Start(); err != nil {
		r.Close()
		w.Close()
		killTree(lg)
		return nil, fmt.Errorf("starting the writer: %w", err)
	}
	r.Close()
	w.Close()
	done := make(chan struct{})
	waited := make(chan error, 1)
	go func() { waited <- lg.Wait(); close(done) }()
	err = waitLast(dir, marker(n), done)
	took := time.Since(start)
	wr.Wait()
	select {
	case <-done:
	default:
		lg.Process.Kill()
		<-done
	}
	reapStray()
	if err != nil {
		return nil, fmt.Errorf("%w; %s output: %s", err, logger, lgOut)
	}
	lost, err := countLost(dir, n, stamped)
	if err != nil {
		return nil, err
	}
	return []float64{took.Seconds(), float64(lost)}, nil
}

func logSvlogd(e *env) ([]float64, error) {
	dir, err := e.scratch("log-svlogd")
	if err != nil {
		return nil, err
	}
	// svlogd's n counts the old files it keeps, besides current.
	if err := os.WriteFile(filepath.Join(dir, "config"), fmt.Appendf(nil, "s%d\nn%d\n", logFileSize, logFiles-1), 0o644); err != nil {
		return nil, err
	}
	return logPipe(e, dir, true, "svlogd", "-tt", dir)
}

func logS6(e *env) ([]float64, error) {
	dir, err := e.scratch("log-s6")
	if err != nil {
		return nil, err
	}
	dir = filepath.Join(dir, "log") // s6-log creates its directory
	return logPipe(e, dir, true, "s6-log", fmt.Sprintf("n%d", logFiles-1), fmt.Sprintf("s%d", logFileSize), "T", dir)
}

// logCat is the floor: the same writer into `cat > file`, with neither
// timestamps nor rotation.
func logCat(e *env) ([]float64, error) {
	dir, err := e.scratch("log-cat")
	if err != nil {
		return nil, err
	}
	return logPipe(e, dir, false, "/bin/sh", "-c", "exec cat > "+filepath.Join(dir, "out"))
}

func logRow(runs int) row {
	return row{
		title: "Log capture",
		metrics: []metric{
			{name: "s until 1 000 000 lines of 96 B are in the log files (timestamped, 10 MB × 5 files)", format: secs},
			{name: "lines lost (worst run)", worst: true, format: func(v float64) string { return fmt.Sprintf("%.0f", v) }},
		},
		ours: contender{name: "init", measure: logOurs},
		theirs: []contender{
			{name: "svlogd -tt", needs: []string{"svlogd"}, measure: logSvlogd},
			{name: "s6-log T", needs: []string{"s6-log"}, measure: logS6},
			{name: "cat > file (floor: no timestamps, no rotation)", needs: []string{"cat"}, measure: logCat},
		},
		runs: runs,
	}
}

func secs(v float64) string { return fmt.Sprintf("%.2f s", v) }
