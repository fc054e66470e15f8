package main

import "os"

// role runs this program as one of its helpers when the environment asks
// for it, and reports whether it did. Helpers are this same binary so that
// the benchmark needs nothing built but itself and the test programs.
func role() bool {
	if p := os.Getenv(crashCounterEnv); p != "" {
		crash(p)
	}
	if p := os.Getenv(echoSockEnv); p != "" {
		echoServer(p, os.Getenv(echoSizeEnv))
		return true
	}
	return false
}
