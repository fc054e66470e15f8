package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/nitroinit/nitroinit/internal/enclavesim"
	"github.com/nitroinit/nitroinit/internal/forward"
)

// fwdFlags are boot's --ingress, --egress and --allow: the parent side of the
// enclave's forwarders, run by the simulator itself over whichever vsock
// route the VM has.
type fwdFlags struct {
	ingress, egress []string
	allow           string
}

func (f *fwdFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringArrayVar(&f.ingress, "ingress", nil, "HOST:PORT=GUEST_PORT: accept TCP on HOST:PORT and connect to the guest's vsock GUEST_PORT (repeatable)")
	fl.StringArrayVar(&f.egress, "egress", nil, "PORT or PORT=HOST:PORT: accept the guest's vsock connections to host PORT and connect them to HOST:PORT, or to the target each names, on --allow (repeatable)")
	fl.StringVar(&f.allow, "allow", "", "allow-list (vsock-proxy YAML) of the TCP targets --egress may connect to")
}

// fwdPlan is one checked forwarder, waiting for the VM.
type fwdPlan struct {
	flag      string // "--ingress 127.0.0.1:8080=8080", for messages
	listenTCP string // ingress: where to listen
	guestPort uint32 // ingress: where to connect
	hostPort  uint32 // egress: where the guest connects
	cfg       forward.Config
}

// plan checks every flag before the VM starts, so that a typo costs no boot.
func (f *fwdFlags) plan() ([]fwdPlan, error) {
	var allow *forward.AllowList
	if f.allow != "" {
		var err error
		if allow, err = forward.LoadAllowList(f.allow); err != nil {
			return nil, err
		}
	}
	var plans []fwdPlan
	for _, s := range f.ingress {
		where := "--ingress"
		host, port, ok := strings.Cut(s, "=")
		if !ok {
			return nil, &forward.SpecError{Where: where, Value: s, Msg: "want HOST:PORT=GUEST_PORT"}
		}
		l, err := forward.ParseEndpoint(where, "tcp:"+host)
		if err != nil {
			return nil, err
		}
		gp, err := strconv.ParseUint(port, 10, 32)
		if err != nil {
			return nil, &forward.SpecError{Where: where, Value: s, Msg: fmt.Sprintf("bad guest port %q", port)}
		}
		plans = append(plans, fwdPlan{flag: where + " " + s, listenTCP: l.Addr, guestPort: uint32(gp)})
	}
	for _, s := range f.egress {
		where := "--egress"
		port, target, fixed := strings.Cut(s, "=")
		hp, err := strconv.ParseUint(port, 10, 32)
		if err != nil {
			return nil, &forward.SpecError{Where: where, Value: s, Msg: fmt.Sprintf("bad host port %q; want PORT or PORT=HOST:PORT", port)}
		}
		p := fwdPlan{flag: where + " " + s, hostPort: uint32(hp)}
		p.cfg.Allow, p.cfg.AllowFile = allow, f.allow
		if fixed {
			e, err := forward.ParseEndpoint(where, "tcp:"+target)
			if err != nil {
				return nil, err
			}
			p.cfg.Target = &e
			if allow != nil && !allow.Allowed(e.Addr) {
				return nil, &forward.SpecError{Where: where, Value: s, Msg: "target is not on the allow-list " + f.allow}
			}
		} else if allow == nil {
			return nil, &forward.SpecError{Where: where, Value: s, Msg: "targets named per connection need --allow FILE"}
		}
		plans = append(plans, p)
	}
	return plans, nil
}

// start runs the planned forwarders until ctx ends. A listener that cannot
// be opened is an error naming the flag and the address.
func startForwarders(ctx context.Context, plans []fwdPlan, vm *enclavesim.VM, w io.Writer) error {
	logf := func(format string, args ...any) { fmt.Fprintf(w, "initramfs: "+format+"\n", args...) }
	for _, p := range plans {
		cfg := p.cfg
		cfg.Logf = logf
		var (
			l   net.Listener
			err error
		)
		if p.listenTCP != "" {
			l, err = forward.Listen(forward.Endpoint{Kind: forward.KindTCP, Addr: p.listenTCP})
			port := p.guestPort
			cfg.Target = &forward.Endpoint{Kind: forward.KindVsock, CID: vm.GuestCID(), Port: port}
			cfg.Dial = func(ctx context.Context, _ forward.Endpoint) (net.Conn, error) { return vm.DialOnce(ctx, port) }
		} else {
			l, err = vm.ListenHost(p.hostPort)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", p.flag, err)
		}
		cfg.Listener = l
		fw, err := forward.New(cfg)
		if err != nil {
			l.Close()
			return fmt.Errorf("%s: %w", p.flag, err)
		}
		logf("%s: forwarding %s", p.flag, l.Addr())
		go func() {
			if err := fw.Serve(ctx); err != nil {
				logf("%s: %v", p.flag, err)
			}
		}()
	}
	return nil
}
