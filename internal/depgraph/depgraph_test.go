package depgraph

import (
	"reflect"
	"testing"
)

func TestResolve(t *testing.T) {
	tests := []struct {
		name  string
		nodes []Node
		order []string
		held  map[string]string
	}{
		{
			name:  "ties broken by name",
			nodes: []Node{{Name: "c"}, {Name: "a"}, {Name: "b"}},
			order: []string{"a", "b", "c"},
		},
		{
			name:  "after and before",
			nodes: []Node{{Name: "web", After: []string{"db"}}, {Name: "db"}, {Name: "cache", Before: []string{"db"}}},
			order: []string{"cache", "db", "web"},
		},
		{
			name:  "requires orders too",
			nodes: []Node{{Name: "a", Requires: []string{"z"}}, {Name: "z"}},
			order: []string{"z", "a"},
		},
		{
			name:  "required by counts",
			nodes: []Node{{Name: "a"}, {Name: "z", RequiredBy: []string{"a"}}},
			order: []string{"z", "a"},
		},
		{
			name:  "missing requirement holds back only the dependents",
			nodes: []Node{{Name: "a", Requires: []string{"ghost"}}, {Name: "b", Requires: []string{"a"}}, {Name: "c"}},
			order: []string{"c"},
			held: map[string]string{
				"a": `requires "ghost", which does not exist`,
				"b": `requires "a", which is held back (requires "ghost", which does not exist)`,
			},
		},
		{
			name:  "missing after is soft",
			nodes: []Node{{Name: "a", After: []string{"ghost"}}},
			order: []string{"a"},
		},
		{
			name: "cycle holds back its members only",
			nodes: []Node{
				{Name: "x", After: []string{"z"}}, {Name: "y", After: []string{"x"}}, {Name: "z", After: []string{"y"}},
				{Name: "free"}, {Name: "tail", After: []string{"x"}},
			},
			order: []string{"free", "tail"},
			held: map[string]string{
				"x": "dependency cycle: x -> y -> z -> x",
				"y": "dependency cycle: x -> y -> z -> x",
				"z": "dependency cycle: x -> y -> z -> x",
			},
		},
		{
			name:  "self loop",
			nodes: []Node{{Name: "s", After: []string{"s"}}},
			order: nil,
			held:  map[string]string{"s": "dependency cycle: s -> s"},
		},
		{
			name:  "requiring a disabled service",
			nodes: []Node{{Name: "a", Requires: []string{"d"}}, {Name: "d", Disabled: true}},
			order: nil,
			held:  map[string]string{"a": `requires "d", which is disabled`},
		},
		{
			name: "diamond",
			nodes: []Node{
				{Name: "top", After: []string{"l", "r"}}, {Name: "l", After: []string{"base"}},
				{Name: "r", After: []string{"base"}}, {Name: "base"},
			},
			order: []string{"base", "l", "r", "top"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := Resolve(tt.nodes)
			if !reflect.DeepEqual(p.Order, tt.order) {
				t.Errorf("order = %q, want %q", p.Order, tt.order)
			}
			want := tt.held
			if want == nil {
				want = map[string]string{}
			}
			if !reflect.DeepEqual(p.Held, want) {
				t.Errorf("held = %q, want %q", p.Held, want)
			}
		})
	}
}

func TestResolveDeterministic(t *testing.T) {
	nodes := []Node{
		{Name: "e", After: []string{"a"}}, {Name: "d"}, {Name: "c", Before: []string{"a"}},
		{Name: "b", Requires: []string{"d"}}, {Name: "a"},
	}
	first := Resolve(nodes).Order
	for i := 0; i < 50; i++ {
		// Reverse the input each time: the result must not depend on it.
		rev := make([]Node, len(nodes))
		for j := range nodes {
			rev[len(nodes)-1-j] = nodes[j]
		}
		nodes = rev
		if got := Resolve(nodes).Order; !reflect.DeepEqual(got, first) {
			t.Fatalf("run %d: order %q, first run %q", i, got, first)
		}
	}
	if want := []string{"c", "a", "d", "b", "e"}; !reflect.DeepEqual(first, want) {
		t.Fatalf("order %q, want %q", first, want)
	}
}

func TestStopOrder(t *testing.T) {
	p := Resolve([]Node{{Name: "db"}, {Name: "web", After: []string{"db"}}, {Name: "mon", After: []string{"web"}}, {Name: "solo"}})
	got := StopOrder(p.Order, p.Waits)
	want := [][]string{{"mon"}, {"web"}, {"db", "solo"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("stop waves %q, want %q", got, want)
	}
}
