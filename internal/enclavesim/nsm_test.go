package enclavesim

import (
	"encoding/hex"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fxamacker/cbor/v2"

	"github.com/nitroinit/nitroinit/internal/hvsock"
	"github.com/nitroinit/nitroinit/internal/nitro"
	"github.com/nitroinit/nitroinit/internal/nsm"
	"github.com/nitroinit/nitroinit/internal/nsm/frame"
	"github.com/nitroinit/nitroinit/internal/wait"
)

// The host side measures the image, writes pcrs.json and root.pem, and
// answers NSM requests on the host port a guest reaches at 3:9100. No VM:
// the test connects to the port's Unix socket as the vsock device would.
func TestHostSideNSM(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts NSMOptions
	}{
		{"measured", NSMOptions{ParentRoleARN: "arn:aws:iam::1:role/r", ParentInstanceID: "i-0123", CADir: filepath.Join(t.TempDir(), "ca")}},
		{"debug", NSMOptions{Debug: true, ParentRoleARN: "ignored in debug mode"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, err := os.MkdirTemp("", "esnsm")
			if err != nil {
				t.Fatal(err)
			}
			defer os.RemoveAll(dir)
			kernel, initrd := filepath.Join(dir, "k"), filepath.Join(dir, "i")
			os.WriteFile(kernel, []byte("kernel"), 0o644)
			os.WriteFile(initrd, []byte("initrd"), 0o644)
			o := Options{Route: RouteVhostUser, Dir: dir, GuestCID: 16, Kernel: kernel, Initrd: initrd, Append: "x=1", NSM: &tc.opts}
			b, err := startHostSide(o)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			var pcrs map[string]string
			raw, err := os.ReadFile(filepath.Join(NSMDir(dir), "pcrs.json"))
			if err == nil {
				err = json.Unmarshal(raw, &pcrs)
			}
			if err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(filepath.Join(NSMDir(dir), "root.pem")); err != nil {
				t.Error(err)
			}
			hx := func(p nsm.PCR) string { return hex.EncodeToString(p[:]) }
			zero := strings.Repeat("0", 96)
			want := map[string]string{
				// Append ("x=1") is not measured.
				"PCR0": hx(nsm.Measure([]byte("kernel"), []byte(KernelCmdline("")), []byte("initrd"))),
				"PCR1": hx(nsm.Measure([]byte("kernel"), []byte(KernelCmdline("")), []byte("initrd"))),
				"PCR2": hx(nsm.Measure()),
				"PCR3": hx(nsm.Measure([]byte("arn:aws:iam::1:role/r"))),
				"PCR4": hx(nsm.Measure([]byte("i-0123"))),
				"PCR8": zero,
			}
			if tc.opts.Debug {
				for k := range want {
					want[k] = zero
				}
			}
			for k, v := range want {
				if pcrs[k] != v {
					t.Errorf("pcrs.json %s = %s, want %s", k, pcrs[k], v)
				}
			}
			nc, err := net.Dial("unix", hvsock.ListenPath(hybridSocketPath(dir), nitro.NSMSimPort))
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			// A simulator that never answers fails after one stall interval.
			c := wait.NewConn(nc)
			req, _ := cbor.Marshal(map[string]any{"DescribePCR": map[string]any{"index": 3}})
			if err := frame.Write(c, req); err != nil {
				t.Fatal(err)
			}
			resp, err := frame.Read(c, nitro.NSMResponseMax)
			if err != nil {
				t.Fatal(err)
			}
			var r struct {
				DescribePCR struct {
					Lock bool   `cbor:"lock"`
					Data []byte `cbor:"data"`
				}
			}
			if err := cbor.Unmarshal(resp, &r); err != nil || hex.EncodeToString(r.DescribePCR.Data) != want["PCR3"] || !r.DescribePCR.Lock {
				t.Errorf("DescribePCR 3 over the host port: %x %v", resp, err)
			}
		})
	}
}

// An EIF's own measurements are what the simulated NSM reports.
func TestHostSideNSMFromEIF(t *testing.T) {
	dir, err := os.MkdirTemp("", "esnsm")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	p, err := PrepareEIF("../eif/testdata/golden.eif", dir)
	if err != nil {
		t.Fatal(err)
	}
	o := p.Apply(Options{Route: RouteVhostUser, Dir: dir, GuestCID: 16, NSM: &NSMOptions{ParentInstanceID: "i-1"}})
	b, err := startHostSide(o)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	got := b.NSM().PCRs()
	m := p.Measurements
	for i, want := range map[int][48]byte{0: m.PCR0, 1: m.PCR1, 2: m.PCR2} {
		if got[i] != nsm.PCR(want) {
			t.Errorf("PCR%d = %x, want the EIF's %x", i, got[i], want)
		}
	}
	if got[4] != nsm.Measure([]byte("i-1")) {
		t.Errorf("PCR4 = %x", got[4])
	}
}
