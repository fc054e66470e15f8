// Command bench measures nitroinit's init against the programs people would
// use instead of it (tini, runit, s6, supervisor), installed from the
// distribution and run on the same machine in the same run, and prints a
// markdown table: our figure, theirs, and the ratio ours/theirs, each the
// median of several runs in which ours and theirs alternate.
//
// It is run by ci/bench.sh (make bench) from the repository root after
// make build. A competitor that is not installed gets "n/a (not
// installed)" in its cell; a measurement that fails gets its error.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"
)

// env holds what every measurement needs: the binaries under test and a
// scratch directory.
type env struct {
	init    string // our init binary
	initctl string // our initctl binary
	svc     string // internal/testprog/svc, the test service
	zombies string // internal/testprog/zombies, the orphan storm
	self    string // this program, re-run for the helper roles
	tmp     string
	quick   bool
}

// metric is one figure a measurement yields. Every metric is "lower is
// better", so that ours/theirs ≤ 1 always means we win.
type metric struct {
	name string
	// worst aggregates with the maximum instead of the median (used for
	// counts that must be zero, where one bad run must show).
	worst bool
	// noRatio leaves the ratio out: the metric only restates another one
	// for reading (restarts per second, say), where higher is better.
	noRatio bool
	// format renders a value of this metric.
	format func(float64) string
}

// contender is one program measured in a row.
type contender struct {
	name  string
	needs []string // executables that must be on PATH
	// measure runs the scenario once and returns one value per metric.
	measure func(e *env) ([]float64, error)
	// note is printed in the row's notes (built-in spacing and the like).
	note string
}

// row is one comparison of the table.
type row struct {
	id      string // the row number: "1", "5a", …
	title   string
	metrics []metric
	ours    contender
	theirs  []contender
	runs    int
}

// outcome is the aggregated result of one contender in one row.
type outcome struct {
	values  []float64 // per metric
	samples [][]float64
	err     error
	missing string
}

