package image

import (
	"strings"
	"testing"

	"github.com/u-root/mkuimage/cpio"
)

func TestTreeKeepsOwnersDevicesAndHardLinks(t *testing.T) {
	reg := cpio.StaticRecord([]byte("data"), cpio.Info{Mode: cpio.S_IFREG | 0o4750, UID: 1000, GID: 1001, FileSize: 4})
	dev := cpio.Record{Info: cpio.Info{Mode: cpio.S_IFCHR | 0o666, Rmajor: 1, Rminor: 3}}
	s := Spec{AppOnly: true, Tree: []TreeFile{
		{Dst: "/rootfs/bin/a", Record: reg},
		{Dst: "/rootfs/bin/b", HardLink: "/rootfs/bin/a"},
		{Dst: "/rootfs/dev/null", Record: dev},
	}}
	got := readBack(t, build(t, s))
	if _, ok := got["init"]; ok {
		t.Error("an AppOnly image has /init")
	}
	for _, n := range []string{"dev/console", "proc", "tmp"} {
		if _, ok := got[n]; ok {
			t.Errorf("an AppOnly image has the standard /%s", n)
		}
	}
	a, b := got["rootfs/bin/a"], got["rootfs/bin/b"]
	if a.UID != 1000 || a.GID != 1001 || a.Mode != cpio.S_IFREG|0o4750 {
		t.Errorf("/rootfs/bin/a: %s", a.Info)
	}
	if a.Ino != b.Ino || a.NLink != 2 || b.NLink != 2 || b.Mode != a.Mode || b.UID != a.UID || b.FileSize != 0 || a.FileSize != 4 {
		t.Errorf("hard link: a %s, b %s; want one inode, link count 2, the data in a", a.Info, b.Info)
	}
	if d := got["rootfs/dev/null"]; d.Mode != cpio.S_IFCHR|0o666 || d.Rmajor != 1 || d.Rminor != 3 {
		t.Errorf("/rootfs/dev/null: %s", d.Info)
	}
	if r := got["rootfs"]; r.UID != 0 || r.Mode != cpio.S_IFDIR|0o755 {
		t.Errorf("/rootfs: %s", r.Info)
	}
}

func TestTreeRefusesDanglingHardLink(t *testing.T) {
	s := Spec{AppOnly: true, Tree: []TreeFile{{Dst: "/rootfs/b", HardLink: "/rootfs/missing"}}}
	if _, err := s.Records(); err == nil || !strings.Contains(err.Error(), "/rootfs/b (from image file /rootfs/b) is a hard link to /rootfs/missing") {
		t.Errorf("Records() = %v", err)
	}
}
