package vmtests

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nitroinit/nitroinit/initramfs/image"
	"github.com/nitroinit/nitroinit/internal/eif"
	"github.com/nitroinit/nitroinit/internal/enclavesim"
	"github.com/nitroinit/nitroinit/internal/nsm"
	"github.com/nitroinit/nitroinit/internal/oci/ocitest"
	"github.com/nitroinit/nitroinit/internal/testprog/nsmcheck/report"
	"github.com/nitroinit/nitroinit/internal/wait"
)

// eifGuest is an EIF built the way a user builds one: a container image
// made by umoci and skopeo (internal/oci/testdata/mkimage.sh, with svc as
// its /bin/app) turned into an EIF by `initramfs build --from-image
// --format eif`.
type eifGuest struct {
	path         string
	measurements eif.Measurements // as build printed them
}

// buildEIFGuest returns the EIF, or what went wrong; extra are more build
// flags.
func buildEIFGuest(dir string, hostCID uint32, ref func(imageDir string) string, extra ...string) (eifGuest, string) {
	initramfs := filepath.Join(bin.dir, "initramfs")
	if _, err := os.Stat(initramfs); err != nil {
		cmd := exec.Command("go", "build", "-o", initramfs, "./initramfs")
		cmd.Dir = ".."
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return eifGuest{}, fmt.Sprintf("building initramfs: %v\n%s", err, out)
		}
	}
	imageDir := filepath.Join(dir, "image")
	if out, err := exec.Command(ocitest.Script(), imageDir, bin.svc).CombinedOutput(); err != nil {
		return eifGuest{}, fmt.Sprintf("mkimage.sh: %v\n%s", err, out)
	}
	g := eifGuest{path: filepath.Join(dir, "app.eif")}
	cmd := exec.Command(initramfs, "build", "--init", bin.init, "--initctl", bin.initctl,
		"--kernel-modules", "--sim-config", "--heartbeat-cid", strconv.Itoa(int(hostCID)),
		"--from-image", ref(imageDir), "--format", "eif", "-o", g.path)
	cmd.Args = append(cmd.Args, extra...)
	cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH=1700000000")
	out, err := cmd.Output()
	if err != nil {
		return eifGuest{}, fmt.Sprintf("initramfs build: %v\n%s", err, errText(err))
	}
	var printed struct{ Measurements map[string]string }
	if err := json.Unmarshal(out, &printed); err != nil {
		return eifGuest{}, fmt.Sprintf("initramfs build printed %q: %v", out, err)
	}
	for i, p := range []*eif.PCR{&g.measurements.PCR0, &g.measurements.PCR1, &g.measurements.PCR2} {
		if err := p.UnmarshalText([]byte(printed.Measurements[fmt.Sprintf("PCR%d", i)])); err != nil {
			return eifGuest{}, fmt.Sprintf("PCR%d: %v", i, err)
		}
	}
	return g, ""
}

func errText(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}

// TestEIFBoot boots an EIF built from a container image, as QEMU's
// nitro-enclave machine would (its kernel, its measured cmdline, its
// ramdisks concatenated), and checks the heartbeat, the app's argv,
// environment and working directory from the image config, and initctl
// over vsock.
func TestEIFBoot(t *testing.T) {
	vm, initctl := bootEIF(t, eifBoot{machine: enclavesim.MachineQ35})
	defer vm.stop(t)
	var logs string
	eventually(t, waitTimeout+bootTimeout, "the app's log over initctl", func() (bool, string) {
		out, err := initctl("logs", "-n", "200", "app")
		logs = out
		return err == nil && strings.Contains(out, "cwd: "), fmt.Sprintf("%v: %s", err, out)
	})
	for _, want := range []string{
		`argv: ["/bin/app" "argv" "first arg" "two words"]`,
		"cwd: /data",
		"env: FOO=bar",
		"env: GREETING=hello world",
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("the app's log lacks %q:\n%s", want, logs)
		}
	}
	out, err := initctl("list")
	if err != nil || !strings.Contains(out, "app") || !strings.Contains(out, "running") {
		t.Errorf("initctl list: %v\n%s", err, out)
	}
}

