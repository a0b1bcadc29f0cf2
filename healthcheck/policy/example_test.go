package policy_test

import (
	"fmt"
	"net/netip"

	"github.com/lvsd/lvsd/director"
	"github.com/lvsd/lvsd/healthcheck"
	"github.com/lvsd/lvsd/healthcheck/policy"
)

// The daemon's loop for one service: look up each backend's check status,
// evaluate, hand the destinations to the director, and record quorum changes.
func ExampleEvaluate() {
	rs := func(s string) director.Destination {
		return director.Destination{Key: director.DestKey{Address: netip.MustParseAddr(s), Port: 80}, Weight: 1, Forward: director.ForwardDR}
	}
	sorry := rs("198.18.2.9")
	p := policy.Policy{OnFailure: policy.Inhibit, Sorry: &sorry, Quorum: 2}
	history := healthcheck.NewHistory(16)

	quorum := healthcheck.StateUnknown
	for _, healthy := range [][2]healthcheck.State{
		{healthcheck.StateUp, healthcheck.StateUp},
		{healthcheck.StateUp, healthcheck.StateDown},
	} {
		out, err := policy.Evaluate(p, quorum, []policy.Backend{
			{Dest: rs("198.18.2.1"), Health: healthy[0], DynamicWeight: healthcheck.NoWeight},
			{Dest: rs("198.18.2.2"), Health: healthy[1], DynamicWeight: healthcheck.NoWeight},
		})
		if err != nil {
			panic(err)
		}
		if out.Change != nil {
			ev := history.Add(out.Change.Event("web"))
			fmt.Printf("quorum %s -> %s: %s\n", ev.From, ev.To, ev.Reason)
		}
		quorum = out.Quorum
		for _, d := range out.Destinations {
			fmt.Printf("  %s weight %d\n", d.Key, d.Weight)
		}
	}
	// Output:
	// quorum unknown -> up: healthy weight 2 >= 2 (quorum 2 + hysteresis 0)
	//   198.18.2.1:80 weight 1
	//   198.18.2.2:80 weight 1
	// quorum up -> down: healthy weight 1 < 2 (quorum 2 - hysteresis 0)
	//   198.18.2.1:80 weight 0
	//   198.18.2.2:80 weight 0
	//   198.18.2.9:80 weight 1
}
