// Package config reads init.yaml (the configuration of init itself) and
// initctl.yaml (how initctl reaches init).
//
// The keys and defaults follow the enclave-init reference so that its files
// keep working, with a few deliberate differences that docs/configuration.md
// explains (control.vsock_cid defaults to VMADDR_CID_ANY; permissions,
// timeouts, kernel modules, cgroups and failure actions are additions).
//
// Loading never gives up on the first problem: PID 1 has nobody to ask, so it
// keeps every key it could read, uses defaults for the rest and reports each
// problem with file, line and key.
package config

import (
	"maps"
	"slices"
	"sort"
	"time"

	"github.com/nitroinit/nitroinit/internal/nitro"
)

// VsockCIDAny is VMADDR_CID_ANY: bind on whatever CID this machine has.
const VsockCIDAny = 4294967295

// Class is a permission class for control requests.
type Class string

// Permission classes, from least to most powerful.
const (
	// ClassRead allows requests that only look: list, status, logs, ps, ping.
	ClassRead Class = "read"
	// ClassManage allows starting, stopping, enabling and disabling services,
	// reload, clearing and streaming logs.
	ClassManage Class = "manage"
	// ClassExec allows running arbitrary commands (ps start), signalling
	// arbitrary processes, reboot and shutdown: in an enclave that is root on
	// the attested machine.
	ClassExec Class = "exec"
)

// AllClasses lists every class, least powerful first. Root on the Unix
// socket always has all of them.
var AllClasses = []Class{ClassRead, ClassManage, ClassExec}

// The classes a peer gets when init.yaml lists it (or, over vsock, admits
// it) without saying which classes: least privilege for a local user, who
// is named one by one and is served beside root, may only look; the parent
// over vsock, which the reference lets do everything, keeps what operating
// its services needs, and exec must be switched on explicitly.
var (
	DefaultUnixClasses  = []Class{ClassRead}
	DefaultVsockClasses = []Class{ClassRead, ClassManage}
)

// Valid reports whether c is one of the known classes.
func (c Class) Valid() bool {
	return c == ClassRead || c == ClassManage || c == ClassExec
}

// Action says what init does when a boot step fails.
type Action string

// Failure actions.
const (
	// ActionWarn logs the failure and carries on booting.
	ActionWarn Action = "warn"
	// ActionFatal stops the boot (the enclave powers off).
	ActionFatal Action = "fatal"
)

// Cgroup modes for the cgroups key.
const (
	CgroupsAuto = "auto" // v2 if the kernel has it, else v1, else none
	CgroupsV2   = "v2"
	CgroupsV1   = "v1"
	CgroupsOff  = "off"
)

// Init is the configuration of init, read from init.yaml.
type Init struct {
	// Runtime keys: taken from the new root's file after the root switch.

	ServiceDir   string            // service_dir: where *.service files live
	LogDir       string            // log_dir: where <name>.log files are written
	MaxLogSize   int64             // max_log_size: bytes per log file before rotation
	MaxLogFiles  int               // max_log_files: log files kept per service, the live one included
	LogRingLines int               // log_ring_lines: lines per service kept in memory
	Environment  map[string]string // environment: given to init and every service
	Control      Control           // control: the control sockets

	// Boot keys: taken from the initramfs's file, used before the root switch.

	Vsock         Heartbeat // vsock: the readiness heartbeat to the parent
	NSMDriverPath string    // nsm_driver_path: module to load; "" (YAML null) disables
	KernelModules []string  // kernel_modules: more modules to load, in order
	PivotRoot     bool      // pivot_root: switch to PivotRootDir
	PivotRootDir  string    // pivot_root_dir: the directory that becomes /
	Cgroups       string    // cgroups: auto, v2, v1 or off
	OnFailure     OnFailure // on_failure: what a failed boot step does
	Loopback      bool      // loopback: bring up lo with 127.0.0.1/8 and ::1
}

// Control configures the control sockets and who may use them.
type Control struct {
	UnixSocketEnabled bool          // unix_socket_enabled
	UnixSocketPath    string        // unix_socket_path
	VsockEnabled      bool          // vsock_enabled
	VsockCID          uint32        // vsock_cid: CID to bind, VsockCIDAny for any
	VsockPort         uint32        // vsock_port
	MaxConnections    int           // max_connections: concurrent requests served
	IOTimeout         time.Duration // io_timeout: per read/write of a request or response
	Permissions       Permissions   // permissions
}

// Permissions says which control request classes each kind of peer gets.
type Permissions struct {
	Unix  UnixPermissions
	Vsock VsockPermissions
}

// UnixPermissions applies to Unix socket peers, identified by SO_PEERCRED.
// Root (uid 0) always gets every class. A peer whose uid is in UIDs or whose
// gid is in GIDs gets Classes; anyone else is refused.
type UnixPermissions struct {
	UIDs    []uint32
	GIDs    []uint32
	Classes []Class
}

