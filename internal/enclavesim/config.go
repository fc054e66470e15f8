package enclavesim

import (
	"fmt"
	"path"
	"path/filepath"
	"strings"

	"github.com/nitroinit/nitroinit/initramfs/image"
	"github.com/nitroinit/nitroinit/internal/nitro"
)

// InitYAML returns a minimal init.yaml for a simulator guest: the heartbeat
// goes to hostCID (VM.HostCID, or HostCIDFor before the VM exists), the
// given module files are loaded from image.ModuleDir in order (nsm becomes
// nsm_driver_path), the control socket also listens on vsock port 9001 and
// gives the host every permission class, and there is no root switch unless
// rootSwitch.
func InitYAML(hostCID uint32, modules []string, rootSwitch bool) string {
	var mods []string
	nsm := "null"
	for _, m := range modules {
		p := path.Join(image.ModuleDir, filepath.Base(m))
		if strings.HasPrefix(filepath.Base(m), "nsm.ko") {
			nsm = p
			continue
		}
		mods = append(mods, "  - "+p)
	}
	modList := " []"
	if len(mods) > 0 {
		modList = "\n" + strings.Join(mods, "\n")
	}
	return fmt.Sprintf(`# Written by enclavesim.InitYAML for the enclave simulator.
service_dir: /service
log_dir: /log
control:
  unix_socket_enabled: true
  unix_socket_path: /run/init.sock
  vsock_enabled: true
  vsock_cid: 4294967295
  vsock_port: %d
  # The host (the parent, which is all a simulator's host connections
  # come from) may do everything, including shutdown.
  permissions:
    vsock: {cids: [%d], classes: [read, manage, exec]}
kernel_modules:%s
nsm_driver_path: %s
vsock:
  enabled: true
  cid: %d
  port: %d
pivot_root: %t
pivot_root_dir: /rootfs
`, nitro.ControlPort, hostCID, modList, nsm, hostCID, nitro.HeartbeatPort, rootSwitch)
}

// HostCIDFor is the CID a guest dials to reach the host on a route: 2 for
// vhost-vsock (the kernel only delivers packets addressed to the host's CID
// 2), 3 (the Nitro parent's CID) for the userspace vhost-user device.
func HostCIDFor(route string) uint32 {
	if route == RouteVhostVsock {
		return 2
	}
	return 3
}
