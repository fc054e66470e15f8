package boot

import (
	"errors"
	"fmt"
	"net"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// LoopbackName is the loopback interface that the loopback step brings up.
const LoopbackName = "lo"

// loopbackOps is implemented by Ops that can bring up the loopback interface.
// SystemOps does; an Ops without it (a test recorder) skips the step.
type loopbackOps interface {
	// LoopbackUp sets lo up and makes sure it carries 127.0.0.1/8 and ::1/128.
	LoopbackUp() error
}

// loopback is the boot step that gives services 127.0.0.1 and ::1 before any
// of them starts: an enclave has no network card, so loopback is the only
// network its apps have, and nothing else in the image brings it up. A
// failure is logged and boot goes on: apps that do not use the network still
// work.
func (b *booter) loopback() {
	if !b.cfg.Loopback {
		b.logf("boot: loopback disabled (loopback: false)")
		return
	}
	lo, ok := b.ops.(loopbackOps)
	if !ok {
		return
	}
	err := b.step("loopback", lo.LoopbackUp)
	if err != nil {
		b.logf("boot: loopback %s: %v; continuing without it", LoopbackName, err)
		return
	}
	b.logf("boot: loopback %s up with 127.0.0.1/8 and ::1", LoopbackName)
}

// LoopbackUp brings lo up with ioctls on the calling thread's network
// namespace. The kernel gives a loopback device 127.0.0.1/8 and ::1 itself
// when it comes up; the addresses are added here only when they are missing
// (an IPv6 address is absent, for example, when IPv6 was disabled for lo).
func (systemOps) LoopbackUp() error {
	return loopbackUp(LoopbackName)
}

func loopbackUp(name string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return os.NewSyscallError("socket AF_INET", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return fmt.Errorf("interface %q: %w", name, err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("get flags of %s: %w", name, err)
	}
	if ifr.Uint16()&unix.IFF_UP == 0 {
		ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
		if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
			return fmt.Errorf("set %s up: %w", name, err)
		}
	}
	has4, has6, err := loopbackAddrs(name)
	if err != nil {
		return err
	}
	var errs []error
	if !has4 {
		errs = append(errs, addInet4(fd, name))
	}
	if !has6 {
		errs = append(errs, addInet6(name))
	}
	return errors.Join(errs...)
}

// loopbackAddrs reports whether the interface has 127.0.0.1 and ::1.
func loopbackAddrs(name string) (has4, has6 bool, err error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return false, false, fmt.Errorf("interface %s: %w", name, err)
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return false, false, fmt.Errorf("addresses of %s: %w", name, err)
	}
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		switch {
		case ipn.IP.Equal(net.IPv4(127, 0, 0, 1)):
			has4 = true
		case ipn.IP.Equal(net.IPv6loopback):
			has6 = true
		}
	}
	return has4, has6, nil
}

func addInet4(fd int, name string) error {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := ifr.SetInet4Addr([]byte{127, 0, 0, 1}); err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFADDR, ifr); err != nil {
		return fmt.Errorf("add 127.0.0.1 to %s: %w", name, err)
	}
	if err := ifr.SetInet4Addr([]byte{255, 0, 0, 0}); err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFNETMASK, ifr); err != nil {
		return fmt.Errorf("set netmask /8 on %s: %w", name, err)
	}
	return nil
}

// in6Ifreq is struct in6_ifreq from <linux/ipv6.h>.
type in6Ifreq struct {
	addr      [16]byte
	prefixlen uint32
	ifindex   int32
}

func addInet6(name string) error {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("add ::1 to %s: the kernel has no IPv6: %w", name, err)
	}
	defer unix.Close(fd)
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return fmt.Errorf("interface %s: %w", name, err)
	}
	req := in6Ifreq{prefixlen: 128, ifindex: int32(ifi.Index)}
	copy(req.addr[:], net.IPv6loopback)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCSIFADDR, uintptr(unsafe.Pointer(&req)))
	if errno != 0 && errno != unix.EEXIST {
		return fmt.Errorf("add ::1 to %s: %w", name, errno)
	}
	return nil
}
