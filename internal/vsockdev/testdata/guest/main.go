// Command guest is the /init of the vsockdev test VM. It loads the vsock
// modules, sends a heartbeat to the parent (CID 3, port 9000) and serves
// test ports:
//
//	5000 echo: copies the stream back until EOF
//	5001 discard: reads until EOF, then writes the byte count (8 bytes LE)
//	5002 source: reads an 8-byte LE count n, writes n pattern bytes, closes
//	5003 commands, one line each, one reply line:
//	     "dial <cid> <port>": connect, send "hello\n", read to EOF, reply
//	                          "ok <peer cid> <data>" or "err <error>"
//	     "reboot", "poweroff": reply "ok", then do it
//	     "reload": reply "ok", unbind and rebind the virtio-vsock driver,
//	               listen again and send a new heartbeat
//
// It is test-only and runs nowhere else.
package main

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"

	"github.com/nitroinit/nitroinit/internal/nitro"
)

var modules = []string{"vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport"}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stdout, "GUEST: "+format+"\n", args...)
}

func main() {
	for _, m := range []struct{ src, dst, typ string }{
		{"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"}, {"devtmpfs", "/dev", "devtmpfs"},
	} {
		os.MkdirAll(m.dst, 0o755)
		if err := unix.Mount(m.src, m.dst, m.typ, 0, ""); err != nil {
			logf("mount %s: %v", m.dst, err)
		}
	}
	for _, m := range modules {
		if err := load(m); err != nil {
			logf("%v", err)
			halt()
		}
	}
	s := &server{}
	s.start()
	heartbeat()
	select {}
}

// load loads a module from /lib/modules in whatever form the test copied it
// (.ko, or compressed for the kernel to decompress); a module that is not
// there is built into the kernel.
func load(name string) error {
	matches, _ := filepath.Glob(filepath.Join("/lib/modules", name+".ko*"))
	if len(matches) == 0 {
		return nil
	}
	f, err := os.Open(matches[0])
	if err != nil {
		return fmt.Errorf("module %s: %w", name, err)
	}
	defer f.Close()
	flags := 0
	if !strings.HasSuffix(matches[0], ".ko") {
		flags = unix.MODULE_INIT_COMPRESSED_FILE
	}
	if err := unix.FinitModule(int(f.Fd()), "", flags); err != nil && err != unix.EEXIST {
		return fmt.Errorf("loading module %s: %w", name, err)
	}
	return nil
}

func halt() {
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}

func heartbeat() {
	for i := 0; i < 50; i++ {
		c, err := vsock.Dial(nitro.ParentCID, nitro.HeartbeatPort, nil)
		if err != nil {
			logf("heartbeat dial: %v", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		b := []byte{nitro.HeartbeatByte}
		_, err = c.Write(b)
		if err == nil {
			_, err = io.ReadFull(c, b)
		}
		c.Close()
		if err == nil && b[0] == nitro.HeartbeatByte {
			logf("heartbeat ok")
			return
		}
		logf("heartbeat: %v %x", err, b)
		time.Sleep(100 * time.Millisecond)
	}
}

type server struct {
	mu  sync.Mutex
	lns []net.Listener
}

func (s *server) start() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for port, h := range map[uint32]func(net.Conn){5000: echo, 5001: discard, 5002: source, 5003: s.command} {
		ln, err := vsock.ListenContextID(unix.VMADDR_CID_ANY, port, nil)
		if err != nil {
			logf("listen %d: %v", port, err)
			halt()
		}
		s.lns = append(s.lns, ln)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					h(c)
				}()
			}
		}()
	}
}

func (s *server) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ln := range s.lns {
		ln.Close()
	}
	s.lns = nil
}

func echo(c net.Conn) {
	io.Copy(c, c)
}

func discard(c net.Conn) {
	n, _ := io.Copy(io.Discard, c)
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(n))
	c.Write(b[:])
}

// Pattern is the byte at offset i of a source stream; the test checks it.
func pattern(i uint64) byte { return byte(i*7 + i>>11) }

func source(c net.Conn) {
	var b [8]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return
	}
	n := binary.LittleEndian.Uint64(b[:])
	buf := make([]byte, 64<<10)
	for off := uint64(0); off < n; {
		k := min(uint64(len(buf)), n-off)
		for i := uint64(0); i < k; i++ {
			buf[i] = pattern(off + i)
		}
		if _, err := c.Write(buf[:k]); err != nil {
			return
		}
		off += k
	}
}

func (s *server) command(c net.Conn) {
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return
	}
	f := strings.Fields(line)
	if len(f) == 0 {
		return
	}
	logf("command %q", strings.TrimSpace(line))
	switch f[0] {
	case "dial":
		if len(f) != 3 {
			fmt.Fprintf(c, "err usage\n")
			return
		}
		cid, _ := strconv.ParseUint(f[1], 10, 32)
		port, _ := strconv.ParseUint(f[2], 10, 32)
		fmt.Fprintf(c, "%s\n", dial(uint32(cid), uint32(port)))
	case "reboot", "poweroff":
		fmt.Fprintf(c, "ok\n")
		c.Close()
		time.Sleep(200 * time.Millisecond)
		unix.Sync()
		if f[0] == "reboot" {
			unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
		}
		unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	case "reload":
		fmt.Fprintf(c, "ok\n")
		c.Close()
		go s.reload()
	default:
		fmt.Fprintf(c, "err unknown command\n")
	}
}

func dial(cid, port uint32) string {
	c, err := vsock.Dial(cid, port, nil)
	if err != nil {
		return "err " + err.Error()
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("hello\n")); err != nil {
		return "err " + err.Error()
	}
	data, err := io.ReadAll(c)
	if err != nil {
		return "err " + err.Error()
	}
	return fmt.Sprintf("ok %d %s", c.RemoteAddr().(*vsock.Addr).ContextID, strings.TrimSpace(string(data)))
}

// reload unbinds the virtio-vsock driver from its device and binds it
// again: the device sees a driver stop and start while sockets are open
// (unloading the module would need every socket closed first).
func (s *server) reload() {
	time.Sleep(200 * time.Millisecond)
	s.stop()
	const drv = "/sys/bus/virtio/drivers/vmw_vsock_virtio_transport"
	devs, _ := filepath.Glob(drv + "/virtio*")
	if len(devs) != 1 {
		logf("reload: want one device under %s, found %v", drv, devs)
		return
	}
	name := filepath.Base(devs[0])
	if err := os.WriteFile(drv+"/unbind", []byte(name), 0o200); err != nil {
		logf("unbind %s: %v", name, err)
	} else {
		logf("driver unbound from %s", name)
	}
	if err := os.WriteFile(drv+"/bind", []byte(name), 0o200); err != nil {
		logf("bind %s: %v", name, err)
	}
	s.start()
	heartbeat()
}
