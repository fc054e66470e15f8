// Command initctl controls init over its Unix socket, AF_VSOCK, or hybrid
// vsock (a Firecracker-style Unix socket in front of a VM's vsock device).
// Its commands, flags and output follow the reference enclave-init's
// initctl; see docs/initctl.md.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/nitroinit/nitroinit/internal/control/client"
)

// Exit codes, documented in docs/initctl.md.
const (
	exitOK          = 0
	exitInitError   = 1 // init answered with an Error
	exitUsage       = 2 // bad command line or configuration
	exitUnreachable = 3 // init could not be reached
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// initError is an Error response from init; it has been printed already.
type initError struct{ msg string }

func (e *initError) Error() string { return e.msg }

// usageError is a command-line or configuration problem.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

// run executes initctl with args and returns the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	a := newApp(stdout, stderr)
	root := a.rootCmd()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.Execute()
	if err == nil {
		return exitOK
	}
	var ie *initError
	var ue *client.UnreachableError
	var uerr *usageError
	switch {
	case errors.As(err, &ie):
		return exitInitError
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "✗ Error: %v\n", ue)
		return exitUnreachable
	case errors.As(err, &uerr):
		fmt.Fprintf(stderr, "✗ Error: %v\n", uerr.err)
		return exitUsage
	default:
		// Everything else comes from cobra's argument and flag checks.
		fmt.Fprintf(stderr, "✗ Error: %v\nRun 'initctl --help' for usage.\n", err)
		return exitUsage
	}
}
