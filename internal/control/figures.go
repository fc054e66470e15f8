package control

import (
	"path/filepath"
	"strings"

	"github.com/nitroinit/nitroinit/internal/cgroup"
	"github.com/nitroinit/nitroinit/internal/wire"
)

// addServiceFigures adds the memory and task figures of the cgroup of a
// service's main process, when it is in a group of its own
// (<name>.service).
func addServiceFigures(p *wire.ProcessInfo) {
	dir := cgroup.OfProcess(p.PID)
	if !strings.HasSuffix(filepath.Base(dir), ".service") {
		return
	}
	st := cgroup.ReadStats(dir)
	p.ServiceTasks = &st.Tasks
	if st.Memory {
		p.ServiceMemoryBytes, p.ServiceMemoryPeakBytes = &st.MemoryCurrent, &st.MemoryPeak
	}
}
