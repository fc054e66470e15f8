// Package vmtests boots the real init as PID 1 in the enclave simulator
// (QEMU with a Debian kernel and our vhost-user vsock device, see
// internal/enclavesim) and checks what it does from the host: over vsock
// with the control protocol and the real initctl binary, through the
// heartbeat listener, and on the serial console.
//
// The package has only tests; docs/testing.md explains how to run, add and
// debug them.
package vmtests
