package vsockdev

// Names for the external VM tests and benchmarks (package vsockdev_test),
// which boot a guest through internal/enclavesim; that package imports
// this one, so they cannot live inside it.
const FirstHostPort = firstHostPort

// The benchmarks' host-side baseline (bench_test.go).
const BenchChunk = benchChunk

// PendingHandshakes is how many hybrid clients have not sent their CONNECT
// line yet.
func (d *Device) PendingHandshakes() int { return len(d.handshakes) }

var (
	UnixPeer    = unixPeer
	HostDiscard = hostDiscard
	HostSource  = hostSource
	HostEcho    = hostEcho
	SendAll     = sendAll
	ReceiveAll  = receiveAll
	RoundTrips  = roundTrips
	Pattern     = pattern
	Le64        = le64
)
