package wire

import (
	"encoding/json"
	"strings"
)

// Float is a JSON number that always carries a fraction or an exponent, as
// the reference (serde) writes f64: 0.0, 2.0 and 2.5, where encoding/json
// would write 0 and 2. Every float field of the protocol has this type.
type Float float64

// MarshalJSON writes f as encoding/json does, then adds ".0" when that
// would read as an integer (NaN and infinities are errors, as there).
func (f Float) MarshalJSON() ([]byte, error) {
	b, err := json.Marshal(float64(f))
	if err != nil {
		return nil, err
	}
	if !strings.ContainsAny(string(b), ".eE") {
		b = append(b, '.', '0')
	}
	return b, nil
}

// StateName spells out a one-letter /proc state code (ProcessInfo.State).
func StateName(code string) string {
	switch code {
	case "R":
		return "Running"
	case "S":
		return "Sleeping"
	case "D":
		return "Disk sleep"
	case "Z":
		return "Zombie"
	case "T":
		return "Stopped"
	case "t":
		return "Tracing"
	case "X", "x":
		return "Dead"
	case "I":
		return "Idle"
	case "K":
		return "Wakekill"
	case "W":
		return "Waking"
	case "P":
		return "Parked"
	}
	return "Unknown"
}
