package control

import "testing"

// TestStreamTargets checks which CIDs a vsock peer may have init dial for
// logs-stream: the host (2 or 3) or the peer itself, never the enclave's
// own loopback or another CID.
func TestStreamTargets(t *testing.T) {
	srv := NewServer(Config{Handler: nil})
	peer := Peer{Transport: TransportVsock, CID: 3, CIDKnown: true}
	for _, tt := range []struct {
		cid     uint32
		refused bool
	}{{0, true}, {1, true}, {2, false}, {3, false}, {16, true}, {42, true}} {
		r := srv.checkStreamTarget(peer, tt.cid)
		if (r != nil) != tt.refused {
			t.Errorf("CID %d: refused=%v, want %v (%v)", tt.cid, r != nil, tt.refused, r)
		}
	}
	if r := srv.checkStreamTarget(Peer{Transport: TransportUnix}, 16); r != nil {
		t.Errorf("a Unix peer (inside the enclave) was refused CID 16: %v", r)
	}
}
