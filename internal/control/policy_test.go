package control_test

import (
	"context"
	"encoding/json"
	"fmt"
	. "github.com/nitroinit/nitroinit/internal/control"
	"github.com/nitroinit/nitroinit/internal/control/controltest"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nitroinit/nitroinit/internal/config"
	"github.com/nitroinit/nitroinit/internal/wire"
)

func TestPolicyCheck(t *testing.T) {
	unix := func(uid, gid uint32, groups ...uint32) Peer {
		return Peer{Transport: TransportUnix, UID: uid, GID: gid, Groups: groups}
	}
	vs := func(cid uint32) Peer { return Peer{Transport: TransportVsock, CID: cid, CIDKnown: true} }
	tests := []struct {
		name    string
		policy  Policy
		peer    Peer
		kind    string
		wantErr string
	}{
		{"root may exec", Policy{}, unix(0, 0), wire.KindSystemShutdown, ""},
		{"unlisted uid refused read", Policy{}, unix(1000, 1000), wire.KindPing, "add it to control.permissions.unix.uids"},
		{"listed uid reads", Policy{UnixUIDs: []uint32{1000}}, unix(1000, 1000), wire.KindListServices, ""},
		{"listed uid only reads by default", Policy{UnixUIDs: []uint32{1000}}, unix(1000, 1000), wire.KindServiceStart, `"manage" requests over the unix socket`},
		{"listed uid no exec by default", Policy{UnixUIDs: []uint32{1000}}, unix(1000, 1000), wire.KindProcessStart, `"exec" requests over the unix socket need control.permissions.unix.classes to include exec`},
		{"listed uid read only", Policy{UnixUIDs: []uint32{1000}, UnixClasses: []Class{ClassRead}}, unix(1000, 1000), wire.KindServiceStop, `"manage" requests over the unix socket`},
		{"primary gid listed", Policy{UnixGIDs: []uint32{50}}, unix(1000, 50), wire.KindPing, ""},
		{"supplementary gid listed", Policy{UnixGIDs: []uint32{50}}, unix(1000, 1000, 27, 50), wire.KindPing, ""},
		{"manage switched on", Policy{UnixUIDs: []uint32{1000}, UnixClasses: []Class{ClassRead, ClassManage}}, unix(1000, 1000), wire.KindServiceStart, ""},
		{"exec switched on", Policy{UnixUIDs: []uint32{1000}, UnixClasses: config.AllClasses}, unix(1000, 1000), wire.KindProcessKill, ""},
		{"vsock any cid reads", Policy{}, vs(3), wire.KindProcessList, ""},
		{"vsock manage by default", Policy{}, vs(3), wire.KindServiceLogsStream, ""},
		{"vsock exec off by default", Policy{}, vs(3), wire.KindSystemReboot, `"exec" requests over vsock need control.permissions.vsock.classes to include exec in /etc/init.yaml`},
		{"vsock cid not listed", Policy{VsockCIDs: []uint32{3}}, vs(7), wire.KindPing, "vsock peer CID 7 is not in control.permissions.vsock.cids"},
		{"vsock unknown cid with list", Policy{VsockCIDs: []uint32{3}}, Peer{Transport: TransportVsock}, wire.KindPing, "CID unknown"},
		{"vsock listed cid", Policy{VsockCIDs: []uint32{3}, VsockClasses: config.AllClasses}, vs(3), wire.KindProcessStart, ""},
		{"vsock no classes", Policy{VsockClasses: []Class{}}, vs(3), wire.KindPing, `"read" requests over vsock`},
		{"unknown kind is exec", Policy{}, vs(3), "SomethingNew", `"exec"`},
	}
	for _, tc := range tests {
		err := tc.policy.Check(tc.peer, wire.Request{Kind: tc.kind}, "/etc/init.yaml")
		if tc.wantErr == "" {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%s: err %v, want containing %q", tc.name, err, tc.wantErr)
		}
	}
}

