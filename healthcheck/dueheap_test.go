package healthcheck

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// TestSchedule checks the heap against a sorted slice under random pushes,
// pops and removals, and that every entry's index stays right.
func TestDueHeap(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var h dueHeap
	live := map[*entry]bool{}
	check := func() {
		for i, s := range h {
			if s.e.idx != i || s.at != s.e.at {
				t.Fatalf("slot %d: idx %d at %d/%d", i, s.e.idx, s.at, s.e.at)
			}
			if i > 0 && h[(i-1)/2].at > s.at {
				t.Fatalf("heap order broken at %d", i)
			}
		}
		if len(h) != len(live) {
			t.Fatalf("%d slots, %d live", len(h), len(live))
		}
	}
	for range 5000 {
		switch op := rng.IntN(10); {
		case op < 5:
			e := &entry{at: rng.Int64N(1000)}
			h.push(e)
			live[e] = true
		case op < 8 && len(h) > 0:
			var want []int64
			for e := range live {
				want = append(want, e.at)
			}
			e := h.pop()
			if e.at != slices.Min(want) || e.idx != -1 {
				t.Fatalf("pop gave %d (idx %d), min is %d", e.at, e.idx, slices.Min(want))
			}
			delete(live, e)
		case len(h) > 0:
			e := h[rng.IntN(len(h))].e
			h.remove(e.idx)
			if e.idx != -1 {
				t.Fatal("removed entry keeps an index")
			}
			delete(live, e)
		}
		check()
	}
}
