package unit

import (
	"reflect"
	"strings"
	"testing"

	"github.com/nitroinit/nitroinit/internal/cgroup"
	"golang.org/x/sys/unix"
)

func TestParseLimits(t *testing.T) {
	physicalMemory = func() uint64 { return 1 << 30 }
	systemTasks = func() uint64 { return 10000 }
	adj := func(n int) *int { return &n }
	inf := uint64(unix.RLIM_INFINITY)
	tests := []struct {
		line    string
		cg      cgroup.Limits
		rlimits []Rlimit
		oom     *int
		err     string // substring; the line number is checked too
	}{
		{line: `MemoryMax = "512M"`, cg: cgroup.Limits{MemoryMax: 512 << 20}},
		{line: `MemoryMax = "1.5G"`, cg: cgroup.Limits{MemoryMax: 3 << 29}},
		{line: `MemoryMax = 65536`, cg: cgroup.Limits{MemoryMax: 65536}},
		{line: `MemoryMax = "64K"`, cg: cgroup.Limits{MemoryMax: 64 << 10}},
		{line: `MemoryMax = "infinity"`, cg: cgroup.Limits{MemoryMax: cgroup.Max}},
		{line: `MemoryMax = "25%"`, cg: cgroup.Limits{MemoryMax: 256 << 20}},
		{line: `MemoryHigh = "100M"`, cg: cgroup.Limits{MemoryHigh: 100 << 20}},
		{line: `TasksMax = 50`, cg: cgroup.Limits{TasksMax: 50}},
		{line: `TasksMax = "50"`, cg: cgroup.Limits{TasksMax: 50}},
		{line: `TasksMax = "15%"`, cg: cgroup.Limits{TasksMax: 1500}},
		{line: `TasksMax = "infinity"`, cg: cgroup.Limits{TasksMax: cgroup.Max}},
		{line: `CPUWeight = 200`, cg: cgroup.Limits{CPUWeight: 200}},
		{line: `CPUWeight = "idle"`, cg: cgroup.Limits{CPUWeight: 1}},
		{line: `CPUQuota = "50%"`, cg: cgroup.Limits{CPUQuota: 50000}},
		{line: `CPUQuota = "200%"`, cg: cgroup.Limits{CPUQuota: 200000}},
		{line: `LimitNOFILE = 64`, rlimits: []Rlimit{{"LimitNOFILE", unix.RLIMIT_NOFILE, 64, 64}}},
		{line: `LimitNOFILE = "1024:4096"`, rlimits: []Rlimit{{"LimitNOFILE", unix.RLIMIT_NOFILE, 1024, 4096}}},
		{line: `LimitNPROC = "infinity"`, rlimits: []Rlimit{{"LimitNPROC", unix.RLIMIT_NPROC, inf, inf}}},
		{line: `LimitCORE = "0:infinity"`, rlimits: []Rlimit{{"LimitCORE", unix.RLIMIT_CORE, 0, inf}}},
		{line: `LimitMEMLOCK = "64M:128M"`, rlimits: []Rlimit{{"LimitMEMLOCK", unix.RLIMIT_MEMLOCK, 64 << 20, 128 << 20}}},
		{line: `OOMScoreAdjust = -500`, oom: adj(-500)},
		{line: `OOMScoreAdjust = "1000"`, oom: adj(1000)},

		{line: `MemoryMax = "512X"`, err: `MemoryMax: "512X" is not a size`},
		{line: `MemoryMax = "-1"`, err: `MemoryMax: "-1" is not a size`},
		{line: `MemoryMax = "0"`, err: `MemoryMax: "0" is not a size`},
		{line: `MemoryMax = "120%"`, err: `MemoryMax: "120%" is not a percentage`},
		{line: `MemoryHigh = true`, err: `MemoryHigh: true is not a size`},
		{line: `TasksMax = 0`, err: `TasksMax: 0 is not a number of tasks`},
		{line: `CPUWeight = 0`, err: `CPUWeight: 0 is not a weight from 1 to 10000`},
		{line: `CPUWeight = 10001`, err: `CPUWeight: 10001 is not a weight`},
		{line: `CPUQuota = 50`, err: `CPUQuota: 50 is not a percentage`},
		{line: `CPUQuota = "50"`, err: `CPUQuota: "50" is not a percentage`},
		{line: `LimitNOFILE = "64K"`, err: `LimitNOFILE: "64K" is not a number`},
		{line: `LimitNOFILE = "100:10"`, err: `the soft limit is above the hard limit`},
		{line: `LimitMEMLOCK = "lots"`, err: `LimitMEMLOCK: "lots" is not a size such as "64M"`},
		{line: `OOMScoreAdjust = -1001`, err: `OOMScoreAdjust: -1001 is not a whole number from -1000 to 1000`},
	}
	for _, tc := range tests {
		t.Run(tc.line, func(t *testing.T) {
			file := "ExecStart = \"/bin/true\"\n" + tc.line + "\n"
			u, err := Parse("/service/x.service", []byte(file))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), "/service/x.service:2: ") {
					t.Fatalf("err = %v, want /service/x.service:2: ... %s", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if u.Cgroup != tc.cg {
				t.Errorf("cgroup limits = %+v, want %+v", u.Cgroup, tc.cg)
			}
			if !reflect.DeepEqual(u.Rlimits, tc.rlimits) {
				t.Errorf("rlimits = %+v, want %+v", u.Rlimits, tc.rlimits)
			}
			if !reflect.DeepEqual(u.OOMScoreAdjust, tc.oom) {
				t.Errorf("OOMScoreAdjust = %v, want %v", u.OOMScoreAdjust, tc.oom)
			}
			if len(u.Warnings) != 0 {
				t.Errorf("warnings: %q", u.Warnings)
			}
		})
	}
}
