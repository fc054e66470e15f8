package boot

import (
	"context"
	"io/fs"
	"strings"
	"testing"

	"github.com/nitroinit/nitroinit/internal/nitro"
)

func TestSimulatedNSM(t *testing.T) {
	const start = "start /proc/self/exe nsm-sim --cid 3 --port 9100"
	tests := []struct {
		name      string
		setup     func(*recOps)
		wantNSM   string
		wantStart bool
	}{
		{"production image: no marker, nothing started", func(r *recOps) {}, "present", false},
		{"marker, real device present: real wins", func(r *recOps) {
			r.files[nitro.NSMSimMarker] = nil
		}, "present", false},
		{"marker, no device: simulator started before the heartbeat", func(r *recOps) {
			r.files[nitro.NSMSimMarker] = nil
			r.modes["/dev/cuse"] = fs.ModeDevice | fs.ModeCharDevice | 0o600
			delete(r.modes, NSMDevice)
			delete(r.files, "/nsm.ko")
		}, NSMSimulated, true},
		{"marker, the device process dies", func(r *recOps) {
			r.files[nitro.NSMSimMarker] = nil
			r.modes["/dev/cuse"] = fs.ModeDevice | fs.ModeCharDevice | 0o600
			r.files["/proc/42/stat"] = []byte("42 (init (x)) Z 1 0 0")
			r.noNSM = true
			delete(r.modes, NSMDevice)
			delete(r.files, "/nsm.ko")
		}, "failed: simulated NSM: nsm-sim (pid 42) exited", true},
		{"marker, no CUSE in the kernel", func(r *recOps) {
			r.files[nitro.NSMSimMarker] = nil
			delete(r.modes, NSMDevice)
			delete(r.files, "/nsm.ko")
		}, "failed: simulated NSM: /dev/cuse absent", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := enclaveOps()
			tc.setup(r)
			res, err := Run(context.Background(), enclaveConfig(), r, t.Logf)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(res.NSM, tc.wantNSM) {
				t.Errorf("NSM = %q, want %q", res.NSM, tc.wantNSM)
			}
			i := r.index(start, 0)
			if (i >= 0) != tc.wantStart {
				t.Fatalf("started = %v, want %v; calls %q", i >= 0, tc.wantStart, r.calls)
			}
			if i >= 0 && r.index("dial 3:9000", 0) < i {
				t.Errorf("heartbeat before the simulated NSM was up: %q", r.calls)
			}
		})
	}
}
