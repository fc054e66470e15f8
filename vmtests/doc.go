// Package vmtests boots the real init as PID 1 in QEMU, started through
// hugelgupf/vmtest's qemu package with the enclave simulator's parts (a
// Debian kernel, our vhost-user vsock device and the parent's heartbeat
// listener, see internal/enclavesim), and checks what it does from the
// host: over vsock
// with the control protocol and the real initctl binary, through the
// heartbeat listener, and on the serial console.
//
// The package has only tests; docs/testing.md explains how to run, add and
// debug them.
package vmtests
