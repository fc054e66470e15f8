package supervise

import (
	"context"
	"testing"

	"github.com/nitroinit/nitroinit/internal/logs"
	"github.com/nitroinit/nitroinit/internal/wait"
)

// TestCallsAfterTheLoopEnded: once Run has returned, control requests must
// fail at once rather than wait for a loop that is gone (init would never
// reach power-off while a control worker waited).
func TestCallsAfterTheLoopEnded(t *testing.T) {
	dir := t.TempDir()
	s := New(Config{ServiceDir: dir, Logs: logs.Config{Dir: dir + "/log", RingLines: 10}, RuntimeDir: dir})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan bool)
	go func() { done <- s.Run(ctx) }()
	cancel()
	wait.For(t, "Run to return after its context ended", wait.Receive(done, nil))
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		s.SystemStatus()
		s.Services()
		if _, err := s.ServiceStatus("x"); err == nil {
			t.Error("ServiceStatus of an unknown service succeeded")
		}
		if err := s.StartService("x"); err == nil {
			t.Error("StartService after shutdown succeeded")
		}
		if err := s.Reload(); err == nil {
			t.Error("Reload after shutdown succeeded")
		}
		s.Shutdown(true)
	}()
	wait.For(t, "the requests after the loop ended", wait.Receive(finished, nil))
}
