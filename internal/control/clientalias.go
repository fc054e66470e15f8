package control

import "github.com/nitroinit/nitroinit/internal/control/client"

// The client side lives in package client, so that initctl does not link
// the server. These names keep callers that already use the server package
// (its tests, the integration harnesses) working.
type (
	// Target is client.Target.
	Target = client.Target
	// UnreachableError is client.UnreachableError.
	UnreachableError = client.UnreachableError
)

// Protocols a Target can use: see package client.
const (
	ProtocolUnix   = client.ProtocolUnix
	ProtocolVsock  = client.ProtocolVsock
	ProtocolHybrid = client.ProtocolHybrid
)

// Dial, Do and Follow are client.Dial, client.Do and client.Follow.
var (
	Dial   = client.Dial
	Do     = client.Do
	Follow = client.Follow
)
