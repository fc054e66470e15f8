package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"time"
)

// Rows 3 and 6 run many idle services (svc sleep TAG, where TAG names the
// run and the service) under each supervisor; row 4 runs one service that
// exits at once.

// idleServices returns n service names and their argv.
func (e *env) idleServices(tag string, n int) map[string][]string {
	m := make(map[string][]string, n)
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("s%03d", i)
		m[name] = []string{e.svc, "sleep", tag + "-" + name}
	}
	return m
}

// running counts the idle services of tag that have exec'd svc below pid.
func (e *env) running(pid int, tag string) int {
	n := 0
	prefix := e.svc + " sleep " + tag + "-"
	for _, p := range descendants(pid) {
		if strings.HasPrefix(cmdline(p), prefix) && !isZombie(p) {
			n++
		}
	}
	return n
}

// supervisor is one way of running a set of services.
type supervisor struct {
	name  string
	needs []string
	// start runs the supervisor on services in dir and returns its process
	// and the names of the processes that make up the supervisor (for
	// memory accounting; empty means the top process alone).
	start func(e *env, dir string, services map[string][]string) (*running, error)
	note  string
}

// running is a supervisor under measurement.
type running struct {
	pid   int // the supervisor's top process
	kill  func()
	parts []string // cmdline prefixes of the supervisor's other processes
	out   *tail
}

func tomlArgv(argv []string) string {
	return strings.Join(argv, " ")
}

func supervisors() []supervisor {
	return []supervisor{
		{
			name: "init",
			start: func(e *env, dir string, services map[string][]string) (*running, error) {
				units := make(map[string]string, len(services))
				for name, argv := range services {
					units[name] = fmt.Sprintf("ExecStart = %q\nRestart = \"always\"\n", tomlArgv(argv))
				}
				o, err := e.startOurs(dir, units, "", nil)
				if err != nil {
					return nil, err
				}
				return &running{pid: o.cmd.Process.Pid, kill: func() { killTree(o.cmd) }, out: o.out}, nil
			},
		},
		{
			name:  "s6-svscan + s6-supervise",
			needs: []string{"s6-svscan", "s6-supervise"},
			start: func(e *env, dir string, services map[string][]string) (*running, error) {
				scan, err := s6Dir(dir, services)
				if err != nil {
					return nil, err
				}
				cmd, out, err := startCmd(nil, "s6-svscan", scan)
				if err != nil {
					return nil, err
				}
				return &running{pid: cmd.Process.Pid, kill: func() { killTree(cmd) }, parts: []string{"s6-supervise"}, out: out}, nil
			},
			note: "run scripts are #!/bin/sh exec …",
		},
		{
			name:  "runsvdir + runsv",
			needs: []string{"runsvdir", "runsv"},
			start: func(e *env, dir string, services map[string][]string) (*running, error) {
				scan, err := s6Dir(dir, services)
				if err != nil {
					return nil, err
				}
				cmd, out, err := startCmd(nil, "runsvdir", scan)
				if err != nil {
					return nil, err
				}
				return &running{pid: cmd.Process.Pid, kill: func() { killTree(cmd) }, parts: []string{"runsv "}, out: out}, nil
			},
			note: "run scripts are #!/bin/sh exec …",
		},
		{
			name:  "supervisord",
			needs: []string{"supervisord"},
			start: func(e *env, dir string, services map[string][]string) (*running, error) {
				_, cmd, out, err := startSupervisord(dir, services, nil)
				if err != nil {
					return nil, err
				}
				return &running{pid: cmd.Process.Pid, kill: func() { killTree(cmd) }, out: out}, nil
			},
			note: "startsecs=0",
		},
	}
}

