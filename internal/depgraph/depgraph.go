// Package depgraph turns the dependency keys of a set of services into a
// deterministic start order, holding back only the services whose
// requirements cannot be met and saying why.
//
// Ordering edges come from After and Before; requirement edges from Requires
// and its reverse, RequiredBy. A requirement also orders: the required
// service starts first. Ordering towards a name that does not exist, or that
// is held back, is ignored (it is soft, as in systemd). A requirement on a
// missing, disabled or held-back service holds the requiring service back,
// and so does membership of an ordering cycle. Everything else starts, in
// dependency order with ties broken by name.
package depgraph

import (
	"container/heap"
	"fmt"
	"sort"
	"strings"
)

// Node is one service as the resolver sees it.
type Node struct {
	Name       string
	Disabled   bool // present but not to be started; requiring it is an error
	Before     []string
	After      []string
	Requires   []string
	RequiredBy []string
}

// Plan is the outcome of Resolve.
type Plan struct {
	// Order lists the services that may start, in start order. Disabled
	// services are not in it.
	Order []string
	// Held maps each service held back to the reason.
	Held map[string]string
	// Waits maps a service to the services in Order that must be ready
	// before it starts (its effective ordering predecessors).
	Waits map[string][]string
	// Requires maps a service to its effective requirements (Requires plus
	// the RequiredBy of others), sorted.
	Requires map[string][]string
}

// Resolve computes the plan for nodes. It never fails: problems are reported
// per service in Plan.Held.
func Resolve(nodes []Node) Plan {
	byName := make(map[string]*Node, len(nodes))
	names := make([]string, 0, len(nodes))
	for i := range nodes {
		n := &nodes[i]
		if _, dup := byName[n.Name]; dup {
			continue
		}
		byName[n.Name] = n
		names = append(names, n.Name)
	}
	sort.Strings(names)

	req := map[string]map[string]bool{}   // service -> services it requires
	order := map[string]map[string]bool{} // service -> services that must start first
	add := func(m map[string]map[string]bool, k, v string) {
		if m[k] == nil {
			m[k] = map[string]bool{}
		}
		m[k][v] = true
	}
	for _, name := range names {
		n := byName[name]
		for _, r := range n.Requires {
			add(req, name, r)
		}
		for _, d := range n.RequiredBy {
			if _, ok := byName[d]; ok {
				add(req, d, name)
			}
		}
		for _, a := range n.After {
			add(order, name, a)
		}
		for _, b := range n.Before {
			add(order, b, name)
		}
	}
	for s, rs := range req {
		for r := range rs {
			add(order, s, r)
		}
	}

	plan := Plan{Held: map[string]string{}, Waits: map[string][]string{}, Requires: map[string][]string{}}
	for s, rs := range req {
		plan.Requires[s] = sortedKeys(rs)
	}

	// Graph over existing services only: ordering towards a missing name is soft.
	succ := map[string][]string{} // a -> services that wait for a
	for _, s := range names {
		for _, p := range sortedKeys(order[s]) {
			if _, ok := byName[p]; ok {
				succ[p] = append(succ[p], s)
			}
		}
	}

	for _, cyc := range cycles(names, succ) {
		path := strings.Join(append(cyc, cyc[0]), " -> ")
		for _, s := range cyc {
			plan.Held[s] = "dependency cycle: " + path
		}
	}

	// Missing, disabled or held requirements hold back their dependents,
	// transitively; iterate to a fixed point (the graph is small).
	for changed := true; changed; {
		changed = false
		for _, s := range names {
			if _, held := plan.Held[s]; held || byName[s].Disabled {
				continue
			}
			for _, r := range plan.Requires[s] {
				var why string
				switch rn, ok := byName[r]; {
				case !ok:
					why = fmt.Sprintf("requires %q, which does not exist", r)
				case rn.Disabled:
					why = fmt.Sprintf("requires %q, which is disabled", r)
				default:
					if reason, held := plan.Held[r]; held {
						why = fmt.Sprintf("requires %q, which is held back (%s)", r, reason)
					}
				}
				if why != "" {
					plan.Held[s] = why
					changed = true
					break
				}
			}
		}
	}

	// Kahn's algorithm over the startable services, smallest name first.
	startable := map[string]bool{}
	for _, s := range names {
		if _, held := plan.Held[s]; !held && !byName[s].Disabled {
			startable[s] = true
		}
	}
	indeg := map[string]int{}
	for _, s := range names {
		if !startable[s] {
			continue
		}
		for _, p := range sortedKeys(order[s]) {
			if startable[p] {
				indeg[s]++
				plan.Waits[s] = append(plan.Waits[s], p)
			}
		}
	}
	h := &nameHeap{}
	for _, s := range names {
		if startable[s] && indeg[s] == 0 {
			heap.Push(h, s)
		}
	}
	for h.Len() > 0 {
		s := heap.Pop(h).(string)
		plan.Order = append(plan.Order, s)
		for _, t := range succ[s] {
			if !startable[t] {
				continue
			}
			indeg[t]--
			if indeg[t] == 0 {
				heap.Push(h, t)
			}
		}
	}
	return plan
}