func TestPolicyInfo(t *testing.T) {
	p := Policy{UnixUIDs: []uint32{1000}, VsockCIDs: []uint32{3}, VsockClasses: []Class{ClassRead}}
	info := p.Info(Peer{Transport: TransportVsock, CID: 3, CIDKnown: true})
	if !slices.Equal(info.UnixClasses, []string{"read"}) || !slices.Equal(info.VsockClasses, []string{"read"}) || !slices.Equal(info.Caller, []string{"read"}) || info.UnixGIDs == nil {
		t.Errorf("Info = %+v", info)
	}
}

// TestDefaultClassesAreOneAndLeastPrivilege states the defaults, which
// internal/config and internal/control once disagreed on: a local user
// listed in init.yaml without classes may only look; the parent over vsock
// may look and manage services; exec is never a default. The policy built
// from init.yaml's defaults and the one built from an empty Policy agree.
func TestDefaultClassesAreOneAndLeastPrivilege(t *testing.T) {
	user := Peer{Transport: TransportUnix, UID: 1000, GID: 1000}
	parent := Peer{Transport: TransportVsock, CID: 3, CIDKnown: true}
	fromConfig := NewPolicy(config.DefaultInit().Control.Permissions)
	fromConfig.UnixUIDs = []uint32{1000}
	empty := Policy{UnixUIDs: []uint32{1000}}
	for _, p := range []Policy{fromConfig, empty} {
		if got := p.Granted(user); !slices.Equal(got, []Class{ClassRead}) {
			t.Errorf("listed local user gets %v, want [read]", got)
		}
		if got := p.Granted(parent); !slices.Equal(got, []Class{ClassRead, ClassManage}) {
			t.Errorf("vsock parent gets %v, want [read manage]", got)
		}
	}
}

// TestAdhocLogsNeedExec: the output of ps start/run is readable only by
// those who may start such processes.
func TestAdhocLogsNeedExec(t *testing.T) {
	parent := Peer{Transport: TransportVsock, CID: 3, CIDKnown: true}
	for _, kind := range []string{wire.KindServiceLogs, wire.KindServiceLogsFollow, wire.KindServiceLogsClear, wire.KindServiceLogsStream} {
		if err := (Policy{}).Check(parent, wire.Request{Kind: kind, Name: "adhoc"}, "/etc/init.yaml"); err == nil || !strings.Contains(err.Error(), `"exec"`) {
			t.Errorf("%s of adhoc by a read/manage peer: err = %v, want exec needed", kind, err)
		}
		if err := (Policy{VsockClasses: config.AllClasses}).Check(parent, wire.Request{Kind: kind, Name: "adhoc"}, "/etc/init.yaml"); err != nil {
			t.Errorf("%s of adhoc by an exec peer: %v", kind, err)
		}
	}
}

// helperEnv makes the test binary act as a plain client (see TestMain).
const helperEnv = "CONTROL_TEST_CLIENT"

func TestMain(m *testing.M) {
	if spec := os.Getenv(helperEnv); spec != "" {
		os.Exit(runHelperClient(spec))
	}
	os.Exit(m.Run())
}

// runHelperClient sends one request, given as "socket|json", and prints the
// response. It runs in a child process under another uid.
func runHelperClient(spec string) int {
	path, reqJSON, _ := strings.Cut(spec, "|")
	var req wire.Request
	if err := json.Unmarshal([]byte(reqJSON), &req); err != nil {
		fmt.Println("BADREQ", err)
		return 2
	}
	resp, err := doAnswer(path, req)
	if err != nil {
		fmt.Println("UNREACHABLE", err)
		return 3
	}
	b, _ := json.Marshal(resp)
	fmt.Println(string(b))
	return 0
}

