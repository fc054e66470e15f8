// Package nsmtest runs the independent attestation-document verifier
// (internal/nsm/testdata/verify.py: Debian's python3-cbor2 and
// python3-cryptography, no code shared with our signer) for tests.
package nsmtest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// Python is Debian's interpreter, which has the modules (ci/install-deps.sh);
// a pyenv python3 earlier on PATH may not.
const Python = "/usr/bin/python3"

// Verify checks doc against the PEM root with verify.py and returns its JSON
// view of the payload (bytes as hex, PCRs keyed by index), or the
// verifier's reason for rejecting it. It skips the test when the verifier's
// modules are missing, except in CI, where it fails.
func Verify(t testing.TB, rootPEM, doc []byte) (map[string]any, error) {
	t.Helper()
	if err := exec.Command(Python, "-c", "import cbor2, cryptography").Run(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s with cbor2 and cryptography is missing in CI (ci/install-deps.sh): %v", Python, err)
		}
		t.Skipf("needs %s with python3-cbor2 and python3-cryptography (apt-get install python3-cbor2 python3-cryptography): %v", Python, err)
	}
	_, self, _, _ := runtime.Caller(0)
	script := filepath.Join(filepath.Dir(self), "..", "testdata", "verify.py")
	dir := t.TempDir()
	root, docf := filepath.Join(dir, "root.pem"), filepath.Join(dir, "doc.cose")
	if err := os.WriteFile(root, rootPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(docf, doc, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(Python, script, root, docf)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%v: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	var v map[string]any
	return v, json.Unmarshal(out, &v)
}
