package main

import (
	"errors"

	"os"
	"runtime"

	"github.com/nitroinit/nitroinit/internal/cgroup"
	"golang.org/x/sys/unix"
)

// reserveBytes is the heap init grows, touches and frees before locking
// its memory: the Go runtime keeps the freed pages for init's later
// allocations, so init can log and answer requests while the rest of the
// enclave is out of memory, without asking the kernel for a page.
const reserveBytes = 8 << 20

// protectSelf makes PID 1 the last thing the OOM killer would take: the
// kernel panics when init dies, which would end every service at once.
//
//   - oom_score_adj -1000 exempts init from the OOM killer. Its children
//     inherit the value; the supervisor gives each service 0 or its
//     OOMScoreAdjust right after starting it.
//   - A reserve: the heap is grown by reserveBytes and freed, and
//     mlockall(MCL_CURRENT|MCL_ONFAULT) then locks every page of init's
//     mappings that is resident (its code, data, stacks and that free
//     heap) and every page of them faulted in later, so reclaim under
//     memory pressure cannot evict them and the runtime cannot hand free
//     heap back to the kernel (madvise fails on locked pages). MCL_ONFAULT
//     matters: plain MCL_CURRENT would fault in the whole of the Go
//     runtime's mapped heap arena (64 MiB) and pin it, which a 512 MiB
//     enclave cannot spare. Init's own use is bounded (docs/protocol.md),
//     so what stays locked is bounded too.
func protectSelf(log *logger) {
	if err := os.WriteFile("/proc/self/oom_score_adj", []byte("-1000"), 0); err != nil {
		log.Printf("self-protection: oom_score_adj -1000: %v (the OOM killer may choose init)", err)
	}
	reserve := make([]byte, reserveBytes)
	for i := 0; i < len(reserve); i += os.Getpagesize() {
		reserve[i] = 1
	}
	runtime.KeepAlive(reserve)
	reserve = nil
	runtime.GC()
	if err := unix.Mlockall(unix.MCL_CURRENT | unix.MCL_ONFAULT); err != nil {
		log.Printf("self-protection: mlockall: %v (init's memory may be reclaimed under pressure)", err)
		return
	}
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru)
	log.Printf("self-protection: oom_score_adj -1000, %d MiB of memory locked (%d MiB free heap reserve)", ru.Maxrss>>10, reserveBytes>>20)
}

// cgroupEnv names the cgroup v2 directory init is to use in supervisor
// mode, or "off".
const cgroupEnv = "INIT_CGROUP"

// setupCgroups finds the subtree in which services get their own cgroups.
// As PID 1 it is the root of the hierarchy init mounted, with init itself
// moved to init.scope. Otherwise it is $INIT_CGROUP, or the group init was
// started in when that is writable (delegated to it) and not the root of
// the hierarchy, which belongs to the host. Where there is none, init says
// once that limits are off and returns nil.
func setupCgroups(pid1 bool, log *logger) *cgroup.Tree {
	dir := os.Getenv(cgroupEnv)
	switch {
	case dir == "off":
		log.Printf("cgroups: off (%s=off): services are contained by their process group only; limits (MemoryMax, TasksMax, ...) are off", cgroupEnv)
		return nil
	case pid1:
		dir = cgroup.Mount
	case dir == "":
		dir = cgroup.Own()
		if dir == "" {
			log.Printf("cgroups: limits are off: no cgroup v2 hierarchy (cgroup v1 is not supported); services are contained by their process group only")
			return nil
		}
		if dir == cgroup.FindMount() {
			log.Printf("cgroups: limits are off: init runs in the root cgroup %s, which belongs to the host; delegate a subtree (e.g. systemd's Delegate=yes) or set %s; services are contained by their process group only", dir, cgroupEnv)
			return nil
		}
	}
	t, err := cgroup.Open(dir, os.Getpid())
	if err != nil {
		hint := ""
		if errors.Is(err, unix.EBUSY) {
			hint = " (other processes share init's group: start init in a group of its own)"
		}
		log.Printf("cgroups: limits are off: %v%s; services are contained by their process group only", err, hint)
		return nil
	}
	var have []string
	for _, c := range []string{"memory", "pids", "cpu"} {
		if t.Has(c) {
			have = append(have, c)
		}
	}
	log.Printf("cgroups: one group per service under %s (controllers: %v)", t.Dir(), have)
	return t
}
