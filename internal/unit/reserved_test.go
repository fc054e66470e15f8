package unit

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestReservedNamesRefused: a service named like one of init's own logs
// would write into, read or clear that log; it is refused at load with an
// error that names the file and says what to do.
func TestReservedNamesRefused(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{InitLog, AdhocLog, "web"} {
		if err := os.WriteFile(filepath.Join(dir, name+Suffix), []byte("ExecStart = \"/bin/true\"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	entries, err := LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		reserved := e.Name == InitLog || e.Name == AdhocLog
		if reserved != (e.Err != nil) {
			t.Errorf("%s: err = %v", e.Name, e.Err)
		}
		if reserved && !strings.Contains(e.Err.Error(), "reserved") {
			t.Errorf("%s: error %q does not say the name is reserved", e.Name, e.Err)
		}
	}
}
