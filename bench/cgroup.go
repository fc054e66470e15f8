package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/nitroinit/nitroinit/internal/cgroup"
)

// Row 8: the cost of containment. init starts 100 idle services, each in a
// cgroup of its own (a delegated subtree made for the run, as systemd's
// Delegate=yes would give), against the same init with cgroups off
// (INIT_CGROUP=off), in the same run.

func cgroupRow(runs int) row {
	return row{
		title:   "Start-up, a cgroup per service",
		metrics: []metric{{name: "ms from init start until 100 services run", format: ms}},
		runs:    runs,
		ours:    contender{name: "init, a cgroup each", measure: startupOf(cgroupInit(true), 100)},
		theirs: []contender{{name: "init, cgroups off", measure: startupOf(cgroupInit(false), 100),
			note: "the same init with INIT_CGROUP=off: services in their process group only"}},
	}
}

// cgroupInit is init with a delegated cgroup subtree of its own (on) or
// with cgroups off.
func cgroupInit(on bool) supervisor {
	return supervisor{
		name: "init",
		start: func(e *env, dir string, services map[string][]string) (*running, error) {
			units := make(map[string]string, len(services))
			for name, argv := range services {
				units[name] = fmt.Sprintf("ExecStart = %q\nRestart = \"always\"\n", tomlArgv(argv))
			}
			env := []string{"INIT_CGROUP=off"}
			cg := ""
			if on {
				mnt := cgroup.FindMount()
				if mnt == "" {
					return nil, fmt.Errorf("no cgroup2 file system is mounted")
				}
				cg = filepath.Join(mnt, "nitroinit-bench-"+filepath.Base(dir))
				if err := os.Mkdir(cg, 0o755); err != nil {
					return nil, fmt.Errorf("a cgroup for the run (root needed): %w", err)
				}
				env = []string{"INIT_CGROUP=" + cg}
			}
			o, err := e.startOurs(dir, units, "", env)
			if err != nil {
				removeCgroups(cg)
				return nil, err
			}
			return &running{pid: o.cmd.Process.Pid, out: o.out, kill: func() {
				killTree(o.cmd)
				removeCgroups(cg)
			}}, nil
		},
	}
}

// removeCgroups empties and removes the run's subtree.
func removeCgroups(dir string) {
	if dir == "" {
		return
	}
	entries, _ := os.ReadDir(dir)
	for _, ent := range entries {
		if ent.IsDir() {
			p := filepath.Join(dir, ent.Name())
			g := &cgroup.Group{Path: p}
			g.Kill()
			g.WaitEmpty(5 * time.Second)
			os.Remove(p)
		}
	}
	os.Remove(dir)
}
