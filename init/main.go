// Command init is PID 1 for AWS Nitro Enclaves: it mounts the early
// filesystems, loads kernel modules and the NSM driver, sends the boot
// heartbeat to the parent, switches to the application root and then
// supervises the services of the service directory until shutdown.
//
// When it is not PID 1 it skips the boot steps, becomes a child subreaper
// and supervises with the same configuration, so that it can be developed,
// tested and used in containers without a VM.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nitroinit/nitroinit/internal/boot"
	"github.com/nitroinit/nitroinit/internal/config"
	"github.com/nitroinit/nitroinit/internal/control"
	"github.com/nitroinit/nitroinit/internal/logs"
	"github.com/nitroinit/nitroinit/internal/nitro"
	"github.com/nitroinit/nitroinit/internal/nsm/nsmdev"
	"github.com/nitroinit/nitroinit/internal/reap"
	"github.com/nitroinit/nitroinit/internal/supervise"
	"github.com/nitroinit/nitroinit/internal/unit"
	"github.com/nitroinit/nitroinit/internal/wire"
	"golang.org/x/sys/unix"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const defaultConfig = nitro.ConfigPath

// logger writes init's own messages to the console and, once the log
// directory is known, to init.log. It is safe for concurrent use.
type logger struct {
	mu      sync.Mutex
	console io.Writer
	file    *logs.Log
}

func (l *logger) Printf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.file != nil {
		l.file.Printf("%s", msg)
		return
	}
	fmt.Fprintf(l.console, "%s init: %s\n", time.Now().UTC().Format("2006-01-02T15:04:05.000000Z"), msg)
}

func (l *logger) setFile(f *logs.Log) {
	l.mu.Lock()
	l.file = f
	l.mu.Unlock()
}

// args are init's command-line options. Parsing is lenient on purpose: the
// kernel hands init every word of its command line it does not understand
// (the stock Nitro command line has a bare "nomodules"), and a strict parser
// would make PID 1 exit and the kernel panic.
type args struct {
	config  string
	version bool
	help    bool
	ignored []string
}

func parseArgs(argv []string) args {
	a := args{config: os.Getenv("INIT_CONFIG")}
	for i := 0; i < len(argv); i++ {
		w := argv[i]
		switch {
		case w == "-c" || w == "--config":
			if i+1 < len(argv) {
				a.config = argv[i+1]
				i++
			} else {
				a.ignored = append(a.ignored, w+" (missing value)")
			}
		case strings.HasPrefix(w, "--config="):
			a.config = strings.TrimPrefix(w, "--config=")
		case strings.HasPrefix(w, "-c") && len(w) > 2:
			a.config = w[2:]
		case w == "-V" || w == "--version":
			a.version = true
		case w == "-h" || w == "--help":
			a.help = true
		default:
			a.ignored = append(a.ignored, w)
		}
	}
	if a.config == "" {
		a.config = defaultConfig
	}
	return a
}

const usage = `Usage: init [-c PATH]

PID 1 for AWS Nitro Enclaves; a service supervisor when not PID 1.

Options:
  -c, --config PATH   init configuration (default /etc/init.yaml, or $INIT_CONFIG)
  -h, --help          show this help
  -V, --version       show the version
`

func main() {
	if filepath.Base(os.Args[0]) == nitro.NSMSimArgv0 {
		// The simulated /dev/nsm (images built with --nsm): boot starts
		// it as its own process under this name; see docs/nsm.md.
		os.Exit(nsmdev.Main(os.Args[1:]))
	}
	pid1 := os.Getpid() == 1
	a := parseArgs(os.Args[1:])
	if !pid1 {
		if a.help {
			fmt.Print(usage)
			return
		}
		if a.version {
			fmt.Println("init", version)
			return
		}
		// Outside an enclave a typo should not silently run with the
		// default configuration; as PID 1 unknown words are only logged.
		if len(a.ignored) > 0 {
			fmt.Fprintf(os.Stderr, "init: unknown argument %q\n\n%s", a.ignored[0], usage)
			os.Exit(2)
		}
	}
	log := &logger{console: os.Stderr}
	defer func() {
		if v := recover(); v != nil {
			log.Printf("panic: %v\n%s", v, debug.Stack())
			if pid1 {
				emergency(log)
			}
			os.Exit(1)
		}
	}()
	os.Exit(run(a, pid1, log))
}

