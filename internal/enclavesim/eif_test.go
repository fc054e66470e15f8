package enclavesim

import (
	"strings"
	"testing"
)

func TestKernelCmdlineForMachines(t *testing.T) {
	for _, c := range []struct {
		o       Options
		want    string
		wantTSC bool
	}{
		{Options{}, "console=ttyS0 panic=-1 no_timer_check quiet", false},
		{Options{Append: "a=b"}, "console=ttyS0 panic=-1 no_timer_check quiet a=b", false},
		{Options{Cmdline: "console=ttyS0 x", Append: "a=b"}, "console=ttyS0 x a=b", false},
		{Options{Cmdline: "c", Machine: MachineMicrovm, Accel: AccelTCG, Append: "a=b"}, "c tsc_early_khz=", true},
		{Options{Cmdline: "c", Machine: MachineMicrovm, Accel: AccelKVM}, "c", false},
	} {
		got := kernelCmdline(c.o)
		if !strings.HasPrefix(got, c.want) || strings.Contains(got, "tsc_early_khz") != c.wantTSC {
			t.Errorf("kernelCmdline(%+v) = %q, want it to start with %q (tsc_early_khz: %t)", c.o, got, c.want, c.wantTSC)
		}
		if c.o.Append != "" && !strings.HasSuffix(got, " "+c.o.Append) {
			t.Errorf("kernelCmdline(%+v) = %q: Append is not last", c.o, got)
		}
	}
}

func TestMicrovmMachineArgs(t *testing.T) {
	o := Options{Route: RouteVhostUser, MemoryMB: 64, Dir: "/d", Machine: MachineMicrovm}
	args := strings.Join(machineArgs(o), " ")
	for _, want := range []string{"-M microvm,memory-backend=mem,acpi=on", "vhost-user-vsock-device,chardev=vsock0"} {
		if !strings.Contains(args, want) {
			t.Errorf("microvm args lack %q: %s", want, args)
		}
	}
	o.Machine = ""
	args = strings.Join(machineArgs(o), " ")
	if !strings.Contains(args, "-M q35,memory-backend=mem") || !strings.Contains(args, "vhost-user-vsock-pci") {
		t.Errorf("default args: %s", args)
	}
	if err := checkMachine("pc"); err == nil || !strings.Contains(err.Error(), `unknown machine "pc"`) {
		t.Errorf("checkMachine(pc) = %v", err)
	}
}
