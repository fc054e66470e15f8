package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/nitroinit/nitroinit/internal/control"
	"github.com/nitroinit/nitroinit/internal/wire"
)

// scratch makes a fresh directory for one run.
func (e *env) scratch(what string) (string, error) {
	return os.MkdirTemp(e.tmp, what+"-")
}

// ours is a running init in supervisor mode.
type ours struct {
	cmd    *exec.Cmd
	sock   string
	logDir string
	out    *tail
}

func (o *ours) target() control.Target {
	return control.Target{Protocol: control.ProtocolUnix, UnixPath: o.sock}
}

// startOurs writes the services (name -> TOML body) and an init.yaml with
// extra appended into dir and starts init on it. It does not wait.
func (e *env) startOurs(dir string, services map[string]string, extra string, environ []string) (*ours, error) {
	svcDir := filepath.Join(dir, "service")
	o := &ours{sock: filepath.Join(dir, "run", "init.sock"), logDir: filepath.Join(dir, "log"), out: &tail{}}
	if err := os.MkdirAll(svcDir, 0o755); err != nil {
		return nil, err
	}
	for name, body := range services {
		if err := os.WriteFile(filepath.Join(svcDir, name+".service"), []byte(body), 0o644); err != nil {
			return nil, err
		}
	}
	cfg := fmt.Sprintf("service_dir: %s\nlog_dir: %s\ncontrol:\n  unix_socket_path: %s\n%s", svcDir, o.logDir, o.sock, extra)
	path := filepath.Join(dir, "init.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	o.cmd = exec.Command(e.init, "--config", path)
	o.cmd.Stdout, o.cmd.Stderr = o.out, o.out
	o.cmd.Env = append(os.Environ(), environ...)
	if err := o.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", e.init, err)
	}
	return o, nil
}

// waitControl waits until init answers a ping.
func (o *ours) waitControl() error {
	return waitFor(10*time.Second, 5*time.Millisecond, "init's control socket", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		r, err := control.Do(ctx, o.target(), wire.Request{Kind: wire.KindPing})
		return err == nil && r.Kind == wire.KindPong
	})
}

// s6Dir writes a scan directory with one service per entry (name -> argv),
// each a /bin/sh run script that execs the command, which is how s6 and
// runit services are usually written. s6-svscan and runsvdir read the same
// layout.
func s6Dir(dir string, services map[string][]string) (string, error) {
	scan := filepath.Join(dir, "scan")
	for name, argv := range services {
		sd := filepath.Join(scan, name)
		if err := os.MkdirAll(sd, 0o755); err != nil {
			return "", err
		}
		if err := os.WriteFile(filepath.Join(sd, "run"), []byte(runScript(argv)), 0o755); err != nil {
			return "", err
		}
	}
	return scan, nil
}

// runScript is a service run script that execs argv.
func runScript(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return "#!/bin/sh\nexec " + strings.Join(q, " ") + "\n"
}

// startSupervisord writes a supervisord configuration for programs
// (supervisordConf) in dir and starts supervisord on it in the foreground.
func startSupervisord(dir string, programs map[string][]string, environ []string) (conf string, cmd *exec.Cmd, out *tail, err error) {
	if conf, _, err = supervisordConf(dir, programs, environ); err != nil {
		return "", nil, nil, err
	}
	cmd, out, err = startCmd(nil, "supervisord", "-c", conf)
	return conf, cmd, out, err
}

// supervisordConf writes a supervisord configuration with one program per
// entry and returns its path and control socket. startsecs=0 counts a
// program as started as soon as it is spawned, as init does for simple
// services; autorestart=true and startretries are set so that a crashing
// program is restarted for ever.
func supervisordConf(dir string, programs map[string][]string, environ []string) (conf, sock string, err error) {
	sock = filepath.Join(dir, "supervisor.sock")
	var b strings.Builder
	fmt.Fprintf(&b, `[unix_http_server]
file=%s

[supervisord]
nodaemon=true
user=root
logfile=%s
pidfile=%s
childlogdir=%s
loglevel=warn

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://%s
`, sock, filepath.Join(dir, "supervisord.log"), filepath.Join(dir, "supervisord.pid"), dir, sock)
	envLine := ""
	if len(environ) > 0 {
		var kv []string
		for _, e := range environ {
			k, v, _ := strings.Cut(e, "=")
			kv = append(kv, fmt.Sprintf("%s=%q", k, v))
		}
		envLine = "environment=" + strings.Join(kv, ",") + "\n"
	}
	for name, argv := range programs {
		fmt.Fprintf(&b, "\n[program:%s]\ncommand=%s\nstartsecs=0\nautorestart=true\nstartretries=1000000\n%s", name, strings.Join(argv, " "), envLine)
	}
	conf = filepath.Join(dir, "supervisord.conf")
	return conf, sock, os.WriteFile(conf, []byte(b.String()), 0o644)
}

// startCmd starts name with args, output kept for error messages.
func startCmd(environ []string, name string, args ...string) (*exec.Cmd, *tail, error) {
	cmd := exec.Command(name, args...)
	t := &tail{}
	cmd.Stdout, cmd.Stderr = t, t
	cmd.Env = append(os.Environ(), environ...)
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("starting %s: %w", name, err)
	}
	return cmd, t, nil
}