// cycles returns every strongly connected component that forms a cycle
// (more than one member, or a self-loop), each rotated to start at its
// smallest name and listed in cycle order where one exists.
func cycles(names []string, succ map[string][]string) [][]string {
	index := map[string]int{}
	low := map[string]int{}
	onStack := map[string]bool{}
	var stack []string
	var out [][]string
	next := 0
	var strong func(v string)
	strong = func(v string) {
		index[v], low[v] = next, next
		next++
		stack = append(stack, v)
		onStack[v] = true
		for _, w := range succ[v] {
			if _, seen := index[w]; !seen {
				strong(w)
				low[v] = min(low[v], low[w])
			} else if onStack[w] {
				low[v] = min(low[v], index[w])
			}
		}
		if low[v] != index[v] {
			return
		}
		var comp []string
		for {
			w := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			onStack[w] = false
			comp = append(comp, w)
			if w == v {
				break
			}
		}
		self := false
		for _, w := range succ[v] {
			if w == v {
				self = true
			}
		}
		if len(comp) > 1 || self {
			out = append(out, cyclePath(comp, succ))
		}
	}
	for _, v := range names {
		if _, seen := index[v]; !seen {
			strong(v)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i][0] < out[j][0] })
	return out
}

// cyclePath orders the members of a strongly connected component along a
// cycle through its smallest member, so the reason reads as a path. Members
// not on that cycle are appended in name order.
func cyclePath(comp []string, succ map[string][]string) []string {
	in := map[string]bool{}
	for _, c := range comp {
		in[c] = true
	}
	sort.Strings(comp)
	start := comp[0]
	// Breadth-first search for the shortest way back to start.
	prev := map[string]string{}
	queue := []string{start}
	seen := map[string]bool{start: true}
	found := false
	for len(queue) > 0 && !found {
		v := queue[0]
		queue = queue[1:]
		for _, w := range succ[v] {
			if !in[w] {
				continue
			}
			if w == start {
				prev[start] = v
				found = true
				break
			}
			if !seen[w] {
				seen[w] = true
				prev[w] = v
				queue = append(queue, w)
			}
		}
	}
	var path []string
	if found {
		for v := prev[start]; v != start; v = prev[v] {
			path = append([]string{v}, path...)
		}
	}
	path = append([]string{start}, path...)
	onPath := map[string]bool{}
	for _, p := range path {
		onPath[p] = true
	}
	for _, c := range comp {
		if !onPath[c] {
			path = append(path, c)
		}
	}
	return path
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

type nameHeap []string

func (h nameHeap) Len() int           { return len(h) }
func (h nameHeap) Less(i, j int) bool { return h[i] < h[j] }
func (h nameHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *nameHeap) Push(x any)        { *h = append(*h, x.(string)) }
func (h *nameHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// StopOrder returns the services of order grouped into waves for an orderly
// stop: every service in a wave is stopped only after all services that
// wait for it (in waits) are stopped in an earlier wave.
func StopOrder(order []string, waits map[string][]string) [][]string {
	depth := map[string]int{}
	maxDepth := 0
	for _, s := range order { // predecessors come first in order
		d := 0
		for _, p := range waits[s] {
			if dp, ok := depth[p]; ok && dp+1 > d {
				d = dp + 1
			}
		}
		depth[s] = d
		maxDepth = max(maxDepth, d)
	}
	waves := make([][]string, maxDepth+1)
	for _, s := range order {
		i := maxDepth - depth[s]
		waves[i] = append(waves[i], s)
	}
	if len(order) == 0 {
		return nil
	}
	return waves
}
