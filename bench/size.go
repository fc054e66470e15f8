package main

import (
	"fmt"
	"os"
	"os/exec"
)

// Row 7: the size of the static binaries, which an enclave image carries.
func sizeOurs(e *env) ([]float64, error) {
	var v []float64
	for _, p := range []string{e.init, e.initctl} {
		st, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		v = append(v, float64(st.Size())/(1<<20))
	}
	return v, nil
}

// sizeTini is tini's size for reference (not a like-for-like comparison:
// tini reaps and forwards signals, nothing more). The static build is
// preferred when installed.
func sizeTini(e *env) ([]float64, error) {
	for _, name := range []string{"tini-static", "tini"} {
		p, err := exec.LookPath(name)
		if err != nil {
			continue
		}
		st, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		return []float64{float64(st.Size()) / (1 << 20), 0}, nil
	}
	return nil, fmt.Errorf("tini not found")
}

func sizeRow() row {
	mib := func(v float64) string {
		if v == 0 {
			return "–"
		}
		return fmt.Sprintf("%.2f MiB", v)
	}
	return row{
		title: "Binary size",
		metrics: []metric{
			{name: "init (static, -s -w)", noRatio: true, format: mib},
			{name: "initctl (static, -s -w)", noRatio: true, format: mib},
		},
		ours:   contender{name: "init", measure: sizeOurs},
		theirs: []contender{{name: "tini (for scale only: it does far less)", needs: []string{"tini"}, measure: sizeTini}},
		runs:   1,
	}
}
