package control

import (
	"testing"

	"github.com/nitroinit/nitroinit/internal/wire"
)

func TestEveryRequestHasAClass(t *testing.T) {
	for _, k := range wire.RequestKinds() {
		if _, ok := requestClass[k]; !ok {
			t.Errorf("request %s has no permission class (it would be treated as exec)", k)
		}
	}
}
