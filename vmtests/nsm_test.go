package vmtests

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/nitroinit/nitroinit/initramfs/image"
	"github.com/nitroinit/nitroinit/internal/enclavesim"
	"github.com/nitroinit/nitroinit/internal/nitro"
	"github.com/nitroinit/nitroinit/internal/nsm"
	"github.com/nitroinit/nitroinit/internal/nsm/frame"
	"github.com/nitroinit/nitroinit/internal/nsm/nsmtest"
	"github.com/nitroinit/nitroinit/internal/testbin"
	"github.com/nitroinit/nitroinit/internal/testprog/nsmcheck/report"
	"github.com/nitroinit/nitroinit/internal/wait"
)

// nsmReportPort is where the guest's nsmcheck sends its report.
const nsmReportPort = 9102

// nsmGuest is an image built as `initramfs build --nsm` builds one, whose
// AWS /cmd app is nsmcheck (github.com/hf/nsm, unmodified).
func nsmGuest(t *testing.T, opts *enclavesim.NSMOptions, args ...string) guest {
	return nsmGuestTB(t, opts, args...)
}

func nsmGuestTB(t testing.TB, opts *enclavesim.NSMOptions, args ...string) guest {
	cuse, err := kernel.CUSEModule()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	g := awsGuest()
	g.config = strings.Replace(g.config, "kernel_modules:\n", "kernel_modules:\n  - "+image.ModulePath(cuse)+"\n", 1)
	g.files = []image.File{
		{Src: cuse, Dst: image.ModulePath(cuse)},
		{Data: []byte("marker\n"), Dst: nitro.NSMSimMarker},
		{Src: buildNSMCheck(t), Dst: "/bin/nsmcheck", Mode: 0o755},
		{Data: []byte(strings.Join(append([]string{"/bin/nsmcheck"}, args...), "\n") + "\n"), Dst: "/cmd"},
	}
	g.nsm = opts
	return g
}

func buildNSMCheck(t testing.TB) string {
	bins, err := testbin.Build(t.TempDir(), "", "./internal/testprog/nsmcheck")
	if err != nil {
		t.Fatal(err)
	}
	return bins[0]
}

// receiveReport waits for nsmcheck's report on the host port.
func receiveReport(t testing.TB, e *enclave) report.Report {
	ln, err := e.vm.ListenHost(nsmReportPort)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close() // ends the Accept if the wait fails
	// The report comes after a boot and the app's checks: wait while the
	// console moves, allowing a boot's silence (wait.BootStall).
	var r report.Report
	done := make(chan struct{})
	go func() {
		defer close(done)
		r, err = report.Receive(ln, vmLifetime)
	}()
	lim := e.consoleMoves()
	lim.Stall = wait.BootStall
	lim.For(t, "nsmcheck's report", func() (bool, string) {
		return isClosed(done), e.vm.ConsoleTail(1)
	})
	if err != nil {
		t.Fatalf("%v; console:\n%s", err, e.vm.ConsoleTail(40))
	}
	return r
}

