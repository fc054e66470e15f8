package boot

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestReadAWSCommandParsing(t *testing.T) {
	tests := []struct {
		name     string
		cmd, env *string // nil: file absent
		wantArgv []string
		wantEnv  []string
		wantOK   bool
		wantErr  string // substring; "" = no error
	}{
		{name: "neither file"},
		{name: "cmd with trailing newline", cmd: ptr("/bin/sh\n-c\necho hi\n"), wantArgv: []string{"/bin/sh", "-c", "echo hi"}, wantOK: true},
		{name: "cmd without trailing newline", cmd: ptr("/app\n--x"), wantArgv: []string{"/app", "--x"}, wantOK: true},
		{name: "empty argument kept", cmd: ptr("/bin/sh\n-c\n\n"), wantArgv: []string{"/bin/sh", "-c", ""}, wantOK: true},
		{name: "spaces kept inside an argument", cmd: ptr("/app\n  two words \n"), wantArgv: []string{"/app", "  two words "}, wantOK: true},
		{name: "empty cmd", cmd: ptr(""), wantErr: "is empty"},
		{name: "empty program name", cmd: ptr("\n/app\n"), wantErr: "cmd:1: empty program name"},
		{name: "NUL in argument", cmd: ptr("/app\na\x00b\n"), wantErr: "cmd:2:"},
		{
			name: "env with empty lines", cmd: ptr("/app\n"), env: ptr("\nPATH=/bin:/usr/bin\n\nEMPTY=\nEQ=a=b\n"),
			wantArgv: []string{"/app"}, wantEnv: []string{"PATH=/bin:/usr/bin", "EMPTY=", "EQ=a=b"}, wantOK: true,
		},
		{name: "empty env file", cmd: ptr("/app\n"), env: ptr(""), wantArgv: []string{"/app"}, wantOK: true},
		{name: "env line without =", cmd: ptr("/app\n"), env: ptr("A=1\nBROKEN\n"), wantErr: "env:2: \"BROKEN\" is not KEY=VALUE"},
		{name: "env empty key", cmd: ptr("/app\n"), env: ptr("=value\n"), wantErr: "env:1: \"=value\" has an empty variable name"},
		{name: "env without cmd", env: ptr("A=1\n"), wantErr: "does not"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			if tc.cmd != nil {
				writeFile(t, filepath.Join(root, "cmd"), *tc.cmd)
			}
			if tc.env != nil {
				writeFile(t, filepath.Join(root, "env"), *tc.env)
			}
			argv, env, ok, err := ReadAWSCommand(root)
			if tc.wantErr == "" && err != nil {
				t.Fatalf("ReadAWSCommand: %v", err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("ReadAWSCommand error = %v, want one containing %q", err, tc.wantErr)
			}
			if ok != tc.wantOK || !slices.Equal(argv, tc.wantArgv) || !slices.Equal(env, tc.wantEnv) {
				t.Errorf("got argv %q env %q ok %v, want %q %q %v", argv, env, ok, tc.wantArgv, tc.wantEnv, tc.wantOK)
			}
			// Both files are single-use: gone afterwards, parsed or not.
			for _, name := range []string{"cmd", "env"} {
				if _, err := os.Lstat(filepath.Join(root, name)); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("/%s still present after ReadAWSCommand (stat error %v)", name, err)
				}
			}
		})
	}
}

// TestReadAWSCommandUnlinkFailure: a command that parsed stays usable when
// the files cannot be removed, and the error says so.
func TestReadAWSCommandUnlinkFailure(t *testing.T) {
	ops := newRecOps()
	ops.files["/cmd"] = []byte("/app\n")
	ops.errs["unlink /cmd"] = &fs.PathError{Op: "remove", Path: "/cmd", Err: unix.EROFS}
	argv, _, ok, err := readAWSCommand(ops, "/")
	if !ok || !slices.Equal(argv, []string{"/app"}) {
		t.Errorf("argv %q ok %v, want [/app] true", argv, ok)
	}
	if !errors.Is(err, unix.EROFS) {
		t.Errorf("error %v, want the EROFS of the failed remove", err)
	}
}

// TestReadAWSCommandUnreadable uses a directory named cmd, which exists but
// cannot be read as a file.
func TestReadAWSCommandUnreadable(t *testing.T) {
	root := t.TempDir()
	if err := os.Mkdir(filepath.Join(root, "cmd"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "cmd", "x"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	_, _, ok, err := ReadAWSCommand(root)
	if ok || err == nil || !strings.Contains(err.Error(), "read "+filepath.Join(root, "cmd")) {
		t.Errorf("ok %v err %v, want not ok and a read error naming the file", ok, err)
	}
}

func ptr(s string) *string { return &s }

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}
