// Command hog is a test service that misbehaves on purpose, for the
// containment tests (cgroups, limits, the OOM killer). The first argument
// picks the mode.
package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const usage = `usage: hog MODE [ARGS]
modes:
  daemon PIDFILE    double-fork a setsid daemon that ignores SIGTERM, write its pid to PIDFILE, sleep
  daemon-exit PIDFILE  the same, but exit 0 once the daemon has written PIDFILE
                    (with $NOTIFY_SOCKET set, the daemon sends READY=1 there)
  memory [MB]       allocate and touch MB MiB per step (default 4) without bound, printing the total
  memory-child [MB] start "hog memory MB" as a child and sleep (the child is the one to be OOM-killed)
  forkbomb          start sleeping copies of itself as fast as it can, printing how many started and were refused
  nofile            print "nofile SOFT HARD" (RLIMIT_NOFILE), then sleep
  sleep             sleep until killed
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	switch os.Args[1] {
	case "daemon":
		daemon(arg(2))
		sleep()
	case "daemon-exit":
		daemon(arg(2))
	case "daemon-child":
		// The middle of the double fork: start the daemon in a new
		// session, then exit so that it is orphaned.
		cmd := exec.Command(os.Args[0], "daemon-grandchild", arg(2))
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		check(cmd.Start())
		os.Exit(0)
	case "daemon-grandchild":
		signal.Ignore(syscall.SIGTERM, syscall.SIGHUP)
		check(os.WriteFile(arg(2), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644))
		fmt.Printf("daemon %d in session %d\n", os.Getpid(), mustSid())
		if sock := os.Getenv("NOTIFY_SOCKET"); sock != "" {
			// Readiness from the daemon, as a forking Type=notify
			// service sends it.
			c, err := net.Dial("unixgram", sock)
			check(err)
			_, err = c.Write([]byte("READY=1"))
			check(err)
			c.Close()
		}
		sleep()
	case "memory":
		memory(arg(2))
	case "memory-child":
		cmd := exec.Command(os.Args[0], "memory", arg(2))
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		check(cmd.Start())
		sleep()
	case "forkbomb":
		forkbomb()
	case "nofile":
		var lim syscall.Rlimit
		check(syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim))
		fmt.Printf("nofile %d %d\n", lim.Cur, lim.Max)
		sleep()
	case "sleep":
		sleep()
	default:
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
}

func daemon(pidfile string) {
	cmd := exec.Command(os.Args[0], "daemon-child", pidfile)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	check(cmd.Run())
	for {
		if b, err := os.ReadFile(pidfile); err == nil && len(b) > 0 && b[len(b)-1] == '\n' {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	fmt.Println("daemon started")
}

func memory(mb string) {
	step := 4
	if mb != "" {
		step, _ = strconv.Atoi(mb)
	}
	var keep [][]byte
	total := 0
	for {
		b := make([]byte, step<<20)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		keep = append(keep, b)
		total += step
		fmt.Printf("allocated %d MiB\n", total)
		time.Sleep(5 * time.Millisecond)
	}
}

func forkbomb() {
	started, refused := 0, 0
	for i := 0; ; i++ {
		cmd := exec.Command(os.Args[0], "sleep")
		if err := cmd.Start(); err != nil {
			refused++
		} else {
			started++
		}
		if i%20 == 0 {
			fmt.Printf("started %d refused %d\n", started, refused)
		}
		if refused > 0 {
			time.Sleep(10 * time.Millisecond)
		}
	}
}

func mustSid() int {
	sid, _ := unix.Getsid(0)
	return sid
}

func sleep() {
	for {
		time.Sleep(time.Hour)
	}
}

func arg(i int) string {
	if len(os.Args) > i {
		return os.Args[i]
	}
	return ""
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "hog:", err)
		os.Exit(1)
	}
}