// emergency is where PID 1 ends up if the main path panics: it must not
// exit, so it keeps reaping and lets an operator power off.
func emergency(log *logger) {
	log.Printf("entering emergency mode: reaping children only")
	r := reap.New(log.Printf)
	r.Run(context.Background())
	select {}
}

func run(a args, pid1 bool, log *logger) int {
	// Catch every signal: PID 1 ignores what it does not handle, and using
	// Notify rather than Ignore keeps default dispositions in children.
	sigs := make(chan os.Signal, 32)
	signal.Notify(sigs)
	// Except SIGCHLD, which the reaper owns: it sets SIGCHLD to SIG_DFL
	// so that an exit wakes no thread but the one waiting for it
	// (reap.Reaper.Run); forwarding it here would wake two goroutines for
	// nothing on every child's exit.
	signal.Reset(syscall.SIGCHLD)
	resetInheritedIgnores()
	closeInheritedFDs(log)

	for _, w := range a.ignored {
		log.Printf("ignoring unknown argument %q", w)
	}
	log.Printf("nitroinit %s starting (pid %d)", version, os.Getpid())

	cfg := loadConfig(a.config, log)
	applyEnv(cfg, log)

	info := wire.SystemStatus{Mode: "supervisor", Version: version, Heartbeat: "disabled", NSM: "disabled"}
	if !pid1 {
		// Say what is true: the configuration may enable them, but only
		// PID 1 in an enclave sends the heartbeat and loads the driver.
		if cfg.Vsock.Enabled {
			info.Heartbeat = "not sent: not PID 1"
		}
		if cfg.NSMDriverPath != "" {
			info.NSM = "not loaded: not PID 1"
		}
	}
	var app *unit.Unit
	if pid1 {
		info.Mode = "pid1"
		res, err := boot.Run(context.Background(), bootConfig(cfg), boot.SystemOps(), log.Printf)
		info.Heartbeat, info.NSM, info.Modules = res.Heartbeat, res.NSM, res.Modules
		if err != nil {
			log.Printf("%v", err)
			syscall.Sync()
			if perr := boot.PowerOff(false); perr != nil {
				log.Printf("power off: %v", perr)
			}
			emergency(log)
		}
		if res.Switched {
			// Runtime keys come from the new root's file when it has one.
			if rt, errs := config.LoadInit(a.config); !missing(errs) {
				report(errs, log)
				cfg = cfg.WithRuntime(rt)
				applyEnv(cfg, log)
				log.Printf("runtime configuration from the new root's %s", a.config)
			}
		}
		if res.AWSCmd != nil {
			app = awsApp(res.AWSCmd, res.AWSEnv)
		}
	} else {
		log.Printf("not PID 1: supervisor mode (no mounts, modules, heartbeat or root switch)")
		if err := reap.BecomeSubreaper(); err != nil {
			log.Printf("%v; orphans will not be reaped here", err)
		}
	}

	if pid1 {
		protectSelf(log)
	}
	cgroups := setupCgroups(pid1, log)

	logCfg := logs.Config{Dir: cfg.LogDir, MaxSize: cfg.MaxLogSize, MaxFiles: cfg.MaxLogFiles, RingLines: cfg.LogRingLines}
	initLogCfg := logCfg
	initLogCfg.Console = os.Stderr
	// The services' logs report their outages in init's log; init's own
	// reports on the console (its Logf would write to itself).
	logCfg.Logf = log.Printf
	if f, err := logs.Open(initLogCfg, unit.InitLog); err != nil {
		log.Printf("init log: %v (console only)", err)
	} else {
		log.setFile(f)
		defer f.Close()
	}

	r := reap.New(log.Printf)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Run(ctx)

	runtimeDir := "/run/nitroinit"
	if !pid1 {
		runtimeDir = filepath.Join(filepath.Dir(cfg.Control.UnixSocketPath), "nitroinit")
	}
	sup := supervise.New(supervise.Config{
		ServiceDir: cfg.ServiceDir,
		Logs:       logCfg,
		Env:        serviceEnv(os.Environ()),
		RuntimeDir: runtimeDir,
		Reaper:     r,
		Logf:       log.Printf,
		App:        app,
		AppConsole: os.Stderr, // PID 1's stderr is the console
		Info:       info,
		Cgroups:    cgroups,
		Settled:    freeStartupMemory,
	})

	srv := control.NewServer(control.Config{
		Handler:    sup,
		Policy:     control.NewPolicy(cfg.Control.Permissions),
		MaxConns:   cfg.Control.MaxConnections,
		IOTimeout:  cfg.Control.IOTimeout,
		Logf:       log.Printf,
		ConfigPath: a.config,
	})
	serve := func(what string, f func() error) {
		go func() {
			defer func() {
				if v := recover(); v != nil {
					log.Printf("%s: panic: %v\n%s", what, v, debug.Stack())
				}
			}()
			if err := f(); err != nil && ctx.Err() == nil {
				log.Printf("%s: %v", what, err)
			}
		}()
	}
	if cfg.Control.UnixSocketEnabled {
		serve("control socket "+cfg.Control.UnixSocketPath, func() error { return srv.ServeUnix(ctx, cfg.Control.UnixSocketPath) })
	}
	if cfg.Control.VsockEnabled {
		serve(fmt.Sprintf("control vsock %d:%d", cfg.Control.VsockCID, cfg.Control.VsockPort),
			func() error { return srv.ServeVsock(ctx, cfg.Control.VsockCID, cfg.Control.VsockPort) })
	}

	go handleSignals(sigs, sup, log)

	reboot := sup.Run(context.Background())
	srv.Close()
	supervise.KillRemaining(pid1, 3*time.Second, log.Printf)
	r.ReapOnce()
	what := "power-off"
	if reboot {
		what = "reboot"
	}
	log.Printf("all services stopped; %s", what)
	syscall.Sync()
	if !pid1 {
		return 0
	}
	if err := boot.PowerOff(reboot); err != nil {
		log.Printf("reboot(2): %v", err)
	}
	emergency(log)
	return 0
}

