// Package boot prepares an enclave for supervision when init runs as PID 1:
// early filesystems and cgroups, kernel modules (the NSM driver among them),
// the Nitro heartbeat to the parent, the /cmd and /env files of images built by
// nitro-cli, and the switch from the initramfs to the real root filesystem.
//
// Every side effect goes through Ops so that the order of the steps and the
// failure policies can be checked without being PID 1; SystemOps performs the
// real system calls. Run never panics: each step recovers and reports a panic
// as that step's error.
package boot

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/nitroinit/nitroinit/internal/nitro"
)

// Defaults used when the corresponding Config field is zero.
const (
	// DefaultHeartbeatCID is the parent instance's vsock CID, which is always 3.
	DefaultHeartbeatCID = nitro.ParentCID
	// DefaultHeartbeatPort is the port nitro-cli listens on for the heartbeat.
	DefaultHeartbeatPort = nitro.HeartbeatPort
	// DefaultHeartbeatTimeout bounds the whole heartbeat, dial retries included.
	DefaultHeartbeatTimeout = 30 * time.Second
	// DefaultNSMWait bounds the wait for /dev/nsm after the driver is loaded.
	DefaultNSMWait = time.Second
	// DefaultPivotRootDir is where nitro-cli images keep the application root.
	DefaultPivotRootDir = nitro.RootfsPath
	// NSMDevice is the character device the NSM driver creates on probe.
	NSMDevice = nitro.NSMDevicePath
)

// Cgroup modes accepted in Config.Cgroups.
const (
	CgroupsAuto = "auto" // cgroup2 when the kernel has it, else v1
	CgroupsV2   = "v2"   // cgroup2 at /sys/fs/cgroup
	CgroupsV1   = "v1"   // one v1 hierarchy per enabled controller, as AWS's init does
	CgroupsOff  = "off"  // mount nothing
)

// Keys of Config.Fatal: the steps whose failure may stop the boot.
const (
	PolicyHeartbeat = "heartbeat"
	PolicyNSM       = "nsm"
	PolicyPivotRoot = "pivot_root"
)

// Config selects what Run does. It is filled from the boot keys of the
// initramfs /etc/init.yaml; see docs/boot.md for the mapping.
type Config struct {
	// Mounts enables the early filesystems (and cgroups, console, /dev links),
	// before the root switch and again inside the new root.
	Mounts bool
	// Cgroups is "auto" (also ""), "v2", "v1" or "off".
	Cgroups string
	// NSMPath is the NSM driver module; "" disables it. A relative path is
	// relative to "/", where AWS's init runs.
	NSMPath string
	// Modules are further kernel modules, loaded in order before the NSM
	// driver (relative paths are relative to "/").
	Modules []string
	// Heartbeat enables the one-byte heartbeat to the parent over vsock.
	Heartbeat bool
	// HeartbeatCID and HeartbeatPort address the parent; zero means 3 and 9000.
	HeartbeatCID, HeartbeatPort uint32
	// HeartbeatTimeout bounds the heartbeat; zero means 30 s.
	HeartbeatTimeout time.Duration
	// PivotRoot enables the switch to PivotRootDir ("" means /rootfs).
	PivotRoot    bool
	PivotRootDir string
	// Fatal marks steps whose failure stops the boot ("heartbeat", "nsm",
	// "pivot_root"); absent or false means warn and go on.
	Fatal map[string]bool
	// NSMWait bounds the wait for /dev/nsm after loading; zero means 1 s.
	NSMWait time.Duration
	// Loopback brings up lo with 127.0.0.1/8 and ::1 (see loopback.go).
	Loopback bool
}

// DefaultConfig returns the configuration init uses as PID 1 when
// /etc/init.yaml sets none of the boot keys.
func DefaultConfig() Config {
	return Config{
		Mounts:           true,
		Cgroups:          CgroupsAuto,
		NSMPath:          "nsm.ko",
		Heartbeat:        true,
		HeartbeatCID:     DefaultHeartbeatCID,
		HeartbeatPort:    DefaultHeartbeatPort,
		HeartbeatTimeout: DefaultHeartbeatTimeout,
		PivotRoot:        true,
		PivotRootDir:     DefaultPivotRootDir,
		Loopback:         true,
	}
}

// Step records one boot step for system-status.
type Step struct {
	Name     string
	Err      error // nil when the step succeeded or was skipped
	Duration time.Duration
}

// String renders the step as "name: ok (3ms)" or "name: <error> (3ms)".
func (s Step) String() string {
	if s.Err != nil {
		return fmt.Sprintf("%s: %v (%s)", s.Name, s.Err, roundDuration(s.Duration))
	}
	return fmt.Sprintf("%s: ok (%s)", s.Name, roundDuration(s.Duration))
}