// asNobody runs this test binary as uid/gid 65534 to send req to path.
func asNobody(t *testing.T, bin, path string, req wire.Request, groups ...uint32) string {
	t.Helper()
	b, _ := json.Marshal(req)
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), helperEnv+"="+path+"|"+string(b))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: groups}}
	out, _ := cmd.CombinedOutput()
	return strings.TrimSpace(string(out))
}

// TestNonRootPeer runs real clients as uid 65534 against sockets with
// different policies.
func TestNonRootPeer(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run a child as another uid")
	}
	// The child must be able to reach the binary and the socket: copy the
	// test binary into a world-readable directory.
	dir := t.TempDir()
	for d := dir; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "client")
	src, _ := os.Open(self)
	dst, _ := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	io.Copy(dst, src)
	src.Close()
	dst.Close()

	serve := func(p Policy) (string, *controltest.Handler) {
		be := controltest.New()
		srv := NewServer(Config{Handler: be, Policy: p, IOTimeout: 2 * time.Second})
		sock := filepath.Join(dir, fmt.Sprintf("s%d", time.Now().UnixNano()), "init.sock")
		l, err := ListenUnix(sock, len(p.UnixUIDs)+len(p.UnixGIDs) > 0)
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve(context.Background(), l, TransportUnix)
		t.Cleanup(func() { srv.Close() })
		return sock, be
	}

	// Default policy: the socket is 0600, so nobody cannot even connect.
	sock, _ := serve(Policy{})
	if out := asNobody(t, bin, sock, wire.Request{Kind: wire.KindPing}); !strings.HasPrefix(out, "UNREACHABLE") || !strings.Contains(out, "permission denied") {
		t.Errorf("nobody on a 0600 socket: %s", out)
	}

	// Listed read-only: reads work, the rest is refused with the key named.
	sock, be := serve(Policy{UnixUIDs: []uint32{65534}, UnixClasses: []Class{ClassRead}})
	tests := []struct {
		req  wire.Request
		want string
	}{
		{wire.Request{Kind: wire.KindPing}, `"Pong"`},
		{wire.Request{Kind: wire.KindListServices}, `{"ServiceList"`},
		{wire.Request{Kind: wire.KindServiceStart, Name: "webapp"}, `permission denied: \"manage\" requests over the unix socket need control.permissions.unix.classes to include manage`},
		{wire.Request{Kind: wire.KindProcessKill, PID: 500, Signal: 9}, `permission denied: \"exec\" requests`},
		{wire.Request{Kind: wire.KindSystemShutdown}, `permission denied: \"exec\" requests`},
	}
	for _, tc := range tests {
		if out := asNobody(t, bin, sock, tc.req); !strings.Contains(out, tc.want) {
			t.Errorf("nobody %s: %s, want containing %s", tc.req.Kind, out, tc.want)
		}
	}
	for _, c := range be.Calls() {
		t.Errorf("denied request reached the handler: %s", c)
	}

	// Another uid is listed: nobody connects (0666) but is refused.
	sock, _ = serve(Policy{UnixUIDs: []uint32{1000}})
	if out := asNobody(t, bin, sock, wire.Request{Kind: wire.KindPing}); !strings.Contains(out, "uid 65534 (gid 65534) may not use the control socket") {
		t.Errorf("unlisted nobody: %s", out)
	}

	// A listed supplementary group admits the peer (SO_PEERGROUPS); the
	// same peer without the group is refused.
	sock, _ = serve(Policy{UnixGIDs: []uint32{4242}, UnixClasses: []Class{ClassRead}})
	if out := asNobody(t, bin, sock, wire.Request{Kind: wire.KindPing}, 4242); !strings.Contains(out, `"Pong"`) {
		t.Errorf("nobody with supplementary group 4242: %s", out)
	}
	if out := asNobody(t, bin, sock, wire.Request{Kind: wire.KindPing}); strings.Contains(out, `"Pong"`) {
		t.Errorf("nobody without group 4242 was let in: %s", out)
	}
}
