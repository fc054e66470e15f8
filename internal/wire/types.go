package wire

// The payload types below are shared by requests and responses. Field names
// and JSON keys follow the reference implementation (enclave-init 0.8) so its
// clients keep working; fields it does not have are additions that its
// clients ignore, and they are marked as such.

// ServiceInfo is one row of a ServiceList response.
type ServiceInfo struct {
	Name          string `json:"name"`
	Enabled       bool   `json:"enabled"`
	Active        bool   `json:"active"`
	RestartPolicy string `json:"restart_policy"`
	RestartCount  int    `json:"restart_count"`

	// Additions.
	State string `json:"state,omitempty"` // running, starting, stopping, stopped, exited, failed, waiting, invalid, disabled
	Error string `json:"error,omitempty"` // why the service is failed, held back or invalid
	// Figures from the service's cgroup, while it has one: memory in use
	// and its peak (bytes), and tasks (processes and threads).
	MemoryBytes     *uint64 `json:"memory_bytes,omitempty"`
	MemoryPeakBytes *uint64 `json:"memory_peak_bytes,omitempty"`
	Tasks           *uint64 `json:"tasks,omitempty"`
}

// Dependencies lists a service's dependency keys as written in its file.
type Dependencies struct {
	Before     []string `json:"before"`
	After      []string `json:"after"`
	Requires   []string `json:"requires"`
	RequiredBy []string `json:"required_by"`
}

// ServiceStatus is the body of a ServiceStatus response.
type ServiceStatus struct {
	Name             string       `json:"name"`
	Enabled          bool         `json:"enabled"`
	Active           bool         `json:"active"`
	PID              *int         `json:"pid"`
	RestartPolicy    string       `json:"restart_policy"`
	RestartCount     int          `json:"restart_count"`
	RestartSec       uint64       `json:"restart_sec"`
	ExitStatus       *int         `json:"exit_status"`
	ExecStart        string       `json:"exec_start"`
	WorkingDirectory *string      `json:"working_directory"`
	Dependencies     Dependencies `json:"dependencies"`

	// Additions.
	State         string `json:"state,omitempty"`
	Error         string `json:"error,omitempty"`
	Type          string `json:"type,omitempty"`
	StatusText    string `json:"status_text,omitempty"` // last STATUS= from sd_notify
	ChangedOnDisk bool   `json:"changed_on_disk,omitempty"`
	Path          string `json:"path,omitempty"`
	Since         int64  `json:"since,omitempty"` // unix seconds of the last state change
	// RestartMillis is RestartSec in milliseconds, for delays that are not
	// whole seconds (restart_sec, as the reference's, is whole seconds).
	RestartMillis uint64 `json:"restart_ms,omitempty"`
	// Warnings lists problems in the service file that were tolerated.
	Warnings []string `json:"warnings,omitempty"`
	// Figures from the service's cgroup, as in ServiceInfo, with its
	// memory limit (absent when unlimited) and path.
	MemoryBytes     *uint64 `json:"memory_bytes,omitempty"`
	MemoryPeakBytes *uint64 `json:"memory_peak_bytes,omitempty"`
	Tasks           *uint64 `json:"tasks,omitempty"`
	MemoryMaxBytes  *int64  `json:"memory_max_bytes,omitempty"`
	Cgroup          string  `json:"cgroup,omitempty"`
}

// ProcessInfo describes one process from /proc.
type ProcessInfo struct {
	PID         int     `json:"pid"`
	PPID        int     `json:"ppid"`
	Name        string  `json:"name"`
	Cmdline     string  `json:"cmdline"`
	State       string  `json:"state"` // one-letter /proc code
	CPUPercent  Float   `json:"cpu_percent"`
	MemoryKB    uint64  `json:"memory_kb"`
	StartTime   uint64  `json:"start_time"` // unix seconds (the reference sends clock ticks since boot)
	Managed     bool    `json:"managed"`
	ServiceName *string `json:"service_name"`

	// Additions: for a service's main process, the figures of the
	// service's cgroup (all its processes), as in ServiceInfo.
	ServiceMemoryBytes     *uint64 `json:"service_memory_bytes,omitempty"`
	ServiceMemoryPeakBytes *uint64 `json:"service_memory_peak_bytes,omitempty"`
	ServiceTasks           *uint64 `json:"service_tasks,omitempty"`
}

// SystemStatus is the body of a SystemStatus response.
type SystemStatus struct {
	UptimeSecs      uint64 `json:"uptime_secs"`
	TotalServices   int    `json:"total_services"`
	ActiveServices  int    `json:"active_services"`
	EnabledServices int    `json:"enabled_services"`
	TotalProcesses  int    `json:"total_processes"`
	LogDir          string `json:"log_dir"`
	ServiceDir      string `json:"service_dir"`

	// Additions.
	Mode      string      `json:"mode,omitempty"`      // "pid1" or "supervisor"
	Heartbeat string      `json:"heartbeat,omitempty"` // e.g. "ok after 12ms", "failed: ...", "disabled"
	NSM       string      `json:"nsm,omitempty"`       // "present", "absent", "disabled", "failed: ..."
	Modules   []string    `json:"modules,omitempty"`   // kernel modules and what happened to each
	Policy    *PolicyInfo `json:"policy,omitempty"`    // the permission policy in force
	Version   string      `json:"version,omitempty"`
}

// PolicyInfo reports the control-plane permission policy in force.
type PolicyInfo struct {
	UnixUIDs     []uint32 `json:"unix_uids"`
	UnixGIDs     []uint32 `json:"unix_gids"`
	UnixClasses  []string `json:"unix_classes"`
	VsockCIDs    []uint32 `json:"vsock_cids"` // empty: any
	VsockClasses []string `json:"vsock_classes"`
	// Caller is the class set granted to the connection that asked.
	Caller []string `json:"caller,omitempty"`
}
