package boot

import (
	"errors"
	"fmt"
	"io/fs"

	"golang.org/x/sys/unix"
)

// switchRoot makes Config.PivotRootDir the root with AWS's sequence: bind the
// directory onto itself (MS_MOVE needs a mount point), chdir into it, move it
// over "/", chroot ".", chdir "/". pivot_root(2) cannot be used because the
// initramfs root cannot be unmounted. The initramfs stays in memory, hidden.
func (b *booter) switchRoot() error {
	if !b.cfg.PivotRoot {
		b.logf("boot: root switch disabled (pivot_root is false)")
		return nil
	}
	dir := modulePath(b.cfg.PivotRootDir)
	fi, statErr := b.ops.Stat(dir)
	if errors.Is(statErr, fs.ErrNotExist) {
		b.logf("boot: %s does not exist; staying on the initramfs root", dir)
		return nil
	}
	err := b.step("switch root", func() error {
		if err := b.doSwitch(dir, fi, statErr); err != nil {
			return fmt.Errorf("switch root to %s: %w", dir, err)
		}
		b.res.Switched = true
		b.logf("boot: switched root to %s", dir)
		return nil
	})
	return b.fatal(PolicyPivotRoot, err)
}

func (b *booter) doSwitch(dir string, fi fs.FileInfo, statErr error) error {
	if statErr != nil {
		return statErr
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory (pivot_root_dir must name the directory holding the real root)", dir)
	}
	if err := b.ops.Mount(dir, dir, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind %s onto itself: %w", dir, err)
	}
	if err := b.ops.Chdir(dir); err != nil {
		return fmt.Errorf("chdir %s: %w", dir, err)
	}
	if err := b.ops.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		// Leave the process where the rest of boot expects it.
		if cerr := b.ops.Chdir("/"); cerr != nil {
			b.logf("boot: chdir / after failed move: %v", cerr)
		}
		return fmt.Errorf("move %s onto /: %w", dir, err)
	}
	if err := b.ops.Chroot("."); err != nil {
		return fmt.Errorf("chroot into moved %s: %w", dir, err)
	}
	if err := b.ops.Chdir("/"); err != nil {
		return fmt.Errorf("chdir / in new root: %w", err)
	}
	return nil
}
