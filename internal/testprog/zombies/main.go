// Command zombies creates a storm of orphans for tests and benchmarks: it
// forks N children that all block on one pipe, then exits. Its exit closes
// the pipe, so every child wakes and exits at the same moment, as orphans of
// whoever reaps for this process (PID 1 or a subreaper).
//
// The children are raw clones that only ever make raw system calls, so each
// costs a few pages rather than a whole Go runtime.
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"syscall"
	"unsafe"
)

func main() {
	n := flag.Int("n", 10000, "number of orphans to create")
	flag.Parse()
	var p [2]int
	if err := syscall.Pipe2(p[:], syscall.O_CLOEXEC); err != nil {
		fmt.Fprintln(os.Stderr, "zombies: pipe:", err)
		os.Exit(1)
	}
	made, err := fork(*n, p[0], p[1])
	fmt.Printf("zombies: forked %d children\n", made)
	if err != nil {
		fmt.Fprintln(os.Stderr, "zombies:", err)
		os.Exit(1)
	}
	// Exiting closes p[1], the last write end: all children see EOF.
}

func fork(n, rfd, wfd int) (int, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	// Block every signal while forking, as the runtime does, so that no Go
	// signal handler ever runs in a child.
	all, old := ^uint64(0), uint64(0)
	syscall.RawSyscall6(syscall.SYS_RT_SIGPROCMASK, 2 /* SIG_SETMASK */, uintptr(unsafe.Pointer(&all)), uintptr(unsafe.Pointer(&old)), 8, 0, 0)
	defer syscall.RawSyscall6(syscall.SYS_RT_SIGPROCMASK, 2, uintptr(unsafe.Pointer(&old)), 0, 8, 0, 0)
	var buf [1]byte
	for i := 0; i < n; i++ {
		pid, _, errno := syscall.RawSyscall6(syscall.SYS_CLONE, uintptr(syscall.SIGCHLD), 0, 0, 0, 0, 0)
		if errno != 0 {
			return i, fmt.Errorf("clone after %d children: %v", i, errno)
		}
		if pid == 0 {
			// Child: raw system calls only.
			syscall.RawSyscall(syscall.SYS_CLOSE, uintptr(wfd), 0, 0)
			syscall.RawSyscall(syscall.SYS_READ, uintptr(rfd), uintptr(unsafe.Pointer(&buf[0])), 1)
			syscall.RawSyscall(syscall.SYS_EXIT_GROUP, 0, 0, 0)
		}
	}
	return n, nil
}
