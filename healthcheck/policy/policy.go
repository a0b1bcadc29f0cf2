// Package policy turns a service's backends and their health into the
// destinations that belong in IPVS and the service's quorum state. It is a
// pure function of its inputs (no clock, no I/O), for the daemon to call
// whenever health, config or operator overrides change.
package policy

import (
	"cmp"
	"errors"
	"fmt"
	"slices"

	"github.com/lvsd/lvsd/director"
	"github.com/lvsd/lvsd/healthcheck"
)

// OnFailure is what happens to a backend that is down.
type OnFailure uint8

const (
	// Remove deletes the destination: its connections and persistence
	// templates go with it, and persistent clients are rescheduled.
	Remove OnFailure = iota
	// Inhibit keeps the destination with weight 0: existing connections
	// continue, new ones (and, with expire_quiescent_template, persistent
	// clients' next connections) go elsewhere.
	Inhibit
)

func (o OnFailure) String() string {
	if o == Inhibit {
		return "inhibit"
	}
	return "remove"
}

// ParseOnFailure parses the config's on_failure value.
func ParseOnFailure(s string) (OnFailure, error) {
	switch s {
	case "", "remove":
		return Remove, nil
	case "inhibit":
		return Inhibit, nil
	}
	return 0, fmt.Errorf("on_failure: %q is not remove or inhibit", s)
}

// Policy is a service's failure handling.
type Policy struct {
	OnFailure OnFailure
	// Sorry, if set, is the destination used while the service has no
	// healthy weight or has lost quorum. Weight 0 is taken as 1.
	Sorry *director.Destination
	// Quorum is the minimum healthy weight sum; 0 turns quorum off (the
	// service then always has quorum).
	Quorum int
	// Hysteresis widens the quorum threshold: quorum is gained at
	// Quorum+Hysteresis and lost below Quorum-Hysteresis (or at 0).
	Hysteresis int
}

// Validate reports bad values, naming the config key.
func (p Policy) Validate() error {
	var errs []error
	if p.OnFailure > Inhibit {
		errs = append(errs, fmt.Errorf("on_failure: unknown value %d", p.OnFailure))
	}
	if p.Quorum < 0 {
		errs = append(errs, fmt.Errorf("quorum: must not be negative, got %d", p.Quorum))
	}
	if p.Hysteresis < 0 {
		errs = append(errs, fmt.Errorf("quorum_hysteresis: must not be negative, got %d", p.Hysteresis))
	}
	if p.Hysteresis > 0 && p.Quorum == 0 {
		errs = append(errs, errors.New("quorum_hysteresis: needs a quorum"))
	}
	if p.Sorry != nil && !p.Sorry.Key.Address.IsValid() {
		errs = append(errs, errors.New("sorry_server: invalid address"))
	}
	return errors.Join(errs...)
}

// Backend is one configured backend as the daemon sees it after operator
// overrides (a disabled backend is simply not passed in).
type Backend struct {
	// Dest is the configured destination, Weight included.
	Dest director.Destination
	// Health is the check's state; anything but StateUp counts as down.
	Health healthcheck.State
	// DynamicWeight, if not healthcheck.NoWeight, replaces Dest.Weight
	// (dynamic exec checks).
	DynamicWeight int
	// Drained forces weight 0 (operator drain) while keeping the backend.
	Drained bool
}

// EffectiveWeight is the weight the backend gets when it is in service.
func (b Backend) EffectiveWeight() int {
	switch {
	case b.Drained:
		return 0
	case b.DynamicWeight != healthcheck.NoWeight && b.DynamicWeight >= 0:
		return min(b.DynamicWeight, 65535)
	}
	return b.Dest.Weight
}

// QuorumChange is a quorum transition, StateUnknown → x on the first
// evaluation.
type QuorumChange struct {
	From, To      healthcheck.State
	HealthyWeight int
	Quorum        int
	Hysteresis    int
}

// Reason explains the transition in one phrase.
func (q QuorumChange) Reason() string {
	if q.Quorum == 0 {
		return "quorum off"
	}
	if q.To == healthcheck.StateUp {
		return fmt.Sprintf("healthy weight %d >= %d (quorum %d + hysteresis %d)",
			q.HealthyWeight, q.Quorum+q.Hysteresis, q.Quorum, q.Hysteresis)
	}
	return fmt.Sprintf("healthy weight %d < %d (quorum %d - hysteresis %d)",
		q.HealthyWeight, max(q.Quorum-q.Hysteresis, 1), q.Quorum, q.Hysteresis)
}

