package enclavesim

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nitroinit/nitroinit/internal/wait"
)

// simGuestPort is simguest.ServePort.
const simGuestPort = 5000

func startGuest(t *testing.T, k Kernel, initrd, appendArgs string, timeout time.Duration) *VM {
	t.Helper()
	// Start shows nothing until it returns: one stall interval.
	ctx, cancel := wait.Limits{}.Context(context.Background(), "the simulator to start")
	defer cancel()
	vm, err := Start(ctx, Options{
		Initrd:  initrd,
		Append:  appendArgs,
		Console: LineWriter(t.Logf),
		Logf:    t.Logf,
		Timeout: timeout,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Stop() })
	return vm
}

// command sends one line to the guest's test server on c (a wait.Conn, so
// that a slow guest is waited for while it answers) and returns the reply
// read through r.
func command(t *testing.T, vm *VM, c *wait.Conn, r *bufio.Reader, line string) string {
	t.Helper()
	if _, err := fmt.Fprintln(c, line); err != nil {
		t.Fatalf("sending %q: %v; device %+v; console:\n%s", line, err, vm.Stats(), vm.ConsoleTail(10))
	}
	reply, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("reply to %q: %v; device %+v; console:\n%s", line, err, vm.Stats(), vm.ConsoleTail(10))
	}
	return strings.TrimSuffix(reply, "\n")
}

// TestBootHeartbeatConnectionsPowerOff is the simulator's end-to-end check:
// the guest's heartbeat reaches the parent's listener, host connections to
// the guest work, guest connections to the host work, and each way of
// ending is told apart.
func TestBootHeartbeatConnectionsPowerOff(t *testing.T) {
	k := needSim(t)
	initrd := guestImage(t, k)
	tests := []struct {
		end  string // the command that ends the guest; "" means vm.Stop()
		want ExitKind
	}{
		{"poweroff", ExitPowerOff},
		{"reboot", ExitReboot},
		{"panic", ExitPanic},
		{"", ExitStopped},
	}
	for _, tc := range tests {
		t.Run(tc.want.String(), func(t *testing.T) {
			vm := startGuest(t, k, initrd, "simguest_hostcid=3", vmLifetime)
			if vm.HostCID() != 3 || vm.HybridSocket() == "" {
				t.Fatalf("vhost-user route: host CID %d, hybrid socket %q", vm.HostCID(), vm.HybridSocket())
			}
			ctx := guestCtx(t, vm, "the guest")
			hb, err := vm.Heartbeat(ctx)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("heartbeat %s after QEMU start", hb.Sub(vm.Started()).Round(time.Millisecond))

			dc, err := vm.Dial(ctx, simGuestPort)
			if err != nil {
				t.Fatalf("%v; console:\n%s", err, vm.ConsoleTail(10))
			}
			defer dc.Close()
			c := wait.NewConn(dc)
			r := bufio.NewReader(c)
			if got := command(t, vm, c, r, "echo hello through hybrid vsock"); got != "hello through hybrid vsock" {
				t.Errorf("echo: %q", got)
			}

			// Guest to host: the guest dials host port 7000.
			ln, err := vm.ListenHost(7000)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go func() {
				hc, err := ln.Accept()
				if err != nil {
					return
				}
				defer hc.Close()
				line, _ := bufio.NewReader(hc).ReadString('\n')
				fmt.Fprintf(hc, "host got %s", line)
			}()
			if got := command(t, vm, c, r, "dial 7000 ping"); got != "host got ping" {
				t.Errorf("guest to host: %q", got)
			}

			var exit Exit
			if tc.end == "" {
				exit = vm.Stop()
			} else {
				fmt.Fprintln(c, tc.end)
				if exit, err = vm.Wait(ctx); err != nil {
					t.Fatal(err)
				}
			}
			if exit.Kind != tc.want {
				t.Errorf("exit %s, want %s; console:\n%s", exit, tc.want, vm.ConsoleTail(10))
			}
			if b, err := os.ReadFile(ConsoleLog(vm.Dir())); err == nil && !strings.Contains(string(b), "simguest: heartbeat ok") {
				t.Errorf("console.log lacks the guest's heartbeat line")
			}
			if st := vm.Stats(); st.HostConnections == 0 || st.GuestConnections < 2 {
				t.Errorf("device stats %+v: want host and guest connections counted", st)
			}
		})
	}
}

// TestTimeoutKills checks that Options.Timeout ends a guest that never
// powers off on its own.
func TestTimeoutKills(t *testing.T) {
	k := needSim(t)
	vm := startGuest(t, k, guestImage(t, k), "", 500*time.Millisecond)
	exit, err := vm.Wait(guestCtx(t, vm, "the guest to be killed"))
	if err != nil {
		t.Fatal(err)
	}
	if exit.Kind != ExitTimeout {
		t.Errorf("exit %s, want timeout", exit)
	}
}