func readPCRsJSON(t *testing.T, e *enclave) map[string]string {
	b, err := os.ReadFile(filepath.Join(enclavesim.NSMDir(e.dir), "pcrs.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]string
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// verify runs the independent verifier against a root file.
func verify(t *testing.T, root string, doc []byte) (map[string]any, error) {
	pem, err := os.ReadFile(root)
	if err != nil {
		t.Fatal(err)
	}
	return nsmtest.Verify(t, pem, doc)
}

// TestNSM boots an image with the simulated NSM whose /cmd app uses
// github.com/hf/nsm: every request type and error case, 16 clients at once,
// and an attestation document verified here against root.pem.
func TestNSM(t *testing.T) {
	e := soloBoot(t, "nsm", nsmGuest(t, &enclavesim.NSMOptions{ParentRoleARN: "arn:aws:iam::123456789012:role/sim"}))
	defer e.stop()
	if !strings.Contains(e.vm.Console(), "/dev/nsm present (simulated") {
		t.Errorf("console lacks init's /dev/nsm present (simulated) line:\n%s", e.vm.ConsoleTail(40))
	}
	// The app waits for the report listener, so the enclave is still up.
	if st := e.system(t); st.NSM != "present (simulated)" {
		t.Errorf("system-status NSM = %q, want present (simulated)", st.NSM)
	}
	r := receiveReport(t, e)
	for _, f := range r.Failures {
		t.Errorf("guest: %s", f)
	}
	if r.Steps < 14 {
		t.Errorf("guest ran %d checks, want 14", r.Steps)
	}
	want := readPCRsJSON(t, e)
	for i := 0; i < 16; i++ {
		if r.PCRs[fmt.Sprint(i)] != want[fmt.Sprintf("PCR%d", i)] {
			t.Errorf("guest's PCR%d = %s, pcrs.json says %s", i, r.PCRs[fmt.Sprint(i)], want[fmt.Sprintf("PCR%d", i)])
		}
	}
	if want["PCR3"] == strings.Repeat("0", 96) || want["PCR0"] == strings.Repeat("0", 96) {
		t.Errorf("pcrs.json has zero PCR0 or PCR3: %v", want)
	}
	root := filepath.Join(enclavesim.NSMDir(e.dir), "root.pem")
	doc, err := verify(t, root, r.Document)
	if err != nil {
		t.Fatalf("the document does not verify against %s: %v", root, err)
	}
	pcrs := doc["pcrs"].(map[string]any)
	for i := 0; i < nitro.NSMPCRCount; i++ {
		if i == 16 || i == 19 {
			continue // extended by the app
		}
		if pcrs[fmt.Sprint(i)] != want[fmt.Sprintf("PCR%d", i)] {
			t.Errorf("document PCR%d = %v, pcrs.json %s", i, pcrs[fmt.Sprint(i)], want[fmt.Sprintf("PCR%d", i)])
		}
	}
	for k, v := range map[string]string{"user_data": "user data", "nonce": "nonce 1", "public_key": "public key"} {
		if doc[k] != fmt.Sprintf("%x", v) {
			t.Errorf("document %s = %v, want %x", k, doc[k], v)
		}
	}
	other, err := nsm.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	otherRoot := filepath.Join(t.TempDir(), "other.pem")
	os.WriteFile(otherRoot, other.RootPEM(), 0o644)
	if _, err := verify(t, otherRoot, r.Document); err == nil {
		t.Error("the document verified against a different root")
	}
	if _, err := verify(t, "../internal/nsm/testdata/aws-nitro-root-g1.pem", r.Document); err == nil {
		t.Error("the document verified against AWS's root")
	}
	if ex := e.waitEnd(t); ex.Kind != enclavesim.ExitPowerOff {
		t.Errorf("after the /cmd app: %v, want power-off", ex)
	}
}

// TestNSMDebugMode: --debug-mode reports PCRs 0-15 as zeros.
func TestNSMDebugMode(t *testing.T) {
	e := soloBoot(t, "nsm-debug", nsmGuest(t, &enclavesim.NSMOptions{Debug: true}, "--pcrs-only"))
	defer e.stop()
	r := receiveReport(t, e)
	for _, f := range r.Failures {
		t.Errorf("guest: %s", f)
	}
	for i := 0; i < 16; i++ {
		if r.PCRs[fmt.Sprint(i)] != strings.Repeat("0", 96) {
			t.Errorf("debug mode PCR%d = %s, want zeros", i, r.PCRs[fmt.Sprint(i)])
		}
	}
}

// BenchmarkNSMDescribePCR measures, in one run inside the simulator,
// DescribePCR round trips through /dev/nsm (app -> CUSE -> nsm-sim -> vsock
// -> host Module and back) next to bare vsock round trips of the same
// request and response sizes to a host echo service (the floor). The
// figures are the guest's p50/p99 in microseconds and their ratio; the
// guest interleaves batches of both. Also reported: Attestation round trips
// (100), the same DescribePCR as a raw ioctl without the client library's
// CBOR work, and one CUSE round trip alone (an ioctl refused in its first
// round). b.N is ignored: one boot, 1000 of each.
func BenchmarkNSMDescribePCR(b *testing.B) {
	const n = 1000
	g := nsmGuestTB(b, &enclavesim.NSMOptions{}, "--bench", fmt.Sprint(n))
	e := soloBoot(b, "nsm-bench", g)
	defer e.stop()
	// The echo answers each frame with a frame the size of DescribePCR's
	// response, as the NSM service would.
	m, err := nsm.New(nsm.Config{})
	if err != nil {
		b.Fatal(err)
	}
	descReq := []byte("\xa1\x6bDescribePCR\xa1\x65index\x00")
	respSize := len(m.Handle(descReq))
	ln, err := e.vm.ListenHost(9103)
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		resp := make([]byte, respSize)
		for {
			if _, err := frame.Read(c, nitro.NSMRequestMax); err != nil {
				return
			}
			if err := frame.Write(c, resp); err != nil {
				return
			}
		}
	}()
	r := receiveReport(b, e)
	for _, f := range r.Failures {
		b.Errorf("guest: %s", f)
	}
	pct := func(v []int64, p float64) float64 {
		if len(v) == 0 {
			return 0
		}
		s := append([]int64(nil), v...)
		sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
		return float64(s[int(p*float64(len(s)-1))])
	}
	d, v := r.Bench["describe_pcr"], r.Bench["vsock"]
	b.ReportMetric(pct(d, 0.5), "describe-p50-µs")
	b.ReportMetric(pct(d, 0.99), "describe-p99-µs")
	b.ReportMetric(pct(v, 0.5), "vsock-p50-µs")
	b.ReportMetric(pct(v, 0.99), "vsock-p99-µs")
	b.ReportMetric(pct(r.Bench["attestation"], 0.5), "attestation-p50-µs")
	b.ReportMetric(pct(r.Bench["attestation"], 0.99), "attestation-p99-µs")
	b.ReportMetric(pct(r.Bench["cuse_round"], 0.5), "cuse-round-p50-µs")
	b.ReportMetric(pct(r.Bench["describe_raw"], 0.5), "describe-raw-p50-µs")
	if pct(v, 0.5) > 0 {
		b.ReportMetric(pct(d, 0.5)/pct(v, 0.5), "p50-ratio")
	}
	b.ReportMetric(0, "ns/op")
}
