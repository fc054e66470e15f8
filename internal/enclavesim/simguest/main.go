// Command simguest is a tiny PID 1 for testing the enclave simulator, and
// the baseline of its boot benchmark. It mounts /dev, /proc and /sys, loads
// the kernel modules found in /lib/modules, sends the Nitro heartbeat (0xB7
// to the parent on vsock port 9000, expecting 0xB7 back) and then either
// powers off (simguest_mode=heartbeat) or serves a line protocol on vsock
// port 5000 that lets a host test drive it:
//
//	echo TEXT        -> TEXT
//	dial PORT TEXT   -> connects to the host on PORT, sends TEXT, returns the reply line
//	poweroff | reboot | panic
//
// Settings come from the kernel command line as environment variables
// (parameters with '=' and no '.' reach PID 1's environment):
// simguest_mode and simguest_hostcid (the CID it dials, default 3).
package main

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"

	"github.com/nitroinit/nitroinit/internal/nitro"
)

// ServePort is the vsock port the guest serves its test protocol on.
const ServePort = 5000

// moduleOrder lists modules that must load before others.
var moduleOrder = []string{"vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport", "vsock_loopback"}

func main() {
	mounts()
	logf("started, uptime %s", uptime())
	loadModules("/lib/modules")
	hostCID := nitro.ParentCID
	if v := os.Getenv("simguest_hostcid"); v != "" {
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			logf("bad simguest_hostcid=%q: %v; using 3", v, err)
		} else {
			hostCID = uint32(n)
		}
	}
	if err := heartbeat(hostCID, nitro.HeartbeatPort); err != nil {
		logf("heartbeat to %d:9000 failed: %v", hostCID, err)
	} else {
		logf("heartbeat ok, uptime %s", uptime())
	}
	if os.Getenv("simguest_mode") == "heartbeat" {
		halt(unix.LINUX_REBOOT_CMD_POWER_OFF)
	}
	serve(hostCID)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stdout, "simguest: "+format+"\n", args...)
}

func uptime() string {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0] + "s"
}

func mounts() {
	for _, m := range []struct{ src, dst, fs string }{
		{"devtmpfs", "/dev", "devtmpfs"},
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
	} {
		os.MkdirAll(m.dst, 0o755)
		if err := unix.Mount(m.src, m.dst, m.fs, 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			logf("mount %s: %v", m.dst, err)
		}
	}
}

// loadModules loads every module file in dir, the vsock stack first.
func loadModules(dir string) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	rank := func(n string) int {
		base := strings.SplitN(n, ".ko", 2)[0]
		if i := slices.Index(moduleOrder, base); i >= 0 {
			return i
		}
		return len(moduleOrder)
	}
	slices.SortStableFunc(names, func(a, b string) int { return rank(a) - rank(b) })
	for _, n := range names {
		if !strings.Contains(n, ".ko") {
			continue
		}
		f, err := os.Open(dir + "/" + n)
		if err != nil {
			logf("module %s: %v", n, err)
			continue
		}
		flags := 0
		if !strings.HasSuffix(n, ".ko") {
			flags = unix.MODULE_INIT_COMPRESSED_FILE
		}
		if err := unix.FinitModule(int(f.Fd()), "", flags); err != nil && !errors.Is(err, unix.EEXIST) {
			logf("module %s: %v", n, err)
		}
		f.Close()
	}
}

func dialVsock(cid, port uint32) (net.Conn, error) {
	c, err := vsock.Dial(cid, port, nil)
	if err != nil {
		return nil, fmt.Errorf("connect %d:%d: %w", cid, port, err)
	}
	return c, nil
}

func heartbeat(cid, port uint32) error {
	c, err := dialVsock(cid, port)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte{nitro.HeartbeatByte}); err != nil {
		return err
	}
	b := make([]byte, 1)
	if _, err := c.Read(b); err != nil {
		return err
	}
	if b[0] != nitro.HeartbeatByte {
		return fmt.Errorf("reply %#x, want 0xb7", b[0])
	}
	return nil
}

func serve(hostCID uint32) {
	// Bind to CID_ANY: the guest's own CID is not known to a program that
	// asks too early, and any CID is what a server wants anyway.
	ln, err := vsock.ListenContextID(unix.VMADDR_CID_ANY, ServePort, nil)
	if err != nil {
		logf("listen on vsock port %d: %v", ServePort, err)
		halt(unix.LINUX_REBOOT_CMD_POWER_OFF)
	}
	logf("ready on vsock port %d", ServePort)
	for {
		c, err := ln.Accept()
		if err != nil {
			logf("accept: %v", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		go handle(c, hostCID)
	}
}

func handle(c net.Conn, hostCID uint32) {
	// PID 1 must not die of one bad connection: the kernel would panic.
	defer func() {
		if r := recover(); r != nil {
			logf("connection handler panicked: %v", r)
		}
	}()
	defer c.Close()
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		cmd, arg, _ := strings.Cut(sc.Text(), " ")
		switch cmd {
		case "echo":
			fmt.Fprintln(c, arg)
		case "dial":
			portStr, text, _ := strings.Cut(arg, " ")
			fmt.Fprintln(c, dialHost(hostCID, portStr, text))
		case "poweroff":
			halt(unix.LINUX_REBOOT_CMD_POWER_OFF)
		case "reboot":
			halt(unix.LINUX_REBOOT_CMD_RESTART)
		case "panic":
			os.WriteFile("/proc/sysrq-trigger", []byte("c"), 0)
		default:
			fmt.Fprintf(c, "unknown command %q\n", cmd)
		}
	}
}

func dialHost(cid uint32, portStr, text string) string {
	port, err := strconv.ParseUint(portStr, 10, 32)
	if err != nil {
		return "error: bad port " + portStr
	}
	c, err := dialVsock(cid, uint32(port))
	if err != nil {
		return "error: " + err.Error()
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintln(c, text)
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "error: " + err.Error()
	}
	return strings.TrimSuffix(line, "\n")
}

// halt syncs and asks the kernel to power off or restart. It does not return.
func halt(cmd int) {
	unix.Sync()
	logf("halting (%#x), uptime %s", cmd, uptime())
	for {
		if err := unix.Reboot(cmd); err != nil {
			logf("reboot(%#x): %v", cmd, err)
		}
		time.Sleep(time.Second)
	}
}
