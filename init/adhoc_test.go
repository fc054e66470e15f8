package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nitroinit/nitroinit/internal/wire"
)

// TestAdhocLogsReadableByExecOnly: the output of ps start is readable
// through the control socket by those who may start such processes (root
// here), and refused to a read-only user, with the class named.
func TestAdhocLogsReadableByExecOnly(t *testing.T) {
	requireRoot(t)
	h := startInit(t, nil, fmt.Sprintf("  permissions:\n    unix:\n      uids: [%d]\n", nobody))
	r := h.do(wire.Request{Kind: wire.KindProcessStart, Command: bins.svc, Args: []string{"print", "2"}})
	if r.PID == 0 {
		t.Fatalf("ps start: %+v", r)
	}
	h.eventually(10*time.Second, "ps start's output in logs adhoc", func() bool {
		r := h.do(wire.Request{Kind: wire.KindServiceLogs, Name: "adhoc", Lines: 10})
		return strings.Contains(strings.Join(r.Logs, "\n"), "stdout line 2")
	})
	f := startFlood(t, h, "ask", h.sock, `{"ServiceLogs":{"name":"adhoc","lines":10}}`)
	if got := f.text(t, "answer"); !strings.Contains(got, `permission denied: \"exec\" requests`) || strings.Contains(got, "stdout line") {
		t.Errorf("a read-only user asking for adhoc's log got %s", got)
	}
}
