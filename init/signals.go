package main

import (
	"syscall"

	"github.com/nitroinit/nitroinit/internal/sigdisp"
)

// resetInheritedIgnores gives signals 32 and 33 their default disposition
// if init was started with them ignored. The Go runtime leaves those two
// alone (libc uses them internally), so an ignore inherited from whatever
// started init would otherwise pass on to every service; the runtime
// resets the others in children itself, and os/signal.Notify takes over
// SIGHUP and SIGINT.
func resetInheritedIgnores() {
	for _, sig := range []syscall.Signal{32, 33} {
		if ign, err := sigdisp.Ignored(sig); err == nil && ign {
			sigdisp.Default(sig)
		}
	}
}
