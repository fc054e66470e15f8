package supervise

import "github.com/nitroinit/nitroinit/internal/wire"

// A service's log file can fail (a full disk) and recover at any time
// without a state change of the service, so its condition is not part of
// the cached snapshot: it is read from the log when a list or status is
// answered, and shown until the file is written again.

// withLogErrors returns the snapshot's list with the services whose log
// file fails marked; it copies only when one does.
func (sn *snapshot) withLogErrors() []wire.ServiceInfo {
	out := sn.list
	copied := false
	for i, inf := range sn.list {
		l := sn.logs[inf.Name]
		if l == nil {
			continue
		}
		err := l.Err()
		if err == nil {
			continue
		}
		if !copied {
			out = append([]wire.ServiceInfo(nil), sn.list...)
			copied = true
		}
		out[i].State, out[i].Error = withLogError(inf.State, inf.Error, err)
	}
	return out
}

// withLogError adds a failing log to a service's state and error.
func withLogError(state, why string, err error) (string, string) {
	if err == nil {
		return state, why
	}
	msg := "log not written: " + err.Error()
	if why != "" {
		msg = why + "; " + msg
	}
	return state + ", log failing", msg
}
