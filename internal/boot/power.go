package boot

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Indirections so that tests can check PowerOff without powering anything off.
var (
	getpid     = os.Getpid
	syncFS     = unix.Sync
	rebootCall = unix.Reboot
)

// PowerOff syncs filesystems and powers the machine off, or restarts it when
// reboot is true. The caller must have stopped every service first. It
// refuses to act unless this process is PID 1: as a plain supervisor on a
// host, reboot(2) would take the whole machine down. On success it does not
// return.
func PowerOff(reboot bool) error {
	if pid := getpid(); pid != 1 {
		return fmt.Errorf("power off: refusing, this process is PID %d, not 1 (only init in an enclave may end the machine)", pid)
	}
	syncFS()
	cmd, what := unix.LINUX_REBOOT_CMD_POWER_OFF, "power off"
	if reboot {
		cmd, what = unix.LINUX_REBOOT_CMD_RESTART, "restart"
	}
	if err := rebootCall(cmd); err != nil {
		return fmt.Errorf("%s: reboot(2): %w", what, err)
	}
	return nil
}
