package main

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/nitroinit/nitroinit/internal/forward/forwardtest"
	"github.com/nitroinit/nitroinit/internal/wait"
)

func TestForwardBadInput(t *testing.T) {
	dir := t.TempDir()
	allow := filepath.Join(dir, "allow.yaml")
	os.WriteFile(allow, []byte("allowlist:\n- {address: example.com, port: 443}\n- {address: example.org, port: https}\n"), 0o644)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	tests := []struct {
		args []string
		code int
		want []string
	}{
		{[]string{"forward", "--listen", "tcp:127.0.0.1:x", "--connect", "vsock:3:1"}, 2, []string{`--listen: "tcp:127.0.0.1:x": bad port "x"`}},
		{[]string{"forward", "--listen", "vsock:80", "--connect", "vsock:three:1"}, 2, []string{`--connect: "vsock:three:1": bad CID`}},
		{[]string{"forward", "--listen", "vsock:80"}, 2, []string{"--connect ENDPOINT, or --allow FILE"}},
		{[]string{"forward", "--listen", "vsock:80", "--allow", allow}, 2, []string{allow + `:3: "https": not a TCP port`}},
		{[]string{"forward", "--listen", "vsock:80", "--allow", filepath.Join(dir, "none.yaml")}, 2, []string{"none.yaml", "no such file"}},
		{[]string{"forward", "--listen", "tcp:" + busy.Addr().String(), "--connect", "vsock:3:1"}, 1, []string{"listen on tcp:" + busy.Addr().String(), "address already in use"}},
		{[]string{"connect", "vsock:x"}, 2, []string{`connect: "vsock:x": bad port`}},
		{[]string{"connect", "--protocol", "unix", "5000"}, 2, []string{"give --vsock-cid, --vsock-uds or an ENDPOINT"}},
	}
	for _, tc := range tests {
		cmd := exec.Command(initctlBin, tc.args...)
		cmd.Env = append(os.Environ(), "INITCTL_CONFIG="+filepath.Join(dir, "absent.yaml"))
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		if code != tc.code {
			t.Errorf("initctl %q: exit %d, want %d; stderr:\n%s", tc.args, code, tc.code, stderr.String())
		}
		for _, w := range tc.want {
			if !strings.Contains(stderr.String(), w) {
				t.Errorf("initctl %q: stderr lacks %q:\n%s", tc.args, w, stderr.String())
			}
		}
	}
}

// TestForwardAndConnect runs the real initctl: connect's stdin goes over TCP
// to a forwarder, through the hybrid CONNECT handshake to the "guest", and
// back to connect's stdout; the forwarder stops cleanly on SIGTERM.
func TestForwardAndConnect(t *testing.T) {
	hybrid := forwardtest.HybridDevice(t, forwardtest.HybridEcho)
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := free.Addr().String()
	free.Close()
	fwd := exec.Command(initctlBin, "forward", "--listen", "tcp:"+addr, "--connect", "hvsock:"+hybrid+":8080")
	var flog wait.Buffer
	fwd.Stderr = &flog
	if err := fwd.Start(); err != nil {
		t.Fatal(err)
	}
	defer fwd.Process.Kill()
	wait.Limits{Progress: flog.Len}.For(t, "the forwarder to listen on "+addr, func() (bool, string) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return false, err.Error() + "\n" + flog.String()
		}
		c.Close()
		return true, ""
	})
	for _, ep := range []string{"tcp:" + addr, "hvsock:" + hybrid + ":7"} {
		cmd := exec.Command(initctlBin, "connect", ep)
		cmd.Stdin = strings.NewReader("hello through the forwarder\n")
		out, err := cmd.CombinedOutput()
		if err != nil || string(out) != "hello through the forwarder\n" {
			t.Errorf("connect %s: %q, %v", ep, out, err)
		}
	}
	// A bare port goes to the enclave that --vsock-uds names.
	cmd := exec.Command(initctlBin, "--vsock-uds", hybrid, "connect", "9")
	cmd.Stdin = strings.NewReader("by port")
	if out, err := cmd.CombinedOutput(); err != nil || string(out) != "by port" {
		t.Errorf("connect by port: %q, %v", out, err)
	}
	fwd.Process.Signal(syscall.SIGTERM)
	if err := fwd.Wait(); err != nil {
		t.Errorf("forwarder after SIGTERM: %v\n%s", err, flog.String())
	}
	if !strings.Contains(flog.String(), "forwarding tcp:"+addr+" -> hvsock:"+hybrid+":8080") {
		t.Errorf("no start line:\n%s", flog.String())
	}
}