// startupOf returns the measurement of row 3 for s: the time from starting
// the supervisor until all n services have exec'd their program.
func startupOf(s supervisor, n int) func(e *env) ([]float64, error) {
	return func(e *env) ([]float64, error) {
		dir, err := e.scratch("start")
		if err != nil {
			return nil, err
		}
		tag := filepath.Base(dir)
		services := e.idleServices(tag, n)
		start := time.Now()
		r, err := s.start(e, dir, services)
		if err != nil {
			return nil, err
		}
		defer r.kill()
		if err := waitFor(60*time.Second, 2*time.Millisecond, fmt.Sprintf("%d services to run", n), func() bool {
			return e.running(r.pid, tag) == n
		}); err != nil {
			return nil, fmt.Errorf("%w (%d running); output: %s", err, e.running(r.pid, tag), r.out)
		}
		return []float64{float64(time.Since(start).Microseconds()) / 1000}, nil
	}
}

// memoryOf returns the measurement of row 6 for s: once n idle services
// run and a second has passed, the summed RSS and PSS of the supervisor's
// own processes (not the services').
func memoryOf(s supervisor, n int) func(e *env) ([]float64, error) {
	return func(e *env) ([]float64, error) {
		dir, err := e.scratch("mem")
		if err != nil {
			return nil, err
		}
		tag := filepath.Base(dir)
		r, err := s.start(e, dir, e.idleServices(tag, n))
		if err != nil {
			return nil, err
		}
		defer r.kill()
		if err := waitFor(60*time.Second, 10*time.Millisecond, fmt.Sprintf("%d services to run", n), func() bool {
			return e.running(r.pid, tag) == n
		}); err != nil {
			return nil, fmt.Errorf("%w; output: %s", err, r.out)
		}
		time.Sleep(time.Second)
		pids := []int{r.pid}
		for _, p := range descendants(r.pid) {
			c := cmdline(p)
			for _, part := range r.parts {
				if strings.HasPrefix(c, part) {
					pids = append(pids, p)
				}
			}
		}
		var rss, pss int64
		for _, p := range pids {
			r, s, err := memKB(p)
			if err != nil {
				return nil, fmt.Errorf("memory of pid %d (%s): %w", p, cmdline(p), err)
			}
			rss += r
			pss += s
		}
		alone, err := aloneKB(pids)
		if err != nil {
			return nil, fmt.Errorf("memory of %v: %w", pids, err)
		}
		return []float64{float64(rss) / 1024, float64(pss) / 1024, float64(alone) / 1024, float64(len(pids))}, nil
	}
}

func supervisorRow(title string, metrics []metric, runs int, pick []string, measure func(supervisor) func(*env) ([]float64, error)) row {
	r := row{title: title, metrics: metrics, runs: runs}
	for _, s := range supervisors() {
		c := contender{name: s.name, needs: s.needs, measure: measure(s), note: s.note}
		if s.name == "init" {
			r.ours = c
			continue
		}
		for _, p := range pick {
			if p == s.name {
				r.theirs = append(r.theirs, c)
			}
		}
	}
	return r
}

func startupRow(runs int) row {
	return supervisorRow("Start-up", []metric{{name: "ms from supervisor start until 100 services run", format: ms}}, runs,
		[]string{"s6-svscan + s6-supervise", "supervisord", "runsvdir + runsv"},
		func(s supervisor) func(*env) ([]float64, error) { return startupOf(s, 100) })
}

func memoryRow(runs int) row {
	mb := func(v float64) string { return fmt.Sprintf("%.1f MB", v) }
	return supervisorRow("Memory, 50 idle services", []metric{
		{name: "RSS of the supervisor's processes (summed)", format: mb},
		{name: "PSS of the same (shared pages split, with every process on the machine)", format: mb},
		{name: "the same processes alone: private pages, and shared file pages once", format: mb},
		{name: "supervisor processes", noRatio: true, format: func(v float64) string { return fmt.Sprintf("%.0f", v) }},
	}, runs,
		[]string{"s6-svscan + s6-supervise", "supervisord", "runsvdir + runsv"},
		func(s supervisor) func(*env) ([]float64, error) { return memoryOf(s, 50) })
}
