package boot

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
)

// ReadAWSCommand reads the /cmd and /env files that nitro-cli puts in the
// initramfs root (root is that root, "/" before the switch) and unlinks them
// as AWS's init does. /cmd holds one argv element per line; /env one
// KEY=VALUE per line.
//
// ok is true when /cmd held a usable command. err reports a missing, empty or
// malformed file (naming file and line); it can accompany ok == true only when
// the parsed files could not be removed, and the command is then still usable.
func ReadAWSCommand(root string) (argv []string, env []string, ok bool, err error) {
	return readAWSCommand(SystemOps(), root)
}

func readAWSCommand(ops Ops, root string) (argv []string, env []string, ok bool, err error) {
	cmdPath, envPath := filepath.Join(root, "cmd"), filepath.Join(root, "env")
	cmdData, cmdErr := ops.ReadFile(cmdPath)
	envData, envErr := ops.ReadFile(envPath)
	cmdFound, envFound := !errors.Is(cmdErr, fs.ErrNotExist), !errors.Is(envErr, fs.ErrNotExist)
	if !cmdFound && !envFound {
		return nil, nil, false, nil
	}
	// Remove whatever was there whether or not it parses: the files are
	// single-use, and leaving them would re-run a stale command later.
	var rmErrs []error
	for _, p := range []struct {
		path  string
		found bool
	}{{cmdPath, cmdFound}, {envPath, envFound}} {
		if p.found {
			if err := ops.Unlink(p.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				rmErrs = append(rmErrs, fmt.Errorf("remove %s: %w", p.path, err))
			}
		}
	}
	switch {
	case !cmdFound:
		return nil, nil, false, fmt.Errorf("%s exists but %s does not; nothing to run (add %s with one argv element per line)", envPath, cmdPath, cmdPath)
	case cmdErr != nil:
		return nil, nil, false, fmt.Errorf("read %s: %w", cmdPath, cmdErr)
	case envFound && envErr != nil:
		return nil, nil, false, fmt.Errorf("read %s: %w", envPath, envErr)
	}
	if argv, err = parseCmd(cmdPath, cmdData); err != nil {
		return nil, nil, false, err
	}
	if envFound {
		if env, err = parseEnv(envPath, envData); err != nil {
			return nil, nil, false, err
		}
	}
	return argv, env, true, errors.Join(rmErrs...)
}

// lines splits like getline(3): each line ends at "\n" or at the end of the
// data, and a final "\n" does not start another line.
func lines(data []byte) []string {
	if len(data) == 0 {
		return nil
	}
	return strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
}

// parseCmd keeps empty lines after the first as empty arguments (an argument
// may legitimately be "", as in sh -c ""), but the program name must not be
// empty.
func parseCmd(path string, data []byte) ([]string, error) {
	argv := lines(data)
	if len(argv) == 0 {
		return nil, fmt.Errorf("%s is empty; it must hold the program and its arguments, one per line", path)
	}
	if argv[0] == "" {
		return nil, fmt.Errorf("%s:1: empty program name (the first line must be the program to run)", path)
	}
	for i, a := range argv {
		if strings.IndexByte(a, 0) >= 0 {
			return nil, fmt.Errorf("%s:%d: argument contains a NUL byte, which exec cannot pass", path, i+1)
		}
	}
	return argv, nil
}

// parseEnv skips empty lines and requires KEY=VALUE with a non-empty key.
func parseEnv(path string, data []byte) ([]string, error) {
	var env []string
	for i, l := range lines(data) {
		if l == "" {
			continue
		}
		k, _, found := strings.Cut(l, "=")
		switch {
		case !found:
			return nil, fmt.Errorf("%s:%d: %q is not KEY=VALUE (one variable per line)", path, i+1, l)
		case k == "":
			return nil, fmt.Errorf("%s:%d: %q has an empty variable name", path, i+1, l)
		case strings.IndexByte(l, 0) >= 0:
			return nil, fmt.Errorf("%s:%d: variable %s contains a NUL byte", path, i+1, k)
		}
		env = append(env, l)
	}
	return env, nil
}

// readAWSCommand is the boot step around ReadAWSCommand's logic.
func (b *booter) readAWSCommand() {
	b.step("read /cmd and /env", func() error {
		argv, env, ok, err := readAWSCommand(b.ops, "/")
		if ok {
			b.res.AWSCmd, b.res.AWSEnv = argv, env
			b.logf("boot: /cmd found: %q with %d variables from /env", argv, len(env))
		}
		switch {
		case err != nil && ok:
			b.logf("boot: %v (the command is still used)", err)
		case err != nil:
			b.logf("boot: ignoring /cmd and /env: %v", err)
		case !ok:
			b.logf("boot: no /cmd in the initramfs")
		}
		return err
	})
}