// TestEIFBootMicrovm boots the same EIF on QEMU's microvm machine, whose
// vsock device sits on virtio-mmio as Nitro's do; the kernel gets it from
// the virtio_mmio module that init loads with the vsock modules.
func TestEIFBootMicrovm(t *testing.T) {
	needVM(t)
	if !hasModule("virtio_mmio") {
		msg := "the test kernel cache has no virtio_mmio module: rerun ci/fetch-kernel.sh (it fetches it now)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	vm, initctl := bootEIF(t, eifBoot{machine: enclavesim.MachineMicrovm})
	defer vm.stop(t)
	if !strings.Contains(strings.Join(vm.vm.Args(), " "), "vhost-user-vsock-device") && vm.opts.Route == enclavesim.RouteVhostUser {
		t.Errorf("QEMU ran without the virtio-mmio vsock device: %s", strings.Join(vm.vm.Args(), " "))
	}
	eventually(t, waitTimeout+bootTimeout, "initctl list over vsock on microvm", func() (bool, string) {
		out, err := initctl("list")
		return err == nil && strings.Contains(out, "app"), fmt.Sprintf("%v: %s", err, out)
	})
}

// TestEIFBootNSM boots an EIF built with --nsm from the container image,
// with a service that runs nsmcheck (github.com/hf/nsm, unmodified) to get an
// attestation document, and checks on the host that the document verifies
// against the run's root.pem with verify.py (which shares no code with the
// signer) and carries as PCR0-2 what build --format eif printed, as
// pcrs.json and DescribePCR do.
func TestEIFBootNSM(t *testing.T) {
	vm, initctl := bootEIF(t, eifBoot{machine: enclavesim.MachineQ35, nsm: true})
	defer vm.stop(t)
	var got nsmReport
	arrived := wait.Receive(vm.reports, &got)
	wait.Limits{Progress: vm.vm.ConsoleLines, Poll: time.Second}.For(t, "nsmcheck's report", func() (bool, string) {
		if ok, _ := arrived(); ok {
			return true, ""
		}
		// The service's state is progress too (a run under TCG may print
		// nothing while it starts).
		out, err := initctl("status", "nsmcheck")
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, "Status:") {
				return false, strings.TrimSpace(l)
			}
		}
		return false, fmt.Sprintf("%v: %s", err, out)
	})
	if got.err != nil {
		t.Fatal(got.err)
	}
	r := got.r
	for _, f := range r.Failures {
		t.Errorf("guest: %s", f)
	}
	nsmDir := enclavesim.NSMDir(vm.opts.Dir)
	b, err := os.ReadFile(filepath.Join(nsmDir, "pcrs.json"))
	if err != nil {
		t.Fatal(err)
	}
	var pcrsJSON map[string]string
	if err := json.Unmarshal(b, &pcrsJSON); err != nil {
		t.Fatalf("pcrs.json: %v", err)
	}
	root := filepath.Join(nsmDir, "root.pem")
	doc, err := verify(t, root, r.Document)
	if err != nil {
		t.Fatalf("the document does not verify against %s: %v", root, err)
	}
	docPCRs, _ := doc["pcrs"].(map[string]any)
	m := vm.built.measurements
	for i, printed := range []eif.PCR{m.PCR0, m.PCR1, m.PCR2} {
		want := printed.String()
		for _, g := range []struct{ where, got string }{
			{"the attestation document", fmt.Sprint(docPCRs[fmt.Sprint(i)])},
			{"pcrs.json", pcrsJSON[fmt.Sprintf("PCR%d", i)]},
			{"DescribePCR", r.PCRs[fmt.Sprint(i)]},
		} {
			if g.got != want {
				t.Errorf("PCR%d in %s = %s, build --format eif printed %s", i, g.where, g.got, want)
			}
		}
	}
	// Another root must not vouch for it.
	other, err := nsm.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	otherRoot := filepath.Join(t.TempDir(), "other.pem")
	if err := os.WriteFile(otherRoot, other.RootPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := verify(t, otherRoot, r.Document); err == nil {
		t.Error("the document verified against a different root")
	}
}

