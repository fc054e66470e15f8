// Command report reads `go test -json` output on stdin, prints it as
// `go test -v` would, and ends with one line counting passed, failed and
// skipped test cases. A skipped vmtest makes it exit 1, and with -strict
// (as in CI) so does any other skipped test whose name does not match
// -allow-skip: on this project's CI machine every prerequisite is
// installed, so a skip means a test silently did not run.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"regexp"
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
	strict := flag.Bool("strict", false, "every skipped test fails the run, except those -allow-skip names (vmtests are always strict)")
	allow := flag.String("allow-skip", "", "with -strict, a regular expression of test names (package/Test) that may skip")
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
	var allowed *regexp.Regexp
	if *allow != "" && *kind != "vmtest" {
		allowed = regexp.MustCompile(*allow)
	}
	var bad []string
	for _, s := range skips {
		if allowed == nil || !allowed.MatchString(strings.Replace(s, " ", "/", 1)) {
			bad = append(bad, s)
		}
	}
	if len(bad) > 0 && (*kind == "vmtest" || *strict) {
		fmt.Fprintf(w, "\nthese tests may not skip here:\n  %s\n", strings.Join(bad, "\n  "))
		rc = 1
	}
	fmt.Fprintf(w, "\n%s: %d passed, %d failed, %d skipped\n", *kind, passed, failed, skipped)
	w.Flush()
	os.Exit(rc)
}
