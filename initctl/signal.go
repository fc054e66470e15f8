package main

import (
	"fmt"
	"strconv"
	"strings"
)

// signalNumbers maps the standard Linux x86/arm signal names (without SIG)
// to their numbers.
var signalNumbers = map[string]int{
	"HUP": 1, "INT": 2, "QUIT": 3, "ILL": 4, "TRAP": 5, "ABRT": 6, "IOT": 6, "BUS": 7,
	"FPE": 8, "KILL": 9, "USR1": 10, "SEGV": 11, "USR2": 12, "PIPE": 13, "ALRM": 14,
	"TERM": 15, "STKFLT": 16, "CHLD": 17, "CONT": 18, "STOP": 19, "TSTP": 20,
	"TTIN": 21, "TTOU": 22, "URG": 23, "XCPU": 24, "XFSZ": 25, "VTALRM": 26,
	"PROF": 27, "WINCH": 28, "IO": 29, "POLL": 29, "PWR": 30, "SYS": 31,
}

const (
	sigRTMin = 34
	sigRTMax = 64
)

// parseSignal accepts a number from 1 to 64 or a name: KILL, SIGKILL, kill,
// RTMIN, RTMIN+3, SIGRTMAX-1.
func parseSignal(s string) (int, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n < 1 || n > sigRTMax {
			return 0, fmt.Errorf("signal %d: want 1 to %d", n, sigRTMax)
		}
		return n, nil
	}
	name := strings.TrimPrefix(strings.ToUpper(s), "SIG")
	if n, ok := signalNumbers[name]; ok {
		return n, nil
	}
	for _, rt := range []struct {
		prefix string
		base   int
		sign   int
	}{{"RTMIN", sigRTMin, 1}, {"RTMAX", sigRTMax, -1}} {
		rest, ok := strings.CutPrefix(name, rt.prefix)
		if !ok {
			continue
		}
		off := 0
		if rest != "" {
			var err error
			if off, err = strconv.Atoi(rest); err != nil {
				break
			}
			if (off < 0) != (rt.sign < 0) && off != 0 {
				break
			}
		}
		if n := rt.base + off; n >= sigRTMin && n <= sigRTMax {
			return n, nil
		}
	}
	return 0, fmt.Errorf("unknown signal %q: use a number from 1 to 64 or a name such as TERM, KILL, HUP, SIGUSR1, RTMIN+2", s)
}