// VsockPermissions applies to vsock peers. An empty CIDs list admits any peer
// CID; otherwise only listed CIDs are served. Admitted peers get Classes.
type VsockPermissions struct {
	CIDs    []uint32
	Classes []Class
}

// Heartbeat configures the readiness heartbeat sent to the parent instance.
type Heartbeat struct {
	Enabled bool          // enabled
	CID     uint32        // cid: the parent, always 3 on Nitro
	Port    uint32        // port
	Timeout time.Duration // timeout: how long to wait for the parent's answer
}

// OnFailure holds the action for each optional boot step.
type OnFailure struct {
	Heartbeat Action // heartbeat
	NSM       Action // nsm: loading the NSM driver
	PivotRoot Action // pivot_root: switching to the new root
}

// Default values of init.yaml keys.
const (
	DefaultServiceDir   = "/service"
	DefaultLogDir       = "/log"
	DefaultMaxLogSize   = 10485760
	DefaultMaxLogFiles  = 5
	DefaultLogRingLines = 1000
	DefaultSocketPath   = "/run/init.sock"
	DefaultControlPort  = nitro.ControlPort
	DefaultParentCID    = nitro.ParentCID
	DefaultHeartbeat    = nitro.HeartbeatPort
	DefaultNSMDriver    = "nsm.ko"
	DefaultPivotRootDir = nitro.RootfsPath
)

// DefaultInit returns the configuration used when init.yaml is absent.
func DefaultInit() *Init {
	return &Init{
		ServiceDir:   DefaultServiceDir,
		LogDir:       DefaultLogDir,
		MaxLogSize:   DefaultMaxLogSize,
		MaxLogFiles:  DefaultMaxLogFiles,
		LogRingLines: DefaultLogRingLines,
		Environment:  map[string]string{},
		Control: Control{
			UnixSocketEnabled: true,
			UnixSocketPath:    DefaultSocketPath,
			VsockEnabled:      false,
			VsockCID:          VsockCIDAny,
			VsockPort:         DefaultControlPort,
			MaxConnections:    64,
			IOTimeout:         10 * time.Second,
			Permissions: Permissions{
				Unix:  UnixPermissions{Classes: slices.Clone(DefaultUnixClasses)},
				Vsock: VsockPermissions{Classes: slices.Clone(DefaultVsockClasses)},
			},
		},
		Vsock: Heartbeat{
			Enabled: true,
			CID:     DefaultParentCID,
			Port:    DefaultHeartbeat,
			Timeout: 30 * time.Second,
		},
		NSMDriverPath: DefaultNSMDriver,
		PivotRoot:     true,
		PivotRootDir:  DefaultPivotRootDir,
		Cgroups:       CgroupsAuto,
		OnFailure:     OnFailure{Heartbeat: ActionWarn, NSM: ActionWarn, PivotRoot: ActionWarn},
		Loopback:      true,
	}
}

// Clone returns a deep copy of c.
func (c *Init) Clone() *Init {
	n := *c
	n.Environment = maps.Clone(c.Environment)
	if n.Environment == nil {
		n.Environment = map[string]string{}
	}
	n.KernelModules = slices.Clone(c.KernelModules)
	p := &n.Control.Permissions
	p.Unix.UIDs = slices.Clone(p.Unix.UIDs)
	p.Unix.GIDs = slices.Clone(p.Unix.GIDs)
	p.Unix.Classes = slices.Clone(p.Unix.Classes)
	p.Vsock.CIDs = slices.Clone(p.Vsock.CIDs)
	p.Vsock.Classes = slices.Clone(p.Vsock.Classes)
	return &n
}

// WithRuntime merges the two files read across the root switch.
//
// Init reads c from the initramfs before the root switch; those BOOT keys
// drive the switch itself and cannot change afterwards: vsock (heartbeat),
// nsm_driver_path, kernel_modules, pivot_root, pivot_root_dir, cgroups and
// on_failure. After the switch init reads r from the new root's
// /etc/init.yaml; its RUNTIME keys describe what runs there: service_dir,
// log_dir, max_log_size, max_log_files, log_ring_lines, environment and
// control. The result has c's boot keys and r's runtime keys; a nil r keeps
// c's runtime keys. Neither input is modified.
func (c *Init) WithRuntime(r *Init) *Init {
	out := c.Clone()
	if r == nil {
		return out
	}
	rt := r.Clone()
	out.ServiceDir = rt.ServiceDir
	out.LogDir = rt.LogDir
	out.MaxLogSize = rt.MaxLogSize
	out.MaxLogFiles = rt.MaxLogFiles
	out.LogRingLines = rt.LogRingLines
	out.Environment = rt.Environment
	out.Control = rt.Control
	return out
}

// Environ returns the environment key as sorted KEY=VALUE strings.
func (c *Init) Environ() []string {
	out := make([]string, 0, len(c.Environment))
	for k, v := range c.Environment {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// NSMEnabled reports whether an NSM driver should be loaded.
func (c *Init) NSMEnabled() bool { return c.NSMDriverPath != "" }
