package wire

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestStateName(t *testing.T) {
	for code, want := range map[string]string{"R": "Running", "S": "Sleeping", "D": "Disk sleep", "Z": "Zombie", "T": "Stopped", "t": "Tracing", "X": "Dead", "I": "Idle", "?": "Unknown"} {
		if got := StateName(code); got != want {
			t.Errorf("StateName(%q) = %q, want %q", code, got, want)
		}
	}
}

// TestFloatFieldsAreJSONFloats: every float on the wire is written as the
// reference writes an f64, with a fraction even when it is whole.
func TestFloatFieldsAreJSONFloats(t *testing.T) {
	for _, tc := range []struct {
		in   Float
		want string
	}{{0, "0.0"}, {2, "2.0"}, {2.5, "2.5"}, {0.1, "0.1"}, {100, "100.0"}, {1e21, "1e+21"}, {1e-7, "1e-7"}} {
		b, err := json.Marshal(tc.in)
		if err != nil || string(b) != tc.want {
			t.Errorf("Marshal(%v) = %s, %v; want %s", float64(tc.in), b, err, tc.want)
		}
	}
	b, _ := json.Marshal(Response{Kind: KindProcessStatus, Process: &ProcessInfo{PID: 1}})
	if want := `"cpu_percent":0.0,`; !strings.Contains(string(b), want) {
		t.Errorf("ProcessStatus = %s, want it to contain %s", b, want)
	}
	var back ProcessInfo
	if err := json.Unmarshal([]byte(`{"cpu_percent":2.5}`), &back); err != nil || back.CPUPercent != 2.5 {
		t.Errorf("decoding cpu_percent: %v %v", back.CPUPercent, err)
	}
}
