package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCountLost(t *testing.T) {
	line := func(stamp string, k int) string {
		return fmt.Sprintf("%sline %09d %s\n", stamp, k, strings.Repeat("x", 80))
	}
	lines := func(stamp string, ks ...int) string {
		var b strings.Builder
		for _, k := range ks {
			b.WriteString(line(stamp, k))
		}
		return b.String()
	}
	const ts = "[2026-01-01T00:00:00.000000Z] "
	for _, tc := range []struct {
		name    string
		files   map[string]string
		stamped bool
		lost    int
		err     bool
	}{
		{"all in one file", map[string]string{"current": lines(ts, 1, 2, 3, 4, 5)}, true, 0, false},
		{"rotated away at the start is not lost", map[string]string{"a.log.1": lines(ts, 3, 4), "a.log": lines(ts, 5)}, true, 0, false},
		{"gap", map[string]string{"current": lines(ts, 1, 2, 4, 5)}, true, 1, false},
		{"gap across files", map[string]string{"a.log.1": lines(ts, 1, 2), "a.log": lines(ts, 5)}, true, 2, false},
		{"end missing", map[string]string{"current": lines(ts, 1, 2, 3)}, true, 2, false},
		{"nothing", map[string]string{"current": "init: started\n"}, true, 5, false},
		{"no timestamp", map[string]string{"current": lines("", 1, 2, 3, 4, 5)}, true, 0, true},
		{"no timestamp wanted", map[string]string{"out": lines("", 1, 2, 3, 4, 5)}, false, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, body := range tc.files {
				if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			lost, err := countLost(dir, 5, tc.stamped)
			if (err != nil) != tc.err {
				t.Fatalf("countLost: error %v, want error=%v", err, tc.err)
			}
			if err == nil && lost != tc.lost {
				t.Fatalf("countLost = %d, want %d", lost, tc.lost)
			}
		})
	}
}

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{[]float64{3}, 3},
		{[]float64{5, 1, 3}, 3},
		{[]float64{4, 1, 3, 2}, 2.5},
		{[]float64{9, 1, 1, 1, 9}, 1},
	} {
		if got := median(tc.in); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestRunScript(t *testing.T) {
	got := runScript([]string{"/bin/svc", "sleep", "it's"})
	want := "#!/bin/sh\nexec '/bin/svc' 'sleep' 'it'\\''s'\n"
	if got != want {
		t.Fatalf("runScript = %q, want %q", got, want)
	}
}
