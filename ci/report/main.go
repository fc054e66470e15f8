// Command report reads `go test -json` output on stdin, prints it as
// `go test -v` would, and ends with one line counting passed, failed and
// skipped test cases. With -no-skips, a skipped case makes it exit 1.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
)

type event struct {
	Action  string
	Package string
	Test    string
	Output  string
	Elapsed float64
}

func main() {
	kind := flag.String("kind", "unit", `"unit" or "vmtest": vmtests may not skip`)
	flag.Parse()
	var passed, failed, skipped int
	var skips, fails []string
	pkgFail := map[string]bool{}
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()
	for sc.Scan() {
		var e event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			fmt.Fprintln(w, sc.Text()) // build errors and the like
			continue
		}
		switch e.Action {
		case "output":
			fmt.Fprint(w, e.Output)
		case "pass", "fail", "skip":
			if e.Test == "" {
				if e.Action == "fail" {
					pkgFail[e.Package] = true
				}
				continue
			}
			name := e.Package + " " + e.Test
			switch e.Action {
			case "pass":
				passed++
			case "fail":
				failed++
				fails = append(fails, name)
			case "skip":
				skipped++
				skips = append(skips, name)
			}
		}
		w.Flush()
	}
	rc := 0
	if len(fails) > 0 {
		fmt.Fprintf(w, "\nFailed:\n  %s\n", strings.Join(fails, "\n  "))
		rc = 1
	}
	var broken []string
	for p := range pkgFail {
		broken = append(broken, p)
	}
	sort.Strings(broken)
	if len(broken) > 0 {
		fmt.Fprintf(w, "\nPackages that failed: %s\n", strings.Join(broken, " "))
		rc = 1
	}
	if *kind == "vmtest" && skipped > 0 {
		fmt.Fprintf(w, "\nvmtests may not skip here; skipped:\n  %s\n", strings.Join(skips, "\n  "))
		rc = 1
	}
	fmt.Fprintf(w, "\n%s: %d passed, %d failed, %d skipped\n", *kind, passed, failed, skipped)
	w.Flush()
	os.Exit(rc)
}