// Result is what Run did, for logs and system-status.
type Result struct {
	Steps []Step
	// NSM is "present", "absent" (driver loaded, no device probed),
	// "disabled", "present (simulated)" or "failed: <reason>".
	NSM string
	// Modules has one "path: loaded|already loaded|failed: <reason>" entry per
	// Config.Modules element.
	Modules []string
	// Heartbeat is "ok in 12ms", "disabled" or "failed: <reason>".
	Heartbeat string
	// AWSCmd and AWSEnv come from the initramfs /cmd and /env; AWSCmd is nil
	// when there was no usable /cmd.
	AWSCmd []string
	AWSEnv []string
	// Switched reports whether the root now is PivotRootDir.
	Switched bool
}

// ErrFatal matches (with errors.Is) every error Run returns: a step failed
// whose on_failure policy is "fatal", and the caller should power off.
var ErrFatal = errors.New("fatal boot failure")

// FatalError names the step whose failure stopped the boot.
type FatalError struct {
	Policy string // "heartbeat", "nsm" or "pivot_root"
	Err    error
}

func (e *FatalError) Error() string {
	return fmt.Sprintf("boot: %s failed and on_failure.%s is fatal, powering off: %v", e.Policy, e.Policy, e.Err)
}

// Unwrap returns the step's own error.
func (e *FatalError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrFatal) true.
func (e *FatalError) Is(target error) bool { return target == ErrFatal }

// Run performs the boot sequence: early mounts, kernel modules, NSM driver,
// heartbeat, /cmd and /env, root switch, and the early mounts again inside the
// new root. It is meant for PID 1 only (it unlinks /cmd, /env and the NSM
// module). Failures are logged and recorded in the Result; the error is
// non-nil only when a step with a fatal policy failed, and then it is a
// *FatalError and the sequence stops there.
func Run(ctx context.Context, cfg Config, ops Ops, logf func(string, ...any)) (Result, error) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	b := &booter{cfg: cfg, ops: ops, logf: logf}
	b.fillDefaults()
	err := b.run(ctx)
	return b.res, err
}

type booter struct {
	cfg  Config
	ops  Ops
	logf func(string, ...any)
	res  Result
}

func (b *booter) fillDefaults() {
	if b.cfg.HeartbeatCID == 0 {
		b.cfg.HeartbeatCID = DefaultHeartbeatCID
	}
	if b.cfg.HeartbeatPort == 0 {
		b.cfg.HeartbeatPort = DefaultHeartbeatPort
	}
	if b.cfg.HeartbeatTimeout <= 0 {
		b.cfg.HeartbeatTimeout = DefaultHeartbeatTimeout
	}
	if b.cfg.NSMWait <= 0 {
		b.cfg.NSMWait = DefaultNSMWait
	}
	if b.cfg.PivotRootDir == "" {
		b.cfg.PivotRootDir = DefaultPivotRootDir
	}
	if b.cfg.Cgroups == "" {
		b.cfg.Cgroups = CgroupsAuto
	}
}

func (b *booter) run(ctx context.Context) error {
	if b.cfg.Mounts {
		b.mountEarly(true)
	} else {
		b.logf("boot: early mounts disabled")
	}
	b.loadModules()
	if err := b.loadNSM(); err != nil {
		return err
	}
	b.simulateNSM()
	if err := b.heartbeat(ctx); err != nil {
		return err
	}
	b.readAWSCommand()
	if err := b.switchRoot(); err != nil {
		return err
	}
	if b.res.Switched && b.cfg.Mounts {
		b.mountEarly(false)
	}
	b.loopback()
	b.logf("boot: done")
	return nil
}

// step runs fn as the named step, records its outcome and duration, and turns
// a panic into the step's error so that PID 1 never dies in boot.
func (b *booter) step(name string, fn func() error) (err error) {
	start := time.Now()
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic in boot step %q: %v", name, r)
			b.logf("boot: %v\n%s", err, debug.Stack())
		}
		b.res.Steps = append(b.res.Steps, Step{Name: name, Err: err, Duration: time.Since(start)})
	}()
	return fn()
}

// fatal wraps err as a *FatalError when policy is fatal, else logs that boot
// goes on and returns nil.
func (b *booter) fatal(policy string, err error) error {
	if err == nil {
		return nil
	}
	if b.cfg.Fatal[policy] {
		fe := &FatalError{Policy: policy, Err: err}
		b.logf("%v", fe)
		return fe
	}
	b.logf("boot: %s failed, continuing (on_failure.%s is warn): %v", policy, policy, err)
	return nil
}

// roundDuration keeps log lines short: milliseconds, or microseconds below 1 ms.
func roundDuration(d time.Duration) time.Duration {
	if d < time.Millisecond {
		return d.Round(time.Microsecond)
	}
	return d.Round(time.Millisecond)
}