// freeStartupMemory hands the memory start-up used and no longer needs
// (parsed unit files, configuration, stacks of goroutines that ended) back
// to the kernel once the services have started. Left to itself the Go
// runtime keeps such pages until the heap reaches its GC goal (4 MB at the
// least), which a supervisor of idle services may never do: with 50 idle
// services that is 0.5 MB of init's 6.6 MB. The collection takes a few
// milliseconds, off the supervisor's loop.
func freeStartupMemory() { go debug.FreeOSMemory() }

// outerManagerVars are set by a service manager that runs init (systemd,
// in supervisor mode) for init itself: passed on, they would make a service
// notify the outer manager as if it were init, or claim sockets that are
// not its own.
var outerManagerVars = []string{"NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_PID", "WATCHDOG_USEC"}

// serviceEnv is init's environment without what was meant for init alone.
func serviceEnv(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if !slices.Contains(outerManagerVars, k) {
			out = append(out, kv)
		}
	}
	return out
}

// closeInheritedFDs marks every file descriptor above 2 that init was
// started with close-on-exec, so that services get exactly stdin, stdout
// and stderr. Go opens all of its own descriptors close-on-exec, so this
// touches only inherited ones.
func closeInheritedFDs(log *logger) {
	if err := unix.CloseRange(3, math.MaxUint32, unix.CLOSE_RANGE_CLOEXEC); err == nil {
		return
	}
	// Kernels before 5.11: one by one.
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		log.Printf("cannot list inherited file descriptors: %v (services may inherit them)", err)
		return
	}
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			unix.CloseOnExec(fd)
		}
	}
}