// nsmBuildFlags are build's flags for an EIF with the simulated NSM and a
// service that runs nsmcheck once, which sends its report to the host's
// nsmReportPort.
func nsmBuildFlags(t *testing.T, dir string) []string {
	svc := filepath.Join(dir, "nsmcheck.service")
	unit := fmt.Sprintf("ExecStart = \"/bin/nsmcheck --attest-only --port %d\"\n", nsmReportPort)
	if err := os.WriteFile(svc, []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	return []string{"--nsm", "--service", svc, "--file", buildNSMCheck(t) + ":" + image.RootfsDir + "/bin/nsmcheck"}
}

// hasModule reports whether the test kernel has the module as a file.
func hasModule(name string) bool {
	for _, m := range kernel.Modules {
		if b := filepath.Base(m); b == name+".ko" || strings.HasPrefix(b, name+".ko.") {
			return true
		}
	}
	return false
}

// eifBoot says what bootEIF builds and boots.
type eifBoot struct {
	machine string
	// nsm builds the EIF with --nsm and a service that runs nsmcheck
	// (github.com/hf/nsm) once, and boots it with the simulated NSM.
	nsm bool
}

// eifVM is a running EIF guest.
type eifVM struct {
	vm    *enclavesim.VM
	opts  enclavesim.Options
	built eifGuest
	// reports has nsmcheck's report (eifBoot.nsm), or why none came.
	reports  chan nsmReport
	reportLn net.Listener
}

type nsmReport struct {
	r   report.Report
	err error
}

func (v *eifVM) stop(t *testing.T) {
	if v.reportLn != nil {
		v.reportLn.Close()
	}
	ex := v.vm.Stop()
	if t.Failed() {
		t.Logf("VM ended: %s\nconsole:\n%s", ex, v.vm.ConsoleTail(80))
	}
}

// bootEIF builds the test EIF and boots it as b says; the returned
// function runs the host's initctl against it.
func bootEIF(t *testing.T, b eifBoot) (*eifVM, func(args ...string) (string, error)) {
	t.Helper()
	machine := b.machine
	needVM(t)
	ocitest.NeedTools(t)
	stopShared()
	// Resolving may probe KVM; building the image and the EIF comes next,
	// and the boot gets its own bootTimeout after that.
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	dir := t.TempDir()
	placeholder := filepath.Join(dir, "placeholder")
	os.WriteFile(placeholder, nil, 0o644)
	// Short and under /tmp: Unix socket names are limited to 107 bytes.
	simDir, err := os.MkdirTemp("", "vmt-eif-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(simDir) })
	opts, err := enclavesim.Options{Initrd: placeholder, Kernel: kernel.BootImage(), MemoryMB: 1024,
		Dir: simDir, Timeout: vmLifetime, Machine: machine}.Resolve(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var extra []string
	if b.nsm {
		extra = nsmBuildFlags(t, dir)
	}
	eifBuilt, msg := buildEIFGuest(dir, enclavesim.HostCIDFor(opts.Route), func(img string) string {
		return "docker-archive:" + img + "/app-docker.tar"
	}, extra...)
	if msg != "" {
		t.Fatal(msg)
	}
	p, err := enclavesim.PrepareEIF(eifBuilt.path, dir)
	if err != nil {
		t.Fatal(err)
	}
	// What the simulator will report as PCR0-2 (the NSM, once it reads
	// them from here) is what build printed.
	if p.Measurements.PCR0 != eifBuilt.measurements.PCR0 || p.Measurements.PCR1 != eifBuilt.measurements.PCR1 || p.Measurements.PCR2 != eifBuilt.measurements.PCR2 {
		t.Errorf("the booted EIF measures %+v, build printed %+v", p.Measurements, eifBuilt.measurements)
	}
	if b.nsm {
		opts.NSM = &enclavesim.NSMOptions{} // Apply gives it the EIF's PCRs
	}
	opts = p.Apply(opts)
	opts.Console = consoleEcho("eif-" + machine)
	// Start shows nothing until QEMU runs: one boot stall interval.
	ctx, cancel = context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	vm, err := enclavesim.Start(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	v := &eifVM{vm: vm, opts: opts, built: eifBuilt}
	if b.nsm {
		// Listening before the guest boots: nsmcheck gives up on a host
		// that does not answer for two minutes.
		v.reportLn, err = vm.ListenHost(nsmReportPort)
		if err != nil {
			v.stop(t)
			t.Fatal(err)
		}
		v.reports = make(chan nsmReport, 1)
		go func() {
			// The wait below judges progress; this bound only ends the
			// goroutine should the test have gone.
			r, err := report.Receive(v.reportLn, wait.DefaultCap)
			v.reports <- nsmReport{r, err}
		}()
	}
	// The boot goes on while the console advances (the kernel's part of it
	// prints nothing).
	hbctx, hbcancel := wait.Limits{Stall: wait.BootStall, Progress: vm.ConsoleLines}.Context(context.Background(), "the heartbeat")
	defer hbcancel()
	if _, err := vm.Heartbeat(hbctx); err != nil {
		v.stop(t)
		t.Fatalf("no heartbeat on %s: %v\nconsole:\n%s", machine, err, vm.ConsoleTail(60))
	}
	initctl := func(args ...string) (string, error) {
		// One stall interval for an answer, longer while the console moves.
		ctx, cancel := wait.Limits{Progress: vm.ConsoleLines}.Context(context.Background(), "initctl "+strings.Join(args, " "))
		defer cancel()
		target := []string{"--vsock-uds", vm.HybridSocket()}
		if opts.Route == enclavesim.RouteVhostVsock {
			target = []string{"-p", "vsock", "--vsock-cid", strconv.Itoa(int(opts.GuestCID))}
		}
		cmd := exec.CommandContext(ctx, bin.initctl, append(append(target, "--vsock-port", strconv.Itoa(controlPort)), args...)...)
		cmd.Env = append(os.Environ(), "INITCTL_CONFIG=/nonexistent/initctl.yaml")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	return v, initctl
}
