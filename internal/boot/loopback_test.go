package boot

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// loRecOps adds the loopback operation to the recorder, so that the step's
// place in the sequence and its failure policy can be checked.
type loRecOps struct {
	*recOps
	err error
}

func (o loRecOps) LoopbackUp() error {
	if err := o.record("loopback up"); err != nil {
		return err
	}
	return o.err
}

func TestLoopbackStep(t *testing.T) {
	tests := []struct {
		name    string
		enabled bool
		err     error
		calls   int
		log     string
	}{
		{"up", true, nil, 1, "loopback lo up with 127.0.0.1/8 and ::1"},
		{"disabled", false, nil, 0, "loopback disabled"},
		{"failure goes on", true, errors.New("no such device"), 1, "continuing without it"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ops := loRecOps{recOps: enclaveOps(), err: tc.err}
			cfg := enclaveConfig()
			cfg.Loopback = tc.enabled
			var log logRecorder
			res, err := Run(context.Background(), cfg, ops, log.logf)
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if n := ops.count("loopback up"); n != tc.calls {
				t.Fatalf("loopback up called %d times, want %d", n, tc.calls)
			}
			if !log.has(tc.log) {
				t.Errorf("log lacks %q: %q", tc.log, log.lines)
			}
			if !log.has("boot: done") {
				t.Errorf("boot did not finish after the loopback step: %q", log.lines)
			}
			if tc.calls == 1 {
				// lo comes up after the root switch, last before services.
				if i, j := ops.index("chroot .", 0), ops.index("loopback up", 0); j < i {
					t.Errorf("loopback (call %d) before the root switch (call %d): %q", j, i, ops.calls)
				}
				last := res.Steps[len(res.Steps)-1]
				if last.Name != "loopback" || !errors.Is(last.Err, tc.err) {
					t.Errorf("last step %v, want loopback with %v", last, tc.err)
				}
			}
		})
	}
}

// TestLoopbackUpInNetNamespace brings up lo for real in a new network
// namespace, where it starts down and without addresses.
func TestLoopbackUpInNetNamespace(t *testing.T) {
	done := make(chan error, 1)
	go func() {
		// The thread stays locked and ends with the goroutine, so its
		// namespace never leaks into other goroutines.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			done <- errSkip{err}
			return
		}
		if err := loopbackUp(LoopbackName); err != nil {
			done <- err
			return
		}
		// A second call finds everything in place.
		if err := loopbackUp(LoopbackName); err != nil {
			done <- err
			return
		}
		has4, has6, err := loopbackAddrs(LoopbackName)
		switch {
		case err != nil:
			done <- err
		case !has4 || !has6:
			done <- errors.New("lo lacks 127.0.0.1 or ::1 after LoopbackUp")
		default:
			done <- nil
		}
	}()
	err := <-done
	var skip errSkip
	if errors.As(err, &skip) {
		t.Skipf("needs CAP_SYS_ADMIN for a network namespace: %v", skip.err)
	}
	if err != nil {
		t.Fatal(err)
	}
}

type errSkip struct{ err error }

func (e errSkip) Error() string { return "skip: " + e.err.Error() }

func TestLoopbackUpNoSuchInterface(t *testing.T) {
	err := loopbackUp("nosuchif0")
	if err == nil || !strings.Contains(err.Error(), "nosuchif0") {
		t.Fatalf("err = %v, want one naming the interface", err)
	}
}
