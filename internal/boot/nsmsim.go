package boot

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nitroinit/nitroinit/internal/nitro"
)

// nsmSimWait bounds the wait for the simulated /dev/nsm: the device is a
// process that must start, open /dev/cuse and register, which takes longer
// than a driver's probe under TCG.
const nsmSimWait = 10 * time.Second

// NSMSimulated is Result.NSM when the simulated device answers.
const NSMSimulated = "present (simulated)"

// simulateNSM starts the simulated NSM device when the image asks for it
// (nitro.NSMSimMarker, written only by `initramfs build --nsm`) and no real
// /dev/nsm exists, and waits until /dev/nsm is there, so that every service
// and the /cmd app find it at their first instruction. Images without the
// marker (production) never get here. The device runs as its own process
// (this binary under argv[0] "nsm-sim"), never inside PID 1: it blocks on
// /dev/cuse and on the host.
func (b *booter) simulateNSM() {
	if _, err := b.ops.Stat(nitro.NSMSimMarker); err != nil {
		return
	}
	if b.res.NSM == "present" {
		b.logf("boot: %s is a real device; the simulated NSM (%s) is not started", NSMDevice, nitro.NSMSimMarker)
		return
	}
	err := b.step("nsm simulator", func() error {
		if _, err := b.ops.Stat("/dev/cuse"); err != nil {
			return fmt.Errorf("simulated NSM: /dev/cuse absent (%v): the kernel needs CONFIG_CUSE and the image cuse.ko in kernel_modules (initramfs build --nsm adds it)", err)
		}
		argv := []string{nitro.NSMSimArgv0, "--cid", strconv.FormatUint(uint64(b.cfg.HeartbeatCID), 10), "--port", strconv.FormatUint(uint64(nitro.NSMSimPort), 10)}
		pid, err := b.ops.StartProcess("/proc/self/exe", argv)
		if err != nil {
			return fmt.Errorf("simulated NSM: starting %s: %w", nitro.NSMSimArgv0, err)
		}
		deadline := time.Now().Add(nsmSimWait)
		for {
			fi, err := b.ops.Stat(NSMDevice)
			if err == nil && fi.Mode()&fs.ModeCharDevice != 0 && fi.Mode().Perm()&0o666 == 0o666 {
				b.res.NSM = NSMSimulated
				b.logf("boot: %s present (simulated, pid %d, forwarding to CID %d port %d)", NSMDevice, pid, b.cfg.HeartbeatCID, nitro.NSMSimPort)
				return nil
			}
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("simulated NSM: %w", err)
			}
			if b.exited(pid) {
				return fmt.Errorf("simulated NSM: %s (pid %d) exited before %s appeared (see its messages above)", nitro.NSMSimArgv0, pid, NSMDevice)
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("simulated NSM: %s did not appear within %s after starting pid %d (see its messages above)", NSMDevice, nsmSimWait, pid)
			}
			time.Sleep(nsmPoll)
		}
	})
	if err != nil {
		b.res.NSM = "failed: " + err.Error()
		b.logf("boot: %v; continuing", err)
	}
}

// exited reports whether pid is gone or a zombie. The reaper starts after
// boot, so a child that died during boot is still a zombie here.
func (b *booter) exited(pid int) bool {
	stat, err := b.ops.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return errors.Is(err, fs.ErrNotExist)
	}
	// The state follows the command name, which is in parentheses and may
	// itself contain them.
	i := strings.LastIndexByte(string(stat), ')')
	if i < 0 || i+2 >= len(stat) {
		return false
	}
	return stat[i+2] == 'Z' || stat[i+2] == 'X'
}

// startProcess starts path with argv and the console as its standard
// streams, without waiting: the reaper collects it if it ever exits.
func startProcess(path string, argv []string) (int, error) {
	p, err := os.StartProcess(path, argv, &os.ProcAttr{Files: []*os.File{os.Stdin, os.Stdout, os.Stderr}})
	if err != nil {
		return 0, err
	}
	pid := p.Pid
	p.Release()
	return pid, nil
}