func main() {
	if role() {
		return
	}
	e := &env{}
	var (
		runs  = flag.Int("runs", 5, "runs per measurement; the median is reported")
		only  = flag.String("only", "", "comma-separated rows to run, as numbered in the table (5 selects 5a, 5b and 5c; default all)")
		out   = flag.String("o", "", "also write the table to this file")
		quick = flag.Bool("quick", false, "smaller workloads, for trying the harness out (numbers are not the documented ones)")
	)
	flag.StringVar(&e.init, "init", "bin/init", "init binary under test (static build)")
	flag.StringVar(&e.initctl, "initctl", "bin/initctl", "initctl binary under test")
	flag.Parse()
	e.quick = *quick
	if err := e.setup(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	defer os.RemoveAll(e.tmp)

	rows := allRows(*runs)
	want := map[string]bool{}
	for _, s := range strings.Split(*only, ",") {
		if s = strings.TrimSpace(s); s != "" {
			want[s] = true
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Machine: %s. Date: %s. Runs per figure: %d (median; lost lines: worst run).\n\n",
		machine(), time.Now().UTC().Format("2006-01-02 15:04 UTC"), *runs)
	b.WriteString("| # | Measurement (lower is better) | nitroinit | Other | Other's figure | Ratio ours/other | Notes |\n")
	b.WriteString("|---|---|---|---|---|---|---|\n")
	fmt.Print(b.String())
	for _, r := range rows {
		num := r.id
		if len(want) > 0 && !want[num] && !want[strings.TrimRight(num, "abc")] {
			continue
		}
		lines := r.run(e, num)
		b.WriteString(lines)
		fmt.Print(lines)
	}
	if *out != "" {
		if err := os.WriteFile(*out, []byte(b.String()), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
	}
}

// setup builds the test programs and checks the binaries under test.
func (e *env) setup() error {
	for _, p := range []*string{&e.init, &e.initctl} {
		abs, err := filepath.Abs(*p)
		if err != nil {
			return err
		}
		if _, err := os.Stat(abs); err != nil {
			return fmt.Errorf("%s not found: run make build first (or pass -init/-initctl)", abs)
		}
		*p = abs
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding this program's path for its helper roles: %w", err)
	}
	e.self = self
	if e.tmp, err = os.MkdirTemp("", "nitroinit-bench-"); err != nil {
		return err
	}
	e.svc = filepath.Join(e.tmp, "svc")
	e.zombies = filepath.Join(e.tmp, "zombies")
	for out, pkg := range map[string]string{e.svc: "./internal/testprog/svc", e.zombies: "./internal/testprog/zombies"} {
		cmd := exec.Command("go", "build", "-o", out, pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("building %s (run from the repository root): %v\n%s", pkg, err, b)
		}
	}
	// Every process a measurement leaves behind is reparented to us, so
	// that killTree can always finish the job.
	return becomeSubreaper()
}

// run measures every contender of r, alternating ours and theirs run by
// run, and returns the table lines.
func (r row) run(e *env, num string) string {
	all := append([]contender{r.ours}, r.theirs...)
	res := make([]outcome, len(all))
	for i, c := range all {
		for _, bin := range c.needs {
			if _, err := exec.LookPath(bin); err != nil {
				res[i].missing = bin
			}
		}
	}
	for n := 0; n < r.runs; n++ {
		for i, c := range all {
			if res[i].missing != "" || res[i].err != nil {
				continue
			}
			fmt.Fprintf(os.Stderr, "bench: row %s run %d/%d: %s\n", num, n+1, r.runs, c.name)
			v, err := c.measure(e)
			if err != nil {
				// One retry: a shared machine can stall any single run.
				fmt.Fprintf(os.Stderr, "bench: row %s, %s: %v; retrying once\n", num, c.name, err)
				v, err = c.measure(e)
			}
			if err != nil {
				res[i].err = err
				fmt.Fprintf(os.Stderr, "bench: row %s, %s: %v\n", num, c.name, err)
				continue
			}
			res[i].samples = append(res[i].samples, v)
			fmt.Fprintf(os.Stderr, "bench: row %s run %d/%d: %s: %v\n", num, n+1, r.runs, c.name, v)
		}
	}
	for i := range res {
		if res[i].err != nil || res[i].missing != "" {
			continue
		}
		res[i].values = make([]float64, len(r.metrics))
		for m, mt := range r.metrics {
			col := make([]float64, len(res[i].samples))
			for s := range col {
				col[s] = res[i].samples[s][m]
			}
			if mt.worst {
				res[i].values[m] = maxOf(col)
			} else {
				res[i].values[m] = median(col)
			}
		}
	}
	var b strings.Builder
	cell := func(o outcome, m int, f func(float64) string) string {
		switch {
		case o.missing != "":
			return fmt.Sprintf("n/a (not installed: %s)", o.missing)
		case o.err != nil:
			return "error: " + strings.ReplaceAll(oneLine(o.err.Error()), "|", "/")
		}
		return f(o.values[m])
	}
	for m, mt := range r.metrics {
		ours := cell(res[0], m, mt.format)
		if len(r.theirs) == 0 {
			fmt.Fprintf(&b, "| %s | %s: %s | %s | – | – | – | %s |\n", num, r.title, mt.name, ours, r.ours.note)
			continue
		}
		for i := 1; i < len(all); i++ {
			ratio := "–"
			if !mt.noRatio && res[0].values != nil && res[i].values != nil && res[i].values[m] != 0 {
				ratio = fmt.Sprintf("%.2f", res[0].values[m]/res[i].values[m])
			}
			note := all[i].note
			if m == 0 && r.ours.note != "" && i == 1 {
				note = strings.TrimPrefix(note+"; ours: "+r.ours.note, "; ")
			}
			fmt.Fprintf(&b, "| %s | %s: %s | %s | %s | %s | %s | %s |\n",
				num, r.title, mt.name, ours, all[i].name, cell(res[i], m, mt.format), ratio, note)
		}
	}
	return b.String()
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func maxOf(v []float64) float64 {
	m := v[0]
	for _, x := range v {
		m = max(m, x)
	}
	return m
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 160 {
		s = s[:160] + "…"
	}
	return s
}

// machine describes the host in one line for the table's heading.
func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				model = strings.TrimSpace(l[strings.IndexByte(l, ':')+1:])
				break
			}
		}
	}
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		fmt.Sscanf(string(b), "MemTotal: %d kB", &kb)
		mem = fmt.Sprintf(", %.1f GiB RAM", float64(kb)/(1<<20))
	}
	osName := ""
	if b, err := os.ReadFile("/etc/os-release"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "PRETTY_NAME=") {
				osName = ", " + strings.Trim(l[len("PRETTY_NAME="):], `"`)
			}
		}
	}
	kernel := ""
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = ", Linux " + strings.TrimSpace(string(b))
	}
	return fmt.Sprintf("%d × %s%s%s%s, %s", runtime.NumCPU(), model, mem, osName, kernel, runtime.Version())
}

// tail is a writer for a helper's output that keeps the last 4 KiB for
// error messages.
type tail struct{ b []byte }

func (t *tail) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > 4096 {
		t.b = t.b[len(t.b)-4096:]
	}
	return len(p), nil
}

func (t *tail) String() string { return string(t.b) }

var _ io.Writer = (*tail)(nil)
