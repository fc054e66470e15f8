package boot

import (
	"io/fs"
	"testing"
	"testing/fstest"
)

// busOps serves /sys/bus/virtio/devices from an in-memory tree.
type busOps struct {
	Ops
	fsys fstest.MapFS
	err  error
}

func (o busOps) ReadDir(path string) ([]fs.DirEntry, error) {
	if o.err != nil {
		return nil, o.err
	}
	return fs.ReadDir(o.fsys, path[1:])
}

func (o busOps) ReadFile(path string) ([]byte, error) { return fs.ReadFile(o.fsys, path[1:]) }

func TestNSMDeviceProbed(t *testing.T) {
	dev := func(id string) *fstest.MapFile { return &fstest.MapFile{Data: []byte(id + "\n")} }
	tests := []struct {
		name string
		ops  busOps
		want bool
	}{
		{"nsm on the bus", busOps{fsys: fstest.MapFS{
			"sys/bus/virtio/devices/virtio0/device": dev("0x0013"),
			"sys/bus/virtio/devices/virtio1/device": dev("0x0021"),
		}}, true},
		{"only vsock on the bus", busOps{fsys: fstest.MapFS{
			"sys/bus/virtio/devices/virtio0/device": dev("0x0013"),
		}}, false},
		{"bus unreadable: wait to be safe", busOps{err: fs.ErrPermission}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := &booter{ops: tt.ops}
			if got := b.nsmDeviceProbed(); got != tt.want {
				t.Fatalf("nsmDeviceProbed() = %v, want %v", got, tt.want)
			}
		})
	}
}