// Event renders the change for the event history and the log.
func (q QuorumChange) Event(service string) healthcheck.Event {
	return healthcheck.Event{
		Kind: healthcheck.KindQuorum, Service: service,
		From: q.From, To: q.To, Reason: q.Reason(), Weight: q.HealthyWeight,
	}
}

// Outcome is what a service should look like in IPVS now.
type Outcome struct {
	// Destinations, sorted by address then port.
	Destinations []director.Destination
	// Quorum is StateUp or StateDown.
	Quorum healthcheck.State
	// HealthyWeight is the sum of the effective weights of up backends.
	HealthyWeight int
	// SorryActive reports that the sorry server is in the pool.
	SorryActive bool
	// Change is set when Quorum differs from the previous state passed in.
	Change *QuorumChange
}

// Evaluate computes the service's destinations and quorum from its
// backends, given the quorum state it had before (StateUnknown at first).
//
//   - An up backend is in with its effective weight.
//   - A down backend is removed, or kept with weight 0 under Inhibit.
//   - Quorum (if on) is gained when the healthy weight reaches
//     Quorum+Hysteresis and lost when it falls below Quorum-Hysteresis or to
//     0; at first it is up iff the healthy weight reaches Quorum+Hysteresis.
//   - With a sorry server, while quorum is lost or no healthy weight is
//     left, the sorry server takes all new connections: up backends are
//     removed (weight 0 under Inhibit) and the sorry server is added. Without
//     one, up backends stay whatever the quorum.
//
// Two backends with the same address and port are an error.
func Evaluate(p Policy, prev healthcheck.State, backends []Backend) (Outcome, error) {
	var seen map[director.DestKey]bool // only for many backends: a few are compared directly
	if len(backends) > 16 {
		seen = make(map[director.DestKey]bool, len(backends))
	}
	var out Outcome
	for i, b := range backends {
		dup := false
		if seen != nil {
			dup = seen[b.Dest.Key]
			seen[b.Dest.Key] = true
		} else {
			dup = slices.ContainsFunc(backends[:i], func(o Backend) bool { return o.Dest.Key == b.Dest.Key })
		}
		if dup {
			return Outcome{}, fmt.Errorf("backend %s listed twice", b.Dest.Key)
		}
		if b.Health == healthcheck.StateUp {
			out.HealthyWeight += b.EffectiveWeight()
		}
	}

	out.Quorum = nextQuorum(p, prev, out.HealthyWeight)
	if out.Quorum != prev {
		out.Change = &QuorumChange{From: prev, To: out.Quorum, HealthyWeight: out.HealthyWeight,
			Quorum: p.Quorum, Hysteresis: p.Hysteresis}
	}
	out.SorryActive = p.Sorry != nil && (out.Quorum == healthcheck.StateDown || out.HealthyWeight == 0)

	dests := make([]director.Destination, 0, len(backends)+1)
	for _, b := range backends {
		d := b.Dest
		inService := b.Health == healthcheck.StateUp && !out.SorryActive
		switch {
		case inService:
			d.Weight = b.EffectiveWeight()
		case p.OnFailure == Inhibit:
			d.Weight = 0
		default:
			continue
		}
		if out.SorryActive && d.Key == p.Sorry.Key {
			continue // the sorry server entry below replaces it
		}
		dests = append(dests, d)
	}
	if out.SorryActive {
		s := *p.Sorry
		if s.Weight == 0 {
			s.Weight = 1
		}
		dests = append(dests, s)
	}
	slices.SortFunc(dests, func(a, b director.Destination) int {
		return cmp.Or(a.Key.Address.Compare(b.Key.Address), cmp.Compare(a.Key.Port, b.Key.Port))
	})
	out.Destinations = dests
	return out, nil
}

func nextQuorum(p Policy, prev healthcheck.State, healthy int) healthcheck.State {
	if p.Quorum == 0 {
		return healthcheck.StateUp
	}
	up := healthy >= p.Quorum+p.Hysteresis
	if prev == healthcheck.StateUp {
		up = healthy > 0 && healthy >= p.Quorum-p.Hysteresis
	}
	if up {
		return healthcheck.StateUp
	}
	return healthcheck.StateDown
}
