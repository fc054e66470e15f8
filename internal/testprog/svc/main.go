// Command svc is a multi-purpose test service used by the integration tests
// and the vmtests (the test guests have no shell, so every behaviour a test
// needs from a service lives here). The first argument picks the mode.
package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mdlayher/vsock"
)

const usage = `usage: svc MODE [ARGS]
modes:
  sleep                        sleep until killed
  exit CODE [DELAY]            exit with CODE after DELAY (default 0)
  crash [DELAY]                kill itself with SIGKILL after DELAY
  append FILE TEXT             append TEXT and a newline to FILE, then sleep
  notify DELAY [STATUS]        send READY=1 (and STATUS=) to $NOTIFY_SOCKET after DELAY, then sleep
  print N                      print N numbered lines to stdout and N to stderr, then sleep
  count N [PAUSE]              print N numbered lines to stdout as fast as possible (PAUSE between), then exit 0
  stubborn PIDFILE             ignore SIGTERM, start a grandchild that ignores it too, write both PIDs to PIDFILE, sleep
  trap FILE                    on SIGTERM append "TERM" to FILE and exit 0 (sends READY=1 once it can)
  echo-vsock PORT              echo every connection on vsock PORT (any CID)
  echo-unix PATH               echo every connection on the Unix socket PATH
  env [MODE ARGS]              print the environment, then run MODE (default: sleep)
  argv [ARGS]                  print "argv: " with the arguments quoted, "cwd: " with the working directory and
                               "env: " before each variable, then sleep
  ids                          print uid, gid and the signal masks from /proc/self/status, then sleep
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	run(os.Args[1], os.Args[2:])
}

// run carries out one mode; "env" may hand on to another.
func run(mode string, args []string) {
	switch mode {
	case "sleep":
		sleep()
	case "exit":
		time.Sleep(dur(args, 1))
		os.Exit(atoi(arg(args, 0, "0")))
	case "crash":
		time.Sleep(dur(args, 0))
		// SIGKILL: the Go runtime would turn a SIGSEGV sent by kill into an
		// ordinary exit with code 2.
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		sleep()
	case "append":
		f, err := os.OpenFile(arg(args, 0, ""), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		check(err)
		fmt.Fprintln(f, arg(args, 1, ""))
		f.Close()
		sleep()
	case "notify":
		time.Sleep(dur(args, 0))
		msg := "READY=1"
		if len(args) > 1 {
			msg += "\nSTATUS=" + args[1]
		}
		notify(msg)
		sleep()
	case "print":
		n := atoi(arg(args, 0, "1"))
		for i := 1; i <= n; i++ {
			fmt.Printf("stdout line %d\n", i)
			fmt.Fprintf(os.Stderr, "stderr line %d\n", i)
		}
		sleep()
	case "count":
		n := atoi(arg(args, 0, "1"))
		pause := dur(args, 1)
		w := bufio.NewWriterSize(os.Stdout, 64<<10)
		for i := 1; i <= n; i++ {
			fmt.Fprintf(w, "line %09d %s\n", i, strings.Repeat("x", 80))
			if pause > 0 {
				w.Flush()
				time.Sleep(pause)
			}
		}
		w.Flush()
	case "stubborn":
		signal.Ignore(syscall.SIGTERM)
		if os.Getenv("SVC_GRANDCHILD") == "" {
			c := exec.Command(os.Args[0], "stubborn", "-")
			c.Env = append(os.Environ(), "SVC_GRANDCHILD=1")
			check(c.Start())
			check(os.WriteFile(arg(args, 0, ""), fmt.Appendf(nil, "%d %d\n", os.Getpid(), c.Process.Pid), 0o644))
		}
		sleep()
	case "trap":
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGTERM)
		// Ready only now: a SIGTERM before Notify would kill it silently.
		if os.Getenv("NOTIFY_SOCKET") != "" {
			notify("READY=1")
		}
		<-ch
		f, err := os.OpenFile(arg(args, 0, ""), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		check(err)
		fmt.Fprintln(f, "TERM")
		f.Close()
		os.Exit(0)
	case "echo-vsock":
		l, err := vsock.ListenContextID(0xffffffff, uint32(atoi(arg(args, 0, "5000"))), nil)
		check(err)
		serveEcho(l)
	case "echo-unix":
		os.Remove(arg(args, 0, ""))
		l, err := net.Listen("unix", arg(args, 0, ""))
		check(err)
		serveEcho(l)
	case "ids":
		fmt.Printf("uid=%d gid=%d\n", os.Getuid(), os.Getgid())
		b, err := os.ReadFile("/proc/self/status")
		check(err)
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "SigBlk:") || strings.HasPrefix(line, "SigIgn:") {
				fmt.Println(strings.Join(strings.Fields(line), " "))
			}
		}
		sleep()
	case "argv":
		fmt.Printf("argv: %q\n", os.Args)
		wd, err := os.Getwd()
		check(err)
		fmt.Printf("cwd: %s\n", wd)
		for _, kv := range os.Environ() {
			fmt.Printf("env: %s\n", kv)
		}
		sleep()
	case "env":
		for _, kv := range os.Environ() {
			fmt.Println(kv)
		}
		if len(args) > 0 {
			run(args[0], args[1:])
			return
		}
		sleep()
	default:
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
}

func serveEcho(l net.Listener) {
	fmt.Println("echo: listening on", l.Addr())
	for {
		c, err := l.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, "accept:", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go func() {
			defer c.Close()
			io.Copy(c, c)
		}()
	}
}

func notify(msg string) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		fmt.Fprintln(os.Stderr, "svc: NOTIFY_SOCKET not set")
		os.Exit(1)
	}
	if strings.HasPrefix(path, "@") {
		path = "\x00" + path[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	check(err)
	_, err = c.Write([]byte(msg))
	check(err)
	c.Close()
}

func sleep() {
	for {
		time.Sleep(time.Hour)
	}
}

func arg(args []string, i int, def string) string {
	if i < len(args) {
		return args[i]
	}
	return def
}

func atoi(s string) int {
	n, err := strconv.Atoi(s)
	check(err)
	return n
}

func dur(args []string, i int) time.Duration {
	s := arg(args, i, "0")
	if s == "0" {
		return 0
	}
	d, err := time.ParseDuration(s)
	check(err)
	return d
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "svc:", err)
		os.Exit(1)
	}
}
