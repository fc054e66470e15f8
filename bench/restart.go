package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Row 4: a service that exits at once (this program in its crasher role:
// append one byte to a counter file, exit 1), restarted for ever with no
// delay asked for. The counter file's size is the number of starts; the
// figure is the time per restart over a fixed window once restarts flow.

const crashCounterEnv = "NITROINIT_BENCH_CRASH_COUNTER"

// crash is the crasher role.
func crash(path string) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err == nil {
		f.Write([]byte{'.'})
		f.Close()
	}
	os.Exit(1)
}

func starts(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}

func restartWindow(e *env) time.Duration {
	// Long enough for runsv's 1 s spacing to show as more than one restart.
	return 4 * time.Second
}

// measureRestarts waits for restarts to flow, then watches the counter
// for the window, noting when each increase is first seen, and returns ms
// per restart and restarts per second between the first and the last
// increase seen (so that runsv's one restart a second is not rounded to
// the window's edges).
func measureRestarts(e *env, counter string, out *tail) ([]float64, error) {
	if err := waitFor(10*time.Second, time.Millisecond, "the crasher's first two starts", func() bool { return starts(counter) >= 2 }); err != nil {
		return nil, fmt.Errorf("%w; output: %s", err, out)
	}
	var (
		first, last   time.Time
		cFirst, cLast int64
		prev          = starts(counter)
	)
	for end := time.Now().Add(restartWindow(e)); time.Now().Before(end); time.Sleep(time.Millisecond) {
		c := starts(counter)
		if c == prev {
			continue
		}
		prev = c
		if first.IsZero() {
			first, cFirst = time.Now(), c
			continue
		}
		last, cLast = time.Now(), c
	}
	n := float64(cLast - cFirst)
	if last.IsZero() || n == 0 {
		return nil, fmt.Errorf("fewer than two restarts within %v; output: %s", restartWindow(e), out)
	}
	el := last.Sub(first).Seconds()
	return []float64{el * 1000 / n, n / el}, nil
}

func restartOurs(e *env) ([]float64, error) {
	dir, err := e.scratch("restart-ours")
	if err != nil {
		return nil, err
	}
	counter := filepath.Join(dir, "starts")
	body := fmt.Sprintf("ExecStart = %q\nRestart = \"always\"\nRestartSec = 0\nStartLimitIntervalSec = 0\n", e.self)
	o, err := e.startOurs(dir, map[string]string{"crasher": body}, "", []string{crashCounterEnv + "=" + counter})
	if err != nil {
		return nil, err
	}
	defer killTree(o.cmd)
	return measureRestarts(e, counter, o.out)
}

func restartRunsv(e *env) ([]float64, error) {
	dir, err := e.scratch("restart-runsv")
	if err != nil {
		return nil, err
	}
	counter := filepath.Join(dir, "starts")
	sd := filepath.Join(dir, "crasher")
	if err := os.MkdirAll(sd, 0o755); err != nil {
		return nil, err
	}
	// runsv execs ./run directly: no shell in between.
	if err := os.Symlink(e.self, filepath.Join(sd, "run")); err != nil {
		return nil, err
	}
	cmd, out, err := startCmd([]string{crashCounterEnv + "=" + counter}, "runsv", sd)
	if err != nil {
		return nil, err
	}
	defer killTree(cmd)
	return measureRestarts(e, counter, out)
}

func restartSupervisord(e *env) ([]float64, error) {
	dir, err := e.scratch("restart-supervisord")
	if err != nil {
		return nil, err
	}
	counter := filepath.Join(dir, "starts")
	_, cmd, out, err := startSupervisord(dir, map[string][]string{"crasher": {e.self}}, []string{crashCounterEnv + "=" + counter})
	if err != nil {
		return nil, err
	}
	defer killTree(cmd)
	return measureRestarts(e, counter, out)
}

func restartRow(runs int) row {
	return row{
		title: "Crash-restart",
		metrics: []metric{
			{name: "ms per restart of a service that exits at once (sustained)", format: func(v float64) string { return fmt.Sprintf("%.2f ms", v) }},
			{name: "the same as restarts per second (for reading; the ratio is of ms per restart)", noRatio: true, format: func(v float64) string { return fmt.Sprintf("%.0f/s", v) }},
		},
		ours: contender{name: "init", measure: restartOurs, note: "RestartSec=0, StartLimitIntervalSec=0: no spacing"},
		theirs: []contender{
			{name: "runsv", needs: []string{"runsv"}, measure: restartRunsv, note: "built-in: runsv waits 1 s before restarting a service that ran under 1 s"},
			{name: "supervisord", needs: []string{"supervisord"}, measure: restartSupervisord, note: "startsecs=0, autorestart=true; built-in: restarts on its event-loop tick"},
		},
		runs: runs,
	}
}
