package control_test

import (
	"context"
	"testing"

	"github.com/mdlayher/vsock"

	. "github.com/nitroinit/nitroinit/internal/control"
	"github.com/nitroinit/nitroinit/internal/control/controltest"
	"github.com/nitroinit/nitroinit/internal/wait"
	"github.com/nitroinit/nitroinit/internal/wire"
)

// TestVsockLoopback serves over real AF_VSOCK and connects through the
// local loopback CID (1), when the kernel has vsock_loopback.
func TestVsockLoopback(t *testing.T) {
	const port = 47001
	l, err := vsock.ListenContextID(vsock.Local, port, nil)
	if err != nil {
		t.Skipf("no vsock loopback here (modprobe vsock_loopback): %v", err)
	}
	l.Close()
	srv := NewServer(Config{Handler: controltest.New(), Policy: Policy{VsockCIDs: []uint32{vsock.Local}}, Logf: t.Logf})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.ServeVsock(ctx, vsock.Local, port) }()
	defer func() {
		cancel()
		<-done
		srv.Close()
	}()
	target := Target{Protocol: ProtocolVsock, VsockCID: vsock.Local, VsockPort: port}
	var r wire.Response
	// The listener may not be up yet: ask again until it answers.
	wait.For(t, "SystemStatus over vsock", func() (bool, string) {
		dctx, dcancel := wait.Limits{}.Context(context.Background(), "the answer over vsock")
		defer dcancel()
		r, err = Do(dctx, target, wire.Request{Kind: wire.KindSystemStatus})
		if err != nil {
			return false, err.Error()
		}
		return true, ""
	})
	if r.System == nil || r.System.Policy == nil || len(r.System.Policy.Caller) != 2 {
		t.Fatalf("SystemStatus over vsock: %+v", r)
	}
	r, err = Do(context.Background(), target, wire.Request{Kind: wire.KindSystemShutdown})
	if err != nil || r.Kind != wire.KindError {
		t.Errorf("shutdown over vsock with the default classes: %+v, %v", r, err)
	}
}
