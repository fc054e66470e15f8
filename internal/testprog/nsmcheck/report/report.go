// Package report is what nsmcheck (the NSM test app) sends to the host over
// vsock, and how the host receives it: one JSON object per connection.
package report

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"time"
)

// Report is nsmcheck's result.
type Report struct {
	// Failures lists every check that failed, in words.
	Failures []string `json:"failures"`
	// PCRs are PCRs 0-15 as DescribePCR returned them, in hex by index.
	PCRs map[string]string `json:"pcrs"`
	// Document is an attestation document (user_data "user data", nonce
	// "nonce 1", public_key "public key" in the full run).
	Document []byte `json:"document"`
	// Steps counts the checks run.
	Steps int `json:"steps"`
	// Bench holds round-trip times in microseconds (--bench).
	Bench map[string][]int64 `json:"bench,omitempty"`
}

// maxSize bounds a report: a document is at most 0x3000 bytes, the bench
// figures a few thousand numbers.
const maxSize = 1 << 20

// Receive accepts one connection on ln and decodes its report, waiting at
// most timeout.
func Receive(ln net.Listener, timeout time.Duration) (Report, error) {
	type result struct {
		b   []byte
		err error
	}
	got := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- result{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(timeout))
		b, err := io.ReadAll(io.LimitReader(c, maxSize))
		got <- result{b, err}
	}()
	var r Report
	select {
	case res := <-got:
		if res.err != nil {
			return r, fmt.Errorf("nsmcheck report: %w", res.err)
		}
		if err := json.Unmarshal(res.b, &r); err != nil {
			return r, fmt.Errorf("nsmcheck report %q: %w", res.b, err)
		}
		return r, nil
	case <-time.After(timeout):
		ln.Close() // ends the Accept
		return r, fmt.Errorf("no nsmcheck report within %s", timeout)
	}
}
