package boot

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// nsmPoll is how often Run looks for /dev/nsm while it waits.
const nsmPoll = 20 * time.Millisecond

// moduleFlags selects finit_module flags by file name: the kernel
// decompresses .xz, .zst and .gz itself (CONFIG_MODULE_DECOMPRESS) when asked
// to, and rejects the flag for a plain ELF file.
func moduleFlags(path string) int {
	for _, ext := range []string{".xz", ".zst", ".gz"} {
		if strings.HasSuffix(path, ext) {
			return unix.MODULE_INIT_COMPRESSED_FILE
		}
	}
	return 0
}

// modulePath makes a relative module path relative to "/", where AWS's init
// runs, so that the default "nsm.ko" means /nsm.ko whatever our cwd is.
func modulePath(p string) string {
	if filepath.IsAbs(p) {
		return filepath.Clean(p)
	}
	return filepath.Join("/", p)
}

// loadModule loads one module and reports "loaded" or "already loaded".
func (b *booter) loadModule(p string) (string, error) {
	abs := modulePath(p)
	flags := moduleFlags(abs)
	kind := "plain"
	if flags != 0 {
		kind = "compressed"
	}
	err := b.ops.FinitModule(abs, flags)
	switch {
	case err == nil:
		b.logf("boot: loaded %s (%s)", abs, kind)
		return "loaded", nil
	case errors.Is(err, unix.EEXIST):
		b.logf("boot: %s already loaded", abs)
		return "already loaded", nil
	case errors.Is(err, unix.ENOEXEC) && flags == 0:
		return "", fmt.Errorf("load module %s: %w (a compressed module needs a .xz, .zst or .gz name)", abs, err)
	}
	return "", fmt.Errorf("load module %s (%s): %w", abs, kind, err)
}

// loadModules loads Config.Modules in order; a failure is logged and the
// next module is tried, since a later one may not depend on it.
func (b *booter) loadModules() {
	for _, p := range b.cfg.Modules {
		b.step("module "+p, func() error {
			state, err := b.loadModule(p)
			if err != nil {
				b.res.Modules = append(b.res.Modules, p+": failed: "+err.Error())
				b.logf("boot: %v; continuing", err)
				return err
			}
			b.res.Modules = append(b.res.Modules, p+": "+state)
			return nil
		})
	}
}

// loadNSM loads the NSM driver, unlinks its file as AWS's init does, and
// waits briefly for /dev/nsm. A driver file that is missing is tolerated
// when /dev/nsm exists anyway (driver built in or loaded earlier).
func (b *booter) loadNSM() error {
	if b.cfg.NSMPath == "" {
		b.res.NSM = "disabled"
		b.logf("boot: NSM driver disabled (nsm_driver_path is empty)")
		return nil
	}
	err := b.step("nsm", func() error {
		abs := modulePath(b.cfg.NSMPath)
		if _, err := b.ops.Stat(abs); errors.Is(err, fs.ErrNotExist) {
			if b.waitNSM() {
				b.logf("boot: NSM driver %s not found, but %s present (driver built in or already loaded)", abs, NSMDevice)
				b.res.NSM = "present"
				return nil
			}
			return fmt.Errorf("NSM driver %s not found and %s absent (set nsm_driver_path to the module's path in the image, or to \"\" to disable)", abs, NSMDevice)
		}
		if _, err := b.loadModule(b.cfg.NSMPath); err != nil {
			return err
		}
		if err := b.ops.Unlink(abs); err != nil && !errors.Is(err, fs.ErrNotExist) {
			b.logf("boot: could not remove %s after loading it: %v", abs, err)
		}
		if b.waitNSM() {
			b.res.NSM = "present"
			b.logf("boot: %s present", NSMDevice)
		} else {
			b.res.NSM = "absent"
			b.logf("boot: %s absent (driver loaded, but no NSM virtio device was probed)", NSMDevice)
		}
		return nil
	})
	if err != nil {
		b.res.NSM = "failed: " + err.Error()
	}
	return b.fatal(PolicyNSM, err)
}

// virtioNSMID is the virtio device ID of the Nitro Secure Module.
const virtioNSMID = "0x0021"

// nsmDeviceProbed reports whether the virtio bus lists an NSM device. The
// bus is enumerated before init runs, so when it lists none, /dev/nsm will
// not appear and there is nothing to wait for. When the bus cannot be read
// the answer is "maybe".
func (b *booter) nsmDeviceProbed() bool {
	const bus = "/sys/bus/virtio/devices"
	ents, err := b.ops.ReadDir(bus)
	if err != nil {
		return true
	}
	for _, e := range ents {
		id, err := b.ops.ReadFile(bus + "/" + e.Name() + "/device")
		if err == nil && strings.TrimSpace(string(id)) == virtioNSMID {
			return true
		}
	}
	return false
}

// waitNSM polls for the /dev/nsm character device until Config.NSMWait, or
// checks once when no NSM device is on the virtio bus.
func (b *booter) waitNSM() bool {
	deadline := time.Now().Add(b.cfg.NSMWait)
	if !b.nsmDeviceProbed() {
		deadline = time.Now()
	}
	for {
		if fi, err := b.ops.Stat(NSMDevice); err == nil && fi.Mode()&fs.ModeCharDevice != 0 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(nsmPoll)
	}
}
