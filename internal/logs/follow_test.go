package logs

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nitroinit/nitroinit/internal/wait"
)

// TestFollowNoGapNoRepeat writes lines while Follow is called: every line
// must appear exactly once across the history and the subscription.
func TestFollowNoGapNoRepeat(t *testing.T) {
	l, err := Open(Config{Dir: t.TempDir(), RingLines: 10000}, "svc")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	const total = 2000
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < total; i++ {
			l.Printf("line %d", i)
		}
	}()
	time.Sleep(time.Millisecond) // let the writer start: Follow is called mid-stream
	tail, sub := l.Follow(total, total)
	var history []string
	tail.Each(func(b []byte) error { history = append(history, string(b)); return nil })
	defer sub.Close()
	<-done
	seen := map[string]int{}
	for _, h := range history {
		seen[h[strings.Index(h, "] ")+2:]]++
	}
	wait.For(t, fmt.Sprintf("all %d lines through history and subscription", total), func() (bool, string) {
		for {
			select {
			case ev := <-sub.C():
				if ev.Missed != 0 {
					t.Fatalf("missed %d lines with a buffer as large as the log", ev.Missed)
				}
				seen[ev.Line[strings.Index(ev.Line, "] ")+2:]]++
			default:
				return len(seen) >= total, fmt.Sprintf("%d distinct lines (history %d)", len(seen), len(history))
			}
		}
	})
	for i := 0; i < total; i++ {
		if n := seen[fmt.Sprintf("line %d", i)]; n != 1 {
			t.Fatalf("line %d seen %d times", i, n)
		}
	}
}
