package main

// role runs this program as one of its helpers when the environment asks
// for it, and reports whether it did. Helpers are this same binary so that
// the benchmark needs nothing built but itself and the test programs.
func role() bool {
	return false
}