func handleSignals(sigs <-chan os.Signal, sup *supervise.Supervisor, log *logger) {
	defer func() {
		if v := recover(); v != nil {
			log.Printf("signal handler: panic: %v\n%s", v, debug.Stack())
			go handleSignals(sigs, sup, log)
		}
	}()
	for sig := range sigs {
		switch sig {
		case syscall.SIGTERM, syscall.SIGINT:
			log.Printf("%v: shutting down", sig)
			sup.Shutdown(false)
		case syscall.SIGHUP:
			log.Printf("SIGHUP: reloading services")
			go func() {
				if err := sup.Reload(); err != nil {
					log.Printf("reload: %v", err)
				}
			}()
		}
		// Everything else (SIGCHLD goes to the reaper) is ignored.
	}
}

func missing(errs []error) bool {
	for _, err := range errs {
		if errors.Is(err, os.ErrNotExist) {
			return true
		}
	}
	return false
}

func report(errs []error, log *logger) {
	for _, err := range errs {
		log.Printf("config: %v", err)
	}
}

func loadConfig(path string, log *logger) *config.Init {
	cfg, errs := config.LoadInit(path)
	if missing(errs) {
		log.Printf("config: %s not found, using defaults", path)
		return cfg
	}
	report(errs, log)
	return cfg
}

// applyEnv gives init.yaml's environment to init itself, and so to every
// service, which starts from init's environment.
func applyEnv(cfg *config.Init, log *logger) {
	if os.Getenv("PATH") == "" {
		os.Setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	}
	for k, v := range cfg.Environment {
		if err := os.Setenv(k, v); err != nil {
			log.Printf("config: environment %s: %v", k, err)
		}
	}
}

func bootConfig(c *config.Init) boot.Config {
	return boot.Config{
		Mounts:           true,
		Cgroups:          c.Cgroups,
		NSMPath:          c.NSMDriverPath,
		Modules:          c.KernelModules,
		Heartbeat:        c.Vsock.Enabled,
		HeartbeatCID:     c.Vsock.CID,
		HeartbeatPort:    c.Vsock.Port,
		HeartbeatTimeout: c.Vsock.Timeout,
		PivotRoot:        c.PivotRoot,
		PivotRootDir:     c.PivotRootDir,
		Loopback:         c.Loopback,
		Fatal: map[string]bool{
			"heartbeat":  c.OnFailure.Heartbeat == config.ActionFatal,
			"nsm":        c.OnFailure.NSM == config.ActionFatal,
			"pivot_root": c.OnFailure.PivotRoot == config.ActionFatal,
		},
	}
}

// awsApp turns nitro-cli's /cmd and /env into the service "app": no
// restart, /env alone as its environment, output on the console and
// captured, and its exit powers the enclave off (docs/boot.md).
func awsApp(argv, env []string) *unit.Unit {
	return &unit.Unit{
		Name:               "app",
		Path:               nitro.CmdPath,
		ExecStart:          unit.Join(argv),
		Argv:               argv,
		Environment:        env,
		Restart:            unit.RestartNo,
		RestartSec:         unit.DefaultRestartSec,
		ServiceEnable:      true,
		TimeoutStopSec:     unit.DefaultTimeoutStopSec,
		KillSignal:         syscall.SIGTERM,
		StartLimitBurst:    unit.DefaultStartLimitBurst,
		StartLimitInterval: unit.DefaultStartLimitInterval,
		Type:               unit.TypeSimple,
		TimeoutStartSec:    unit.DefaultTimeoutStartSec,
		WorkingDirectory:   awsWorkDir(env),
	}
}

// awsWorkDir is the directory /env's PWD names, where `initramfs build
// --from-image` puts the image's WorkingDir, when it is one (docs/boot.md);
// "" (init's own, /) otherwise.
func awsWorkDir(env []string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if v, ok := strings.CutPrefix(env[i], "PWD="); ok {
			if fi, err := os.Stat(v); err == nil && fi.IsDir() && filepath.IsAbs(v) {
				return v
			}
			return ""
		}
	}
	return ""
}
